"""Base vs fine-tuned on the same prompt, through the one turn pipeline of chat, serve and web.

Each side keeps its own conversation (its own earlier answers); every turn of every side is
prepared by :func:`medtune.turn.prepare_turn` and streamed by :func:`medtune.web.reply_stream` (the
``medtune web`` path: urgent-care message first, the model's text, the disclaimer, citations from
the recipe's index), so what the page shows is what ``medtune web`` would answer. Turns can be
exported as JSONL for the team's review.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from medtune.config import GenerationSettings, WebConfig
from medtune.errors import ConfigError
from medtune.recipe import Recipe, resolve
from medtune.studio.jobs import latest_checkpoint
from medtune.turn import prepare_turn
from medtune.web import banner_html, local_backend, reply_stream, sources_html

EXPORTS = "exports"  # <workdir>/exports: conversations exported as JSONL
SIDES = ("base", "finetuned")
_LOADED: dict[tuple, Callable] = {}
_LOCK = threading.Lock()


def finetuned_model(recipe: Recipe) -> tuple[str, Path | None]:
    """``(model, adapter)`` of the recipe's fine-tuned model: the merged model when it exists, else the train
    stage's adapter (or full model), else its newest complete checkpoint (a stopped run).

    Raises:
        ConfigError: nothing trained yet.
    """
    r = resolve(recipe, create=("train",))
    merged, out = r.stage_dir("merge"), Path(r.train.output_dir)
    if (merged / "config.json").is_file():
        return str(merged), None
    if (out / "adapter_config.json").is_file():
        return r.train.model, out
    if (out / "config.json").is_file():
        return str(out), None
    ckpt = latest_checkpoint(out)
    if ckpt is not None and (ckpt / "adapter_config.json").is_file():
        return r.train.model, ckpt
    raise ConfigError(f"no fine-tuned model yet in {out} (nor {merged}): train the recipe first (Train tab)")


def chat_config(recipe: Recipe) -> WebConfig:
    """The recipe's ``web`` section resolved (safety, index, generation, system prompt), as ``medtune web`` uses it."""
    return resolve(recipe, create=("web",)).web


def backend(model: str, adapter: Path | None, cfg: WebConfig) -> Callable:
    """The local model's text stream (:func:`medtune.web.local_backend`), loaded once and kept while it is
    one of the two in use (a changed adapter file is loaded again)."""
    weights = Path(adapter) / "adapter_model.safetensors" if adapter else None
    key = (model, str(adapter), weights.stat().st_mtime if weights and weights.is_file() else None, cfg.backend)
    with _LOCK:
        if key not in _LOADED:
            if len(_LOADED) >= len(SIDES):
                _LOADED.clear()
            _LOADED[key] = local_backend(cfg.model_copy(update={"model": model, "adapter": adapter}))
        return _LOADED[key]


def conversation(history: list[dict], prompt: str, system: str) -> list[dict]:
    """The messages of one side: the system prompt (when given), its earlier turns, the new prompt."""
    earlier = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
                "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))} for m in history or []]
    return ([{"role": "system", "content": system}] if system.strip() else []) + earlier + [{"role": "user", "content": prompt}]


def answer_both(prompt: str, histories: dict[str, list[dict]], system: str, cfg: WebConfig,
                settings: GenerationSettings, backends: dict[str, Callable]) -> Iterator[tuple[dict, str, str, dict]]:
    """Answer ``prompt`` on each side in turn, streaming.

    Yields:
        ``(histories, banner_html, sources_html, record)`` after every piece; ``record`` is the turn as
        exported (prompt, each side's answer, red-flag categories, citations, settings).
    """
    histories = {side: list(h or []) for side, h in histories.items()}
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "prompt": prompt, "system": system,
              "settings": settings.model_dump(), "flags": [], "citations": None}
    banner, sources = "", ""
    for side in SIDES:
        messages = conversation(histories[side], prompt, system)
        turn = prepare_turn(messages, cfg.safety, rag=cfg.rag)
        if side == SIDES[0]:
            banner, sources = banner_html(messages, cfg.safety), sources_html(turn.citations)
            record.update(flags=turn.flags, citations=turn.citations)
        histories[side] += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        for piece in reply_stream(messages, settings, cfg.safety, backends[side], rag=cfg.rag, turn=turn):
            histories[side][-1]["content"] += piece
            yield histories, banner, sources, record
        record[side] = histories[side][-1]["content"]
    yield histories, banner, sources, record


def export_turns(turns: list[dict], workdir: Path, models: dict[str, str]) -> Path:
    """Write the conversation, one turn a line (``models`` added to each), to ``<workdir>/exports/chat-<time>.jsonl``.

    Raises:
        ConfigError: nothing to export yet.
    """
    if not turns:
        raise ConfigError("nothing to export yet: send a message first")
    path = Path(workdir) / EXPORTS / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({**t, "models": models}, ensure_ascii=False) + "\n" for t in turns)
    return path
