"""``medtune eval answers``: answer one prompt file with several models, one column per model.

Reads a CSV/JSONL/JSON of prompts (column ``prompt`` or ``prompt_column``) and writes the same
rows plus ``<name>_answer`` for each model (local, adapter, or endpoint) — the input of
``medtune eval judge`` and of human review. Each finished answer is appended at once to
``<output>.partial.jsonl``; a killed run restarted with the same command answers only
what is missing. Rows with an empty prompt are rejected (saved, counted).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from medtune.eval.backends import generate, load_backend, parse_model_arg
from medtune.eval.config import AnswersConfig
from medtune.eval.results import append_rows, elapsed, load_done
from medtune.manifest import tree_digests
from medtune.errors import DataFileError
from medtune.io import Reject, read_rows, write_rejects

console = Console(stderr=True)


def write_table(rows: list[dict], path: Path) -> None:
    """Write rows as CSV (``.csv``) or JSONL (anything else), UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _load_prompts(cfg: AnswersConfig) -> tuple[list[dict], list[Reject]]:
    rows, rejects = [], []
    for n, (loc, rec) in enumerate(read_rows(cfg.data), 1):
        if isinstance(rec, Reject):
            rejects.append(rec)
        elif not str(rec.get(cfg.prompt_column) or "").strip():
            rejects.append(Reject(str(cfg.data), loc, "missing or empty prompt", cfg.prompt_column, rec))
        else:
            rows.append({"_row": n, **rec})
    if not rows:
        raise DataFileError(f"{cfg.data}: no rows with a {cfg.prompt_column!r} column")
    return rows, rejects


def run_answers(cfg: AnswersConfig) -> dict:
    """Answer every prompt with every model; write ``cfg.output`` with one ``<name>_answer`` column each.

    Models are loaded one at a time (so two 0.5B models never sit in memory together).

    Returns:
        ``{"rows", "models", "computed", "output"}``.

    Raises:
        DataFileError: unreadable prompt file.
        EvalError: an endpoint failed for good (finished answers are kept; re-run to resume).
    """
    started = time.time()
    rows, rejects = _load_prompts(cfg)
    partial = Path(str(cfg.output) + ".partial.jsonl")
    key = json.dumps({"data": tree_digests(Path(cfg.data)), "system": cfg.system,
                      "generation": cfg.generation.model_dump(), "prompt_column": cfg.prompt_column}, sort_keys=True)
    done = {}
    for r in load_done(partial, key, overwrite=True).values():
        done[r["id"]] = r
    settings = cfg.generation.model_copy(update={"seed": cfg.seed if cfg.generation.temperature > 0 else None})
    sys_msg = [{"role": "system", "content": cfg.system}] if cfg.system else []
    computed = 0
    partial.parent.mkdir(parents=True, exist_ok=True)
    for arg in cfg.models:
        name, _ = parse_model_arg(arg)
        todo = [r for r in rows if f"{name}:{r['_row']}" not in done]
        if not todo:
            continue
        backend = load_backend(arg, cache_path=Path(str(cfg.output) + ".cache.sqlite"))
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"answers {name}", total=len(todo))
            for i in range(0, len(todo), cfg.batch_size):
                batch = todo[i:i + cfg.batch_size]
                replies = generate(backend, [sys_msg + [{"role": "user", "content": str(r[cfg.prompt_column])}] for r in batch], settings)
                new = [{"id": f"{name}:{r['_row']}", "answer": a, "run_key": key} for r, a in zip(batch, replies)]
                append_rows(partial, new)
                done.update({x["id"]: x for x in new})
                computed += len(new)
                bar.advance(task, len(new))
        del backend
    names = [parse_model_arg(a)[0] for a in cfg.models]
    table = [{**{k: v for k, v in r.items() if k != "_row"},
              **{f"{n}_answer": done[f"{n}:{r['_row']}"]["answer"] for n in names}} for r in rows]
    write_table(table, Path(cfg.output))
    if rejects:
        write_rejects(rejects, Path(str(cfg.output) + ".rejects.jsonl"))
    console.print(f"answers: {len(rows)} prompts x {len(names)} models, {computed} generated, "
                  f"{len(rejects)} rejected in {elapsed(started)} s -> {cfg.output}")
    return {"rows": len(rows), "models": names, "computed": computed, "rejected": len(rejects), "output": str(cfg.output)}
