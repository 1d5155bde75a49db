"""Held-out answer log-likelihood: how well a model predicts reference answers it never trained on.

Uses the train stage's own held-out examples (``validation_file``, or the same seeded
``validation_split_percentage`` split, :func:`medtune.io.held_out_split`), tokenised
exactly as in training (:func:`medtune.chat_tokens.build_sft_examples`), and reports the mean
negative log-likelihood per answer token (nats) and its perplexity. No generation: one
forward pass per example.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from medtune.config import TrainConfig
from medtune.eval.backends import Backend
from medtune.eval.results import finish
from medtune.manifest import tree_digests
from medtune.chat_tokens import IGNORE_INDEX, build_sft_examples
from medtune.io import held_out_split


def heldout_examples(cfg: TrainConfig, tokenizer, seed: int) -> tuple[list[dict], list[Path]] | None:
    """The examples the train stage held out and their source files, or None when it held none out."""
    if cfg.validation_file:
        return build_sft_examples(cfg.validation_file, tokenizer, cfg.max_seq_length, cfg.overlong)[0], [cfg.validation_file]
    if cfg.validation_split_percentage <= 0:
        return None
    files = cfg.train_file if isinstance(cfg.train_file, list) else [cfg.train_file]
    train = [ex for f in files for ex in build_sft_examples(f, tokenizer, cfg.max_seq_length, cfg.overlong, cfg.max_examples)[0]]
    _, held = held_out_split(len(train), cfg.validation_split_percentage, seed)
    return [train[i] for i in held], files


def answer_nll(backend: Backend, example: dict) -> tuple[float, int]:
    """Summed NLL (nats) of the answer tokens of one ``{"input_ids", "labels"}`` example, and their count."""
    import torch

    ids = torch.tensor([example["input_ids"]], device=backend.model.device)
    labels = torch.tensor([example["labels"]], device=backend.model.device)
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((target != IGNORE_INDEX).sum())


def perplexity_ci(rows: list[dict], seed: int, resamples: int = 1000) -> list[float]:
    """95% percentile-bootstrap interval of the token-weighted perplexity over examples (Efron 1979):
    resample the examples with replacement, ``exp(sum nll / sum tokens)`` each time."""
    rng, stats = random.Random(seed), []
    for _ in range(resamples):
        pick = [rows[rng.randrange(len(rows))] for _ in rows]
        stats.append(math.exp(sum(r["nll"] for r in pick) / max(1, sum(r["answer_tokens"] for r in pick))))
    stats.sort()
    return [round(stats[int(0.025 * resamples)], 3), round(stats[int(0.975 * resamples) - 1], 3)]


def run_heldout(backend: Backend, train_cfg: TrainConfig, seed: int, out: Path) -> dict | None:
    """Score the held-out answers with ``backend``; write ``results.json`` (task ``heldout``) to ``out``.

    Returns:
        ``{"n", "tokens", "nll_per_token", "perplexity", "perplexity_ci95", ...}``, or None when nothing was held out.
    """
    started = time.time()
    found = heldout_examples(train_cfg, backend.tokenizer, seed)
    if found is None:
        return None
    examples, sources = found
    source = ", ".join(str(p) for p in sources)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, ex in enumerate(examples):
        nll, n = answer_nll(backend, ex)
        rows.append({"id": i, "answer_tokens": n, "nll": round(nll, 4), "nll_per_token": round(nll / n, 4)})
    total, tokens = sum(r["nll"] for r in rows), sum(r["answer_tokens"] for r in rows)
    results = {"model": backend.name, "model_identity": backend.identity, "data": str(source), "n": len(rows),
               "tokens": tokens, "nll_per_token": round(total / tokens, 4), "perplexity": round(math.exp(total / tokens), 3),
               "perplexity_ci95": perplexity_ci(rows, seed),
               "seed": seed, "predictions_file": "predictions.jsonl"}
    config = {"source": str(source), "split": "validation_file" if train_cfg.validation_file else
              f"{train_cfg.validation_split_percentage}% seeded split", "max_seq_length": train_cfg.max_seq_length}
    return finish(out, "heldout", config, {"model": backend.identity, "data": {str(p): tree_digests(Path(p)) for p in sources}}, results,
                  seed, started, rows=rows)
