"""GRPO: reinforcement learning from verifiable rewards with trl's ``GRPOTrainer`` and a peft adapter.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300): for each
prompt sample ``num_generations`` completions, score each with the reward functions, and push up
the log-probability of completions whose reward is above their group's mean (the advantage is the
reward standardised within the group; no value network). ``beta`` > 0 adds a KL penalty towards the
reference (the base with the adapter off). trl: ``trl.trainer.grpo_trainer.GRPOTrainer``.

Rewards come from :mod:`medtune.rewards` by name (``train.reward_funcs``) or as functions from
Python. Training rows (JSONL/JSON/CSV) read:

- ``prompt`` (text or messages) or ``question``: what the model is asked;
- MCQ rows: ``options`` (``{"A": ..., "B": ...}`` or a list, lettered A, B, ...) and ``answer``
  (letters); the options are appended to the question, one ``A. text`` line each;
- fact rows: ``expected`` (a list, or one string split on ``|``) and optional ``synonyms``.

Cost: every step generates ``per_device_train_batch_size`` completions of up to
``max_completion_length`` tokens token by token before one training forward/backward, so a GRPO
step is several times an SFT step of the same batch; keep completions short.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

from medtune.chat_tokens import DataStats
from medtune.config import TrainConfig
from medtune.errors import TrainError
from medtune.io import Reject, RecordError, read_rows, write_rejects
from medtune.rewards import REWARDS
from medtune.train import harness
from medtune.train.harness import console, is_main


def _options(value) -> dict[str, str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError("options", "must be an object {letter: text} or a list") from None
    if isinstance(value, list):
        value = {chr(ord("A") + i): v for i, v in enumerate(value)}
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) and v.strip() for v in value.values()):
        raise RecordError("options", "must be an object {letter: text} or a list of non-empty texts")
    return {str(k).strip().upper(): v.strip() for k, v in value.items()}


def record_to_task(record: dict) -> dict:
    """One GRPO row: ``{"prompt": messages, "answer", "options", "expected", "synonyms"}``; ``options``
    and ``synonyms`` are JSON text (dataset columns must have one type), the rewards read either form.

    Raises:
        RecordError: no prompt/question, malformed options, or an MCQ row without ``answer``.
    """
    prompt = record.get("prompt", record.get("question"))
    if isinstance(prompt, list) and prompt:
        messages = prompt
    elif isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt.strip()}]
    else:
        raise RecordError("prompt", "missing or empty (give prompt or question)")
    options = _options(record.get("options"))
    answer = str(record.get("answer") or "").strip().upper() or None
    if options:
        if not answer or not set(answer) <= set(options):
            raise RecordError("answer", f"an MCQ row needs answer letters among {''.join(options)} (got {record.get('answer')!r})")
        body = "\n".join(f"{k}. {v}" for k, v in options.items())
        messages = messages[:-1] + [{"role": "user", "content": f"{messages[-1]['content']}\n{body}"}]
    expected = record.get("expected")
    if isinstance(expected, str):
        expected = [e.strip() for e in expected.split("|") if e.strip()]
    return {"prompt": messages, "answer": answer if options else None, "options": json.dumps(options) if options else None,
            "expected": expected or None, "synonyms": json.dumps(record["synonyms"]) if record.get("synonyms") else None}


def load_tasks(cfg: TrainConfig, tokenizer, output_dir: Path):
    """Read ``cfg.train_file`` into a HF Dataset of GRPO rows; rejects go to ``rejects.jsonl``.

    Returns:
        ``(train, None, stats)`` (GRPO has no eval loss); trl tokenizes the prompts itself.

    Raises:
        TrainError: no usable row.
    """
    from datasets import Dataset

    rows, rejects = [], []
    for f in cfg.train_file if isinstance(cfg.train_file, list) else [cfg.train_file]:
        for where, rec in read_rows(f):
            try:
                if isinstance(rec, Reject):
                    rejects.append(rec)
                else:
                    rows.append(record_to_task(rec))
            except RecordError as e:
                rejects.append(Reject(str(f), where, e.reason, e.field, rec))
            if cfg.max_examples and len(rows) >= cfg.max_examples:
                break
    if rejects:
        write_rejects(rejects, output_dir / "rejects.jsonl")
    if not rows:
        raise TrainError(f"{cfg.train_file}: no usable GRPO rows ({len(rejects)} rejected; see {output_dir / 'rejects.jsonl'})")
    stats = DataStats(read=len(rows) + len(rejects), kept=len(rows), rejected=Counter(r.reason for r in rejects))
    if is_main():
        console.print(f"[bold]data[/] {stats.kept} grpo prompts, {sum(stats.rejected.values())} rejected")
    return Dataset.from_list(rows), None, stats


def _json_columns(fn: Callable) -> Callable:
    """Wrap a reward so ``options`` / ``synonyms`` arrive as dicts (they travel as JSON text in the dataset)."""
    def reward(prompts, completions, **kw):
        for key in ("options", "synonyms"):
            if kw.get(key) is not None:
                kw[key] = [json.loads(v) if isinstance(v, str) else v for v in kw[key]]
        return fn(prompts, completions, **kw)

    reward.__name__ = fn.__name__
    return reward


def grpo_config(cfg: TrainConfig, has_eval: bool = False):
    """trl ``GRPOConfig``: the shared training arguments plus ``num_generations``, ``max_completion_length``,
    ``temperature`` and ``beta``.

    Raises:
        TrainError: a batch (``per_device_train_batch_size * gradient_accumulation_steps``) that is not a
            multiple of ``num_generations``.
    """
    from trl import GRPOConfig

    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if batch % cfg.num_generations:
        raise TrainError(f"grpo: per_device_train_batch_size x gradient_accumulation_steps = {batch} completions per step "
                         f"must be a multiple of num_generations = {cfg.num_generations}; e.g. set "
                         f"train.per_device_train_batch_size={cfg.num_generations * max(1, batch // cfg.num_generations)}")
    beta = {} if cfg.beta is None else {"beta": cfg.beta}
    common = harness.common_args(cfg, False)
    return GRPOConfig(**common, **beta,
                      num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                      temperature=cfg.temperature)


def build_grpo_trainer(cfg: TrainConfig, reward_funcs: list[Callable] | None = None):
    """Task rows, rewards and trl's ``GRPOTrainer`` through the shared harness, not yet trained.

    Args:
        cfg: resolved train config with ``objective: grpo``.
        reward_funcs: reward functions (trl signature, see :mod:`medtune.rewards`); default: ``cfg.reward_funcs``
            looked up in :data:`medtune.rewards.REWARDS`.

    Returns:
        ``(trainer, stats, callback)``; the callback's history logs ``reward`` (mean over the step's
        completions) and ``rewards/<name>/mean`` per function.

    Raises:
        TrainError: unknown reward name, bad batch size, no usable row; ModelError as usual.
    """
    from trl import GRPOTrainer

    unknown = [n for n in cfg.reward_funcs if n not in REWARDS]
    if reward_funcs is None and unknown:
        raise TrainError(f"train.reward_funcs: unknown {unknown}; known: {', '.join(REWARDS)} (add yours to medtune.rewards.REWARDS)")
    funcs = [_json_columns(f) for f in (reward_funcs or [REWARDS[n] for n in cfg.reward_funcs])]
    grpo_config(cfg)  # a batch that is not a multiple of num_generations fails before anything loads
    if is_main():
        console.print(f"[bold]rewards[/] {', '.join(f.__name__ for f in funcs)}")
    return harness.build_trainer(cfg, load_tasks, GRPOTrainer, grpo_config, reward_funcs=funcs)
