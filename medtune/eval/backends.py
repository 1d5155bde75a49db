"""The models an evaluation talks to: a local model (dir, pack, base + adapter) or an endpoint.

Local models are loaded with :func:`medtune.models.load_chat_model` and prompted with
:func:`medtune.generation.render_prompt`, i.e. with the same chat template as training and
serving. Endpoints are any OpenAI-compatible server reached through the shared client
(:mod:`medtune.llm`, see :func:`endpoint_client`); anything with
``async complete(messages, **params) -> str`` works as a client.

A model is written on the command line as ``[NAME=]SPEC`` where SPEC is a pack name, a model
directory, a hub id, an adapter directory (its base is read from the adapter), or
``http(s)://host:port/v1#MODEL`` for an endpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.config import GenerationSettings
from medtune.errors import EvalError
from medtune.generation import Reply
from medtune.manifest import tree_digests
from medtune.models import model_identity as base_identity




@dataclass
class Backend:
    """A loaded local model or an endpoint client, with the identity recorded in manifests.

    Attributes:
        name: short label used in results and as the ``<name>_answer`` column.
        identity: what exactly was evaluated (pack sha256, file digests, or endpoint URL + model).
        model, tokenizer: set for local models.
        client, endpoint_model: set for endpoints.
    """

    name: str
    identity: dict
    model: Any = None
    tokenizer: Any = None
    client: Any = None
    endpoint_model: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.model is not None


def parse_model_arg(arg: str) -> tuple[str, str]:
    """Split ``"NAME=SPEC"`` into ``(name, spec)``; the name defaults to a slug of SPEC. A name may hold
    ``+`` (``base+rag=SPEC``: the report pairs ``base`` and ``base+rag`` runs as closed-book vs RAG)."""
    name, sep, spec = arg.partition("=")
    if sep and not name.startswith(("http:", "https:")) and re.fullmatch(r"[\w.+\-]+", name):
        return name, spec
    spec = arg
    tail = spec.split("#", 1)[1] if "#" in spec else Path(spec.rstrip("/")).name or spec
    return re.sub(r"[^\w.\-]+", "_", tail), spec


def model_identity(spec: str, adapter: Path | None = None) -> dict:
    """Identity of a local model for manifests: pack sha256, or file digests of dir / adapter."""
    ident = {"model": base_identity(spec)} if spec else {}
    if adapter is not None:
        ident["adapter"] = {"path": str(Path(adapter).resolve()), "files": tree_digests(Path(adapter))}
    return ident


def endpoint_client(spec: str, cache_path: Path | None = None, temperature: float = 0.0, seed: int | None = None,
                    **limits):
    """The shared client (:class:`medtune.llm.LLMClient`) for ``URL#MODEL`` or a local model spec.

    Endpoint specs go to the OpenAI-compatible server; anything else runs in process through
    the client's local backend. Either way calls get its limits, retries and SQLite cache.
    ``limits``: more :class:`medtune.llm.LLMConfig` fields (``concurrency``, ``timeout_s``).

    Raises:
        EvalError: an endpoint spec without ``#MODEL``.
    """
    from medtune.llm import LLMClient, LLMConfig

    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        if not model:
            raise EvalError(f"endpoint {spec!r}: add the served model name after '#', e.g. {url}#my-model")
        cfg = LLMConfig(base_url=url, model=model, temperature=temperature, seed=seed, **limits)
    else:
        cfg = LLMConfig(model=spec, temperature=temperature, seed=seed, **limits)
    return LLMClient(cfg, cache_path=cache_path)


def load_backend(arg: str, adapter: Path | None = None, cache_path: Path | None = None) -> Backend:
    """Load the model named by ``[NAME=]SPEC`` (see module doc).

    Args:
        arg: the model argument.
        adapter: LoRA adapter applied on a local model.
        cache_path: SQLite reply cache for endpoints (resume without paying twice).

    Raises:
        EvalError: an endpoint spec without ``#MODEL``.
        medtune.models.ModelError: the local model cannot be loaded.
    """
    name, spec = parse_model_arg(arg)
    if spec.startswith(("http://", "https://")):
        client = endpoint_client(spec, cache_path)
        return Backend(name=name, identity={"endpoint": client.cfg.base_url, "model": client.model},
                       client=client, endpoint_model=client.model)
    from medtune.models import load_chat_model
    from medtune.models import adapter_base

    path = Path(spec)
    if adapter is None and (path / "adapter_config.json").is_file():
        model, tokenizer = load_chat_model(None, path)
        return Backend(name=name, identity=model_identity(adapter_base(path), path), model=model, tokenizer=tokenizer)
    model, tokenizer = load_chat_model(spec, adapter)
    return Backend(name=name, identity=model_identity(spec, adapter), model=model, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- local batched inference


def _left_pad(rows: list[list[int]], pad_id: int):
    """Left-pad token id lists into ``(input_ids, attention_mask)``, both ``(batch, max_len)``."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def letter_token_ids(tokenizer, letters: str) -> list[int]:
    """Token id of each option letter as the first token of the assistant reply.

    Raises:
        EvalError: a letter that is not one token, or two letters sharing a token.
    """
    ids = []
    for letter in letters:
        toks = tokenizer.encode(letter, add_special_tokens=False)
        if len(toks) != 1:
            raise EvalError(f"option letter {letter!r} is {len(toks)} tokens for this tokenizer; "
                            "log-likelihood scoring needs single-token letters (use --mode generate)")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise EvalError(f"option letters {letters} do not map to distinct tokens; use --mode generate")
    return ids


def letter_logprobs(backend: Backend, prompts: list[list[dict]], letters: list[str]) -> list[dict[str, float]]:
    """Log-probability of each option letter as the next token after each rendered prompt.

    One forward pass for the whole batch: prompts are rendered with the chat template plus
    the assistant generation prompt, left-padded (with explicit position ids so padding does
    not shift positions), and the next-token log-softmax at the last position is read at the
    option letters' token ids. No per-option passes: all options share the prompt.

    Args:
        backend: a local backend.
        prompts: ``batch`` message lists.
        letters: the option letters of each prompt (e.g. ``"ABCDE"``).

    Returns:
        One ``{letter: log-probability (nats, over the full vocabulary)}`` per prompt.
    """
    import torch

    from medtune.generation import render_prompt

    rows = [render_prompt(backend.tokenizer, m)[0].tolist() for m in prompts]
    ids, mask = _left_pad(rows, _pad_id(backend.tokenizer))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    device = backend.model.device
    with torch.no_grad():
        logits = backend.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=position_ids.to(device), logits_to_keep=1).logits[:, -1, :]
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    out = []
    for row, opts in zip(logp, letters):
        tok = letter_token_ids(backend.tokenizer, opts)
        out.append({letter: round(float(row[t]), 6) for letter, t in zip(opts, tok)})
    return out


def generate_local(backend: Backend, prompts: list[list[dict]], settings: GenerationSettings) -> list[Reply]:
    """Batched generation with the shared decoding settings (:func:`medtune.generation.generate_kwargs`),
    exactly as given: evaluation does not take the model's sampling defaults, so greedy stays greedy.

    Returns:
        One :class:`medtune.generation.Reply` per prompt (special tokens removed; ``stopped`` True
        when the reply ended with an end-of-turn token before ``max_new_tokens``).
    """
    import torch

    from medtune.generation import ended_at_stop, generate_kwargs, render_prompt, stop_ids

    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    rows = [render_prompt(backend.tokenizer, m)[0].tolist() for m in prompts]
    ids, mask = _left_pad(rows, _pad_id(backend.tokenizer))
    kw = generate_kwargs(backend.model, backend.tokenizer, settings)
    kw["pad_token_id"] = _pad_id(backend.tokenizer)
    device = backend.model.device
    with torch.no_grad():
        out = backend.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
    stops, used = stop_ids(backend.model, backend.tokenizer), settings.model_dump()
    replies = []
    for o in out:
        new = o[ids.shape[1]:].tolist()
        stopped = ended_at_stop(new, stops)
        n = next((i + 1 for i, t in enumerate(new) if t in stops), len(new)) if stopped else len(new)
        replies.append(Reply(backend.tokenizer.decode(new, skip_special_tokens=True).strip(), stopped, n, used))
    return replies


def generate_endpoint(backend: Backend, prompts: list[list[dict]], settings: GenerationSettings,
                      ids: list[str] | None = None) -> list[str | None]:
    """Concurrent endpoint calls through the shared client (cached, rate-limited, retried).

    Returns:
        One reply per prompt; None where the call failed for good (the caller counts or raises).
    """
    params = dict(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_new_tokens,
                  seed=settings.seed)
    replies = backend.client.complete_many(prompts, **params)
    out = []
    for i, r in enumerate(replies):
        if isinstance(r, Exception):
            backend.extra.setdefault("errors", []).append(f"{ids[i] if ids else i}: {r}")
            out.append(None)
        else:
            out.append(r.text.strip())
    return out


def generate_replies(backend: Backend, prompts: list[list[dict]], settings: GenerationSettings) -> list[Reply]:
    """Replies to a batch of prompts from a local model (batched) or an endpoint (concurrent), with
    whether each stopped by itself (None for endpoints: the shared client does not report it).

    Raises:
        EvalError: an endpoint call failed for good (finished items are kept; re-run to resume).
    """
    if backend.is_local:
        return generate_local(backend, prompts, settings)
    replies = generate_endpoint(backend, prompts, settings)
    if any(r is None for r in replies):
        raise EvalError(f"{backend.name}: endpoint failed: {backend.extra['errors'][-1]}; "
                        "finished items are saved, re-run the same command to resume")
    return [Reply(r, None, None, settings.model_dump()) for r in replies]


def generate(backend: Backend, prompts: list[list[dict]], settings: GenerationSettings) -> list[str]:
    """Reply texts to a batch of prompts (see :func:`generate_replies`)."""
    return [r.text for r in generate_replies(backend, prompts, settings)]
