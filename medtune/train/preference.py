"""Preference tuning: DPO, KTO and ORPO with trl's own trainers and a peft adapter.

- ``dpo`` -- Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290): raise the
  policy's log-probability of the chosen answer over the rejected one *relative to a frozen
  reference* (the base with the adapter switched off), ``-log σ(β[(log π/π_ref)(y_w) - (log π/π_ref)(y_l)])``.
  trl ``DPOTrainer`` / ``DPOConfig`` (``trl.trainer.dpo_trainer``).
- ``kto`` -- Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306): needs only
  single completions labelled desirable / undesirable, no pairs. trl ``KTOTrainer`` (``trl.trainer.kto_trainer``);
  it needs ``per_device_train_batch_size`` >= 2 (its KL estimate pairs each prompt with another
  example's completion in the batch).
- ``orpo`` -- Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691): SFT loss on
  the chosen answer plus ``β`` times a log-odds-ratio penalty on the rejected one; no reference
  model, so one forward per answer. In the installed trl (1.16) it lives in
  ``trl.experimental.orpo`` (``ORPOTrainer``, ``ORPOConfig``), not in ``trl`` itself.

The data is read by :mod:`medtune.preference_data` into trl's conversational form and handed to the
trainers as it is, so trl applies the tokenizer's chat template (the one chat and serving use)
and masks the prompt; nothing here changes trl's maths, which keeps a step as fast as plain trl
(``bench/dpo_step.py``). Every other field (adapter method, optimiser, schedule, logging,
checkpoints, summary files, speed settings, preemption) is the shared harness's
(:mod:`medtune.train.harness`); this module only reads the data and picks trl's trainer and config.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medtune.chat_tokens import DataStats
from medtune.config import TrainConfig
from medtune.errors import TrainError
from medtune.io import held_out_split, write_rejects
from medtune.preference_data import read_preferences
from medtune.train import harness
from medtune.train.harness import console, is_main


def load_preference_data(cfg: TrainConfig, tokenizer, output_dir: Path):
    """Read ``cfg.train_file`` (and validation) as pairs (dpo, orpo) or labelled completions (kto).

    trl tokenizes these rows itself (``tokenizer`` is unused here).

    Returns:
        ``(train, eval_or_None, stats)``: HF Datasets in trl's conversational form and :class:`DataStats`.

    Raises:
        DataFileError: unreadable file or no usable record.
    """
    from datasets import Dataset

    kind = "kto" if cfg.objective == "kto" else "pair"
    files = cfg.train_file if isinstance(cfg.train_file, list) else [cfg.train_file]
    rows, rejects = [], []
    for f in files:
        got, rej = read_preferences(f, kind, cfg.max_examples)
        rows, rejects = rows + got, rejects + rej
    evals = None
    if cfg.validation_file:
        evals, rej = read_preferences(cfg.validation_file, kind)
        rejects += rej
    elif cfg.validation_split_percentage > 0:
        keep, held = held_out_split(len(rows), cfg.validation_split_percentage, cfg.seed)
        rows, evals = [rows[i] for i in keep], [rows[i] for i in held]
    if rejects:
        write_rejects(rejects, output_dir / "rejects.jsonl")
    stats = DataStats(read=len(rows) + len(rejects), kept=len(rows), rejected=Counter(r.reason for r in rejects))
    if is_main():
        console.print(f"[bold]data[/] {stats.read} read, {stats.kept} {cfg.objective} records kept, "
                      f"{sum(stats.rejected.values())} rejected {dict(stats.rejected) or ''}")
    return Dataset.from_list(rows), (Dataset.from_list(evals) if evals else None), stats


def method_config(cfg: TrainConfig, has_eval: bool):
    """trl's config for ``cfg.objective``: the shared training arguments plus the method's own
    (``beta``, ``loss_type``, ``desirable_weight`` ..., named as in trl; ``rpo_alpha`` > 0 adds trl's
    ``"sft"`` loss on the chosen answer with that weight)."""
    common = harness.common_args(cfg, has_eval)
    beta = {} if cfg.beta is None else {"beta": cfg.beta}
    if cfg.objective == "dpo":
        from trl import DPOConfig

        losses = {"loss_type": [cfg.dpo_loss_type]}
        if cfg.rpo_alpha > 0:
            losses = {"loss_type": [cfg.dpo_loss_type, "sft"], "loss_weights": [1.0, cfg.rpo_alpha]}
        return DPOConfig(**common, **beta, max_length=cfg.max_seq_length, **losses)
    if cfg.objective == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, **beta, max_length=cfg.max_seq_length,
                         desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(**common, **beta, max_length=cfg.max_seq_length, max_completion_length=cfg.max_completion_length)


def trainer_for(objective: str) -> type:
    """trl's trainer class for ``dpo``, ``kto`` or ``orpo``."""
    if objective == "dpo":
        from trl import DPOTrainer

        return DPOTrainer
    if objective == "kto":
        from trl import KTOTrainer

        return KTOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer


def build_preference_trainer(cfg: TrainConfig):
    """Preference data and trl's DPO/KTO/ORPO trainer through the shared harness, not yet trained.

    Args:
        cfg: resolved train config with ``objective`` in dpo, kto, orpo.

    Returns:
        ``(trainer, stats, callback)`` as :func:`medtune.train.harness.build_trainer`.

    Raises:
        TrainError: no model/output dir, KTO with a batch of 1, QLoRA without bitsandbytes.
        ModelError, DataFileError: unusable model or data.
    """
    if cfg.objective == "kto" and cfg.per_device_train_batch_size < 2:
        raise TrainError("objective=kto needs train.per_device_train_batch_size >= 2 (its KL term pairs completions "
                         "within a batch); set it to 2 or more")
    return harness.build_trainer(cfg, load_preference_data, trainer_for(cfg.objective), method_config)


def pair_margins(model, tokenizer, pairs: list[dict]) -> list[float]:
    """Chosen-minus-rejected log-probability of each pair under ``model`` (nats, summed over the answer's tokens).

    The answer is scored after the prompt rendered with the chat template and generation prompt,
    as DPO scores it. Used by tests and reports to check that preference tuning moved the model
    towards the chosen answers.

    Args:
        model: a causal LM (adapter applied or not).
        tokenizer: its tokenizer with a chat template.
        pairs: ``{"prompt", "chosen", "rejected"}`` records (:func:`medtune.preference_data.record_to_pair`).

    Returns:
        One margin per pair.
    """
    import torch

    def logprob(prompt, answer):
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        n = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]], device=model.device)
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        return logps[n - 1:].gather(1, ids[0, n:, None]).sum().item()

    with torch.no_grad():
        return [logprob(p["prompt"], p["chosen"]) - logprob(p["prompt"], p["rejected"]) for p in pairs]
