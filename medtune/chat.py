"""Terminal chat: interactive multi-turn with streaming, or one-shot with ``--prompt``."""

from __future__ import annotations

import sys

from rich.console import Console

from medtune.config import ChatConfig
from medtune.generation import stream_chat
from medtune.models import load_chat_model
from medtune.turn import prepare_turn, stream_turn

console = Console()
HELP = "Commands: /reset clears the conversation, /exit quits."


def _start(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def format_sources(citations: list[dict]) -> list[str]:
    """``[n] doc › section › p. N (file, passage id, chars s-e, score)`` lines for the terminal ("" list when
    there are none)."""
    lines = []
    for c in citations:
        span = f", chars {c['char_span'][0]}-{c['char_span'][1]}" if c.get("char_span") else ""
        label = c.get("label") or c["source_file"]
        lines.append(f"[{c['marker']}] {label} ({c['source_file']}, {c['passage_id']}{span}, score {c['score']:.4f})")
    return (["Sources:"] + lines) if lines else []


def chat(cfg: ChatConfig, prompt: str | None = None, stdin=None, out: Console | None = None) -> list[dict]:
    """Chat with a model; one-shot when ``prompt`` is given, else an interactive loop on ``stdin``.

    Args:
        cfg: chat config (model / adapter / system prompt / generation settings / safety policy;
            answers go through the turn pipeline, :mod:`medtune.turn`; with ``rag.index`` the reply
            is grounded in the index and its sources are printed after it).
        prompt: a single user message; the reply is printed and the function returns.
        stdin: input stream for the interactive loop (default ``sys.stdin``).
        out: console to print to (default stdout).

    Returns:
        The conversation as ``messages`` (system, user and assistant turns; with retrieval each
        assistant turn also has ``citations``).
    """
    out = out or console
    model, tokenizer = load_chat_model(cfg.model, cfg.adapter, cfg.trust_remote_code, cfg.backend)
    messages = _start(cfg.system)

    def answer(text: str) -> None:
        messages.append({"role": "user", "content": text})
        turn = prepare_turn(messages, cfg.safety, rag=cfg.rag)
        citations = turn.citations
        pieces = []
        for piece in stream_turn(turn, lambda m: stream_chat(model, tokenizer, m, cfg.generation)):
            pieces.append(piece)
            out.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        out.print()
        reply = {"role": "assistant", "content": "".join(pieces)}
        if citations is not None:
            reply["citations"] = citations
            for line in format_sources(citations):
                out.print(line, markup=False, highlight=False, soft_wrap=True)
        messages.append(reply)

    if prompt is not None:
        answer(prompt)
        return messages
    stdin = stdin or sys.stdin
    out.print(f"[bold]medtune chat[/] ({cfg.adapter or cfg.model}). {HELP}")
    while True:
        out.print("[bold cyan]you>[/] ", end="")
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return messages
        text = line.strip()
        if text == "/reset":
            messages = _start(cfg.system)
            out.print("[dim](conversation cleared)[/]")
        elif text:
            out.print("[bold green]assistant>[/] ", end="")
            answer(text)
