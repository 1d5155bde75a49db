"""Parity of an exported GGUF with the transformers model it came from, as for merges.

For each prompt (rendered with the model's chat template and the safety system prompt), the
transformers model (float32) decodes ``n_tokens`` greedily; that is the reference. Each GGUF then

- decodes greedily itself from the same prompt ids: ``greedy_match`` is the number of leading
  tokens equal to the reference (f16 must match all of them, stop token included);
- is fed the reference tokens (teacher forcing, one pass): ``agreement`` is the share of positions
  where its top-1 token is the reference token, ``mean_abs_dlogprob`` the mean |log p_gguf(t) -
  log p_hf(t)| over the reference tokens t (nats);
- tokenises the rendered prompt text with its own tokenizer: ``tokenizer_match`` (a difference is
  reported, not fatal: the model itself is compared on the same ids; a deployment that tokenises
  with the GGUF would see other ids for those prompts).
"""

from __future__ import annotations

from pathlib import Path

from medtune.generation import generate_kwargs, render_prompt
from medtune.config import GenerationSettings
from medtune.llamacpp import LlamaCppModel, load_gguf


def _messages(prompt: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def hf_reference(model, tokenizer, prompts: list[str], system: str | None, n_tokens: int) -> list[dict]:
    """Greedy decode of each prompt with transformers.

    Returns:
        One ``{"prompt", "text", "prompt_ids", "tokens", "logprobs"}`` per prompt; ``tokens`` has at most
        ``n_tokens`` ids and ends early at an end-of-turn id (included).
    """
    import torch

    out = []
    # plain greedy through the one generation path: explicit settings, so the model's generation_config
    # sampling defaults (e.g. a repetition penalty) never reach the reference
    greedy = GenerationSettings(max_new_tokens=n_tokens, temperature=0.0, repetition_penalty=1.0)
    kw = generate_kwargs(model, tokenizer, greedy)
    for prompt in prompts:
        ids = render_prompt(tokenizer, _messages(prompt, system))
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), output_logits=True,
                                 return_dict_in_generate=True, **kw)
        tokens = gen.sequences[0, ids.shape[1]:].tolist()
        logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(gen.logits, tokens)]
        text = tokenizer.apply_chat_template(_messages(prompt, system), tokenize=False, add_generation_prompt=True)
        out.append({"prompt": prompt, "text": text, "prompt_ids": ids[0].tolist(), "tokens": tokens, "logprobs": logprobs})
    return out


def _log_softmax(rows):
    import numpy as np

    rows = rows.astype(np.float64)
    rows = rows - rows.max(axis=-1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))


def compare_gguf(path: Path, reference: list[dict], stops: list[int]) -> dict:
    """Compare one GGUF file with the transformers reference (see module doc).

    Args:
        path: the GGUF file.
        reference: :func:`hf_reference` output.
        stops: the transformers model's end-of-turn ids; llama.cpp must treat each as end-of-generation.

    Returns:
        ``{"exact", "greedy_match", "tokens", "agreement", "mean_abs_dlogprob", "max_abs_dlogprob",
        "tokenizer_match", "stops_are_eog"}``; ``greedy_match`` and ``tokens`` are per prompt.
    """
    import numpy as np

    longest = max(len(r["prompt_ids"]) + len(r["tokens"]) for r in reference)
    llm = load_gguf(path, n_ctx=longest + 16, logits_all=True)
    model = LlamaCppModel(llm, path)
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=max(len(r["tokens"]) for r in reference))
    matches, dlp, agree, tok_ok = [], [], [], []
    for r in reference:
        p, t = r["prompt_ids"], r["tokens"]
        tok_ok.append(llm.tokenize(r["text"].encode("utf-8"), add_bos=False, special=True) == p)
        llm.reset()
        llm.eval(p + t)
        lp = _log_softmax(np.array(llm.scores[len(p) - 1: len(p) - 1 + len(t)]))
        agree += [int(lp[i].argmax() == tok) for i, tok in enumerate(t)]
        dlp += [abs(float(lp[i, tok]) - r["logprobs"][i]) for i, tok in enumerate(t)]
        # no reset: llama-cpp-python's prefix match reuses the prompt's KV cache from the pass above
        own = list(model.stream_tokens(p, greedy.model_copy(update={"max_new_tokens": len(t)})))
        matches.append(next((i for i, (a, b) in enumerate(zip(own, t)) if a != b), min(len(own), len(t))))
    tokens = [len(r["tokens"]) for r in reference]
    return {"exact": matches == tokens, "greedy_match": matches, "tokens": tokens,
            "agreement": round(sum(agree) / max(len(agree), 1), 4),
            "mean_abs_dlogprob": round(float(np.mean(dlp)) if dlp else 0.0, 5),
            "max_abs_dlogprob": round(float(np.max(dlp)) if dlp else 0.0, 5), "tokenizer_match": all(tok_ok),
            "stops_are_eog": set(stops) <= set(model.stop_ids)}
