"""One entry point for every training objective: ``run_training(cfg)`` picks the run by ``cfg.objective``.

=========  ============================================  =========================================
objective  trainer                                       module
=========  ============================================  =========================================
sft, pt    trl ``SFTTrainer`` (medtune's tokenisation)   :mod:`medtune.train.sft`, :mod:`medtune.train.pt`
dpo, kto   trl ``DPOTrainer``, ``KTOTrainer``            :mod:`medtune.train.preference`
orpo       ``trl.experimental.orpo.ORPOTrainer``         :mod:`medtune.train.preference`
grpo       trl ``GRPOTrainer`` + :mod:`medtune.rewards`  :mod:`medtune.train.grpo`
=========  ============================================  =========================================

Each objective module gives only its data reader, trl trainer class and config; every run goes
through :mod:`medtune.train.harness` (model, quantization, LoRA, speed settings, checkpoints,
preemption, resume, summary).
"""

from __future__ import annotations

from medtune.config import TrainConfig


def run_training(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` with ``cfg.objective`` through ``cfg.method`` (lora, qlora, full) and save it.

    Returns:
        The run summary (:func:`medtune.train.harness.train_and_save`).

    Raises:
        TrainingPreempted: SIGTERM/SIGINT stopped the run after its checkpoint was saved.
    """
    from medtune.train.harness import train_and_save

    return train_and_save(cfg, builder(cfg.objective))


def builder(objective: str):
    """``build(cfg) -> (trainer, stats, callback)`` for ``objective``."""
    if objective in ("sft", "pt"):
        from medtune.train.sft import build_trainer

        return build_trainer
    if objective in ("dpo", "kto", "orpo"):
        from medtune.train.preference import build_preference_trainer

        return build_preference_trainer
    from medtune.train.grpo import build_grpo_trainer

    return build_grpo_trainer
