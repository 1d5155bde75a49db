"""Preference tuning and GRPO on tiny random models: the loss falls, only adapter weights move,
DPO widens the chosen-minus-rejected margin, GRPO's mean reward grows."""

import json

import pytest
import torch

from medtune.config import TrainConfig
from medtune.preference import read_preferences
from medtune.train.preference import build_preference_trainer, pair_margins

PROMPTS = ["I have chest pain.", "What is the dose?", "I have wheezing.", "What is hypertension?",
           "高血压患者应注意什么？", "천식은 무엇인가요?", "Take metformin with meals?", "Shortness of breath."]
CHOSEN = "Call emergency services if chest pain lasts."
REJECTED = "Metformin is a first-line medicine."


@pytest.fixture
def pair_file(tmp_path):
    rows = [{"prompt": p, "chosen": CHOSEN, "rejected": REJECTED} for p in PROMPTS]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def cfg(model_dir, data, out, **kw):
    base = dict(model=str(model_dir), train_file=data, output_dir=out, max_steps=12, learning_rate=5e-3,
                per_device_train_batch_size=4, save_steps=100, warmup_ratio=0.0, seed=1, max_seq_length=128)
    return TrainConfig(**{**base, **kw})


def train_and_check_adapter_only(trainer):
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)


def mean(xs):
    return sum(xs) / len(xs)


def test_dpo_loss_falls_margin_grows_only_adapter_changes(qwen_dir, pair_file, tmp_path, tokenizer):
    trainer, stats, cb = build_preference_trainer(cfg(qwen_dir, pair_file, tmp_path / "o", objective="dpo"))
    pairs, _ = read_preferences(pair_file)
    model = trainer.model
    start = pair_margins(model.eval(), tokenizer, pairs)
    train_and_check_adapter_only(trainer)
    end = pair_margins(model.eval(), tokenizer, pairs)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 0
    assert mean(losses[-3:]) < 0.5 * losses[0]
    assert mean(end) > mean(start) + 1.0 and all(e > s for s, e in zip(start, end))
    assert [h for h in cb.history if "rewards/margins" in h][-1]["rewards/margins"] > 0


@pytest.mark.parametrize("objective", ["kto", "orpo"])
def test_kto_and_orpo_train_and_the_loss_falls(objective, qwen_dir, pair_file, tmp_path):
    trainer, stats, cb = build_preference_trainer(cfg(qwen_dir, pair_file, tmp_path / "o", objective=objective))
    assert stats.kept == (16 if objective == "kto" else 8)  # kto unpairs each pair
    train_and_check_adapter_only(trainer)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.1
