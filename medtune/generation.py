"""One generation code path for chat, samples, serving and the web UI.

Prompts are rendered with the tokenizer's chat template (the same one used in training) and
generation stops at any of the model's end-of-turn ids (the tokenizer's EOS plus the
generation config's ``eos_token_id``), so a fine-tuned model stops where it was trained to.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from typing import Iterable, Iterator

from medtune.config import GenerationSettings


def render_prompt(tokenizer, messages: list[dict]):
    """Token ids of ``messages`` rendered with the chat template plus the assistant generation prompt.

    Returns:
        LongTensor of shape ``(1, prompt_len)``.
    """
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)


def stop_ids(model, tokenizer) -> list[int]:
    """All token ids that end a turn: tokenizer EOS plus generation-config EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    cfg_eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos] if cfg_eos is not None else [])
    return sorted(ids)


MODEL_DEFAULT_FIELDS = ("temperature", "top_p", "repetition_penalty")


def model_settings(model, settings: GenerationSettings) -> GenerationSettings:
    """``settings`` with every field of :data:`MODEL_DEFAULT_FIELDS` the user did not set taken from the
    model's own ``generation_config`` (as its authors tuned it, e.g. Qwen2.5's repetition penalty 1.1,
    temperature 0.7, top-p 0.8), where it has one; medtune's defaults otherwise. Chat, samples,
    serving and the web UI decode this way; evaluation does not (it stays greedy and reproducible)."""
    gen = getattr(model, "generation_config", None)
    given = gen.to_diff_dict() if gen is not None else {}  # only what the model's authors set
    update = {name: float(given[name]) for name in MODEL_DEFAULT_FIELDS
              if name not in settings.model_fields_set and isinstance(given.get(name), (int, float))}
    if "temperature" in update and not given.get("do_sample", False):
        update["temperature"] = 0.0
    return settings.model_copy(update=update) if update else settings


def ended_at_stop(new_ids: list[int], stops: list[int]) -> bool:
    """True when generated token ids ``new_ids`` contain an end-of-turn id, i.e. the model stopped by
    itself before ``max_new_tokens`` (in a batch, rows that stopped are padded after their stop id)."""
    stop_set = set(stops)
    return any(t in stop_set for t in new_ids)


@dataclass
class Reply:
    """One generated reply: its text, whether it ended with an end-of-turn token (None: unknown,
    e.g. an endpoint), the number of generated tokens and the decoding settings actually used."""

    text: str
    stopped: bool | None
    new_tokens: int | None = None
    settings: dict | None = None


def generate_kwargs(model, tokenizer, settings: GenerationSettings) -> dict:
    """Keyword arguments for ``model.generate``: greedy when temperature is 0."""
    kw = dict(max_new_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty,
              eos_token_id=stop_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
    if settings.temperature > 0:
        kw.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def stream_chat(model, tokenizer, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
    """Generate an assistant reply to ``messages``, yielding text pieces as they are produced.

    Args:
        model: a causal LM (plain or peft-wrapped), in eval mode.
        tokenizer: its tokenizer with a chat template.
        messages: ``[{"role", "content"}, ...]`` ending with a user turn.
        settings: decoding settings (greedy when temperature is 0).

    Yields:
        Decoded text pieces; their concatenation is the whole reply without special tokens and
        without a partial UTF-8 character (``U+FFFD``) left at the end by ``max_new_tokens``.
    """
    if getattr(model, "backend", None) == "llamacpp":
        yield from _llamacpp_pieces(model, tokenizer, messages, settings)
        return
    import torch
    from transformers import TextIteratorStreamer

    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    settings = model_settings(model, settings)
    ids = render_prompt(tokenizer, messages).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kw = generate_kwargs(model, tokenizer, settings)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kw)
        except BaseException as e:  # surfaced in the caller's thread below
            errors.append(e)
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    yield from drop_partial_tail(streamer)
    thread.join()
    if errors:
        raise errors[0]


def _llamacpp_pieces(model, tokenizer, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
    """Text pieces of a reply from a :class:`medtune.llamacpp.LlamaCppModel`: the end-of-turn token is not
    shown, and a partial UTF-8 character (``U+FFFD``) waits for its other bytes or is dropped at the end."""
    tokens, sent = [], ""
    for token in model.stream_tokens(render_prompt(tokenizer, messages)[0].tolist(), settings):
        if token in model.stop_ids:
            break
        tokens.append(token)
        stable = tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")
        if len(stable) > len(sent):
            yield stable[len(sent):]
            sent = stable


def drop_partial_tail(pieces: Iterable[str]) -> Iterator[str]:
    """Pass ``pieces`` through, holding back trailing ``U+FFFD`` (the decoded bytes of a character
    whose other bytes are not generated yet) and dropping it if nothing follows; skips empty pieces."""
    held = ""
    for piece in pieces:
        text = held + piece
        held = text[len(text.rstrip("\ufffd")):]
        if len(text) > len(held):
            yield text[: len(text) - len(held)]


def chat_once(model, tokenizer, messages: list[dict], settings: GenerationSettings) -> str:
    """The whole assistant reply to ``messages`` as one string (see :func:`stream_chat`)."""
    return "".join(stream_chat(model, tokenizer, messages, settings))


def chat_reply(model, tokenizer, messages: list[dict], settings: GenerationSettings) -> Reply:
    """The whole assistant reply to ``messages`` with whether it stopped by itself and the decoding
    settings used (the model's own defaults for fields ``settings`` leaves unset, :func:`model_settings`)."""
    import torch

    settings = model_settings(model, settings)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    ids = render_prompt(tokenizer, messages).to(model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             **generate_kwargs(model, tokenizer, settings))
    new = out[0, ids.shape[1]:].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd").strip()
    return Reply(text, ended_at_stop(new, stop_ids(model, tokenizer)), len(new), settings.model_dump())
