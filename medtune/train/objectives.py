"""One entry point for every training objective: ``run_training(cfg)`` picks the run by ``cfg.objective``.

=========  ============================================  =========================================
objective  trainer                                       module
=========  ============================================  =========================================
sft, pt    trl ``SFTTrainer`` (medtune's tokenisation)   :mod:`medtune.train.sft`, :mod:`medtune.train.pt`
dpo, kto   trl ``DPOTrainer``, ``KTOTrainer``            :mod:`medtune.train.preference`
orpo       ``trl.experimental.orpo.ORPOTrainer``         :mod:`medtune.train.preference`
grpo       trl ``GRPOTrainer`` + :mod:`medtune.rewards`  :mod:`medtune.train.grpo`
=========  ============================================  =========================================
"""

from __future__ import annotations

from medtune.config import TrainConfig


def run_training(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` with ``cfg.objective`` through ``cfg.method`` (lora, qlora, full) and save it.

    Returns:
        The run summary (:func:`medtune.train.sft.train_and_save`).
    """
    from medtune.train.sft import run_sft, train_and_save

    if cfg.objective in ("sft", "pt"):
        return run_sft(cfg)
    if cfg.objective in ("dpo", "kto", "orpo"):
        from medtune.train.preference import build_preference_trainer

        return train_and_save(cfg, build_preference_trainer)
    from medtune.train.grpo import build_grpo_trainer

    return train_and_save(cfg, build_grpo_trainer)
