"""The SFT run: LoRA / QLoRA / full fine-tuning of any causal LM with trl's SFTTrainer + peft.

The same run serves continued pre-training (``objective: pt``): only the data differs (raw text
chunks with every token labelled, :mod:`medtune.train.pt`).

medtune tokenizes the data itself (see :mod:`medtune.chat_tokens`) so the loss covers
assistant tokens only, including each turn's end-of-turn token, and hands trl a dataset with
``input_ids`` and ``labels``. Packing uses trl's best-fit-decreasing packer with per-example
position ids, so packed examples do not attend to each other.

This module only reads and tokenizes the data and picks the trainer class
(:func:`medtune.train.speed.trainer_class`); model loading, quantization, LoRA, speed settings,
checkpoints, resume and the summary are the shared harness's (:mod:`medtune.train.harness`).
"""

from __future__ import annotations

from pathlib import Path

from medtune.chat_tokens import DataStats, build_sft_examples
from medtune.config import TrainConfig
from medtune.errors import TrainError  # noqa: F401  (raised by the harness; imported from here by tests)
from medtune.io import held_out_split, write_rejects
from medtune.train import harness
from medtune.train.harness import console, is_main
from medtune.train.pt import build_pt_examples
from medtune.train.speed import pad_multiple, trainer_class


def load_datasets(cfg: TrainConfig, tokenizer, output_dir: Path):
    """Tokenize train (and validation) data; save rejects; return ``(train, eval, stats)`` as HF Datasets.

    Raises:
        DataFileError: unreadable data file, or no usable record.
    """
    from datasets import Dataset

    build = build_pt_examples if cfg.objective == "pt" else build_sft_examples
    files = cfg.train_file if isinstance(cfg.train_file, list) else [cfg.train_file]
    train, rejects, stats = [], [], DataStats()
    for f in files:
        ex, rej, st = build(f, tokenizer, cfg.max_seq_length, cfg.overlong, cfg.max_examples)
        train, rejects = train + ex, rejects + rej
        for key in ("read", "kept", "truncated", "tokens", "label_tokens"):
            setattr(stats, key, getattr(stats, key) + getattr(st, key))
        stats.rejected.update(st.rejected)
    evals = None
    if cfg.validation_file:
        evals, ev_rejects, _ = build(cfg.validation_file, tokenizer, cfg.max_seq_length, cfg.overlong)
        rejects += ev_rejects
    elif cfg.validation_split_percentage > 0:
        keep, held = held_out_split(len(train), cfg.validation_split_percentage, cfg.seed)
        train, evals = [train[i] for i in keep], [train[i] for i in held]
    if rejects:
        write_rejects(rejects, output_dir / "rejects.jsonl")
    if is_main():
        console.print(f"[bold]data[/] {stats.read} read, {stats.kept} kept, {stats.truncated} truncated, "
                      f"{sum(stats.rejected.values())} rejected {dict(stats.rejected) or ''}; "
                      f"{stats.label_tokens}/{stats.tokens} tokens trained")
    return Dataset.from_list(train), (Dataset.from_list(evals) if evals else None), stats


def sft_config(cfg: TrainConfig, has_eval: bool):
    """trl ``SFTConfig``: the shared training arguments plus ``max_length``, ``packing`` and ``pad_to_multiple_of``."""
    from trl import SFTConfig

    return SFTConfig(**harness.common_args(cfg, has_eval), max_length=cfg.max_seq_length, packing=cfg.packing,
                     pad_to_multiple_of=pad_multiple(cfg))


def build_trainer(cfg: TrainConfig):
    """Set up everything for an SFT (or PT) run without training, through :func:`medtune.train.harness.build_trainer`.

    Args:
        cfg: the train stage config, resolved (``model`` and ``output_dir`` set; a recipe does
            this in :func:`medtune.recipe.resolve`).

    Returns:
        ``(trainer, stats, callback)``: the trl ``SFTTrainer`` (or :class:`~medtune.train.speed.PlainLossSFTTrainer`),
        the :class:`DataStats` of the training file, and the logging callback whose ``history`` holds per-step logs.

    Raises:
        As :func:`medtune.train.harness.build_trainer`.
    """
    return harness.build_trainer(cfg, load_datasets, trainer_class(cfg), sft_config)


def make_trainer(cfg: TrainConfig, net, tokenizer, train_ds, eval_ds=None):
    """Wrap a loaded model and tokenized data (``input_ids``, ``labels``) in medtune's SFT trainer.

    Returns:
        ``(trainer, callback)`` as :func:`medtune.train.harness.make_trainer`.
    """
    return harness.make_trainer(cfg, net, tokenizer, trainer_class(cfg), sft_config(cfg, eval_ds is not None),
                                train_ds, eval_ds)


def run_sft(cfg: TrainConfig) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.train_file`` (objective sft or pt) and save the adapter or full model.

    Returns:
        The run summary (:func:`medtune.train.harness.train_and_save`).

    Raises:
        As :func:`build_trainer`; TrainingPreempted when a signal stopped the run.
    """
    return harness.train_and_save(cfg, build_trainer)
