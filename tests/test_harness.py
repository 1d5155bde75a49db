"""The shared training harness: all six objectives get the same model setup (attention kernel,
gradient checkpointing, LoRA, preemption handler, atomic checkpoints) from medtune.train.harness."""

import json
from pathlib import Path

import pytest

from medtune.config import TrainConfig
from medtune.train.checkpoints import PreemptionCallback
from medtune.train.objectives import builder

PAIRS = [{"prompt": p, "chosen": "Call emergency services now.", "rejected": "Rest at home."}
         for p in ("I have chest pain.", "What is the dose?", "I have wheezing.", "高血压患者应注意什么？")]


def data_file(objective: str, tmp_path: Path, sft_file: Path) -> Path:
    if objective == "sft":
        return sft_file
    if objective == "pt":
        path = tmp_path / "book.txt"
        path.write_text("Hypertension is blood pressure of 140/90 mmHg or higher.\n\nMetformin is taken with meals.\n" * 4,
                        encoding="utf-8")
        return path
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": r["prompt"]} for r in PAIRS] if objective == "grpo" else PAIRS
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("objective", ["sft", "pt", "dpo", "kto", "orpo", "grpo"])
def test_every_objective_honours_attention_and_gradient_checkpointing(objective, qwen_dir, sft_file, tmp_path):
    cfg = TrainConfig(model=str(qwen_dir), train_file=data_file(objective, tmp_path, sft_file), output_dir=tmp_path / "o",
                      objective=objective, max_steps=1, per_device_train_batch_size=4, max_seq_length=128, save_steps=100,
                      attn_implementation="eager", gradient_checkpointing=True, num_generations=2,
                      max_completion_length=8, reward_funcs=["format"], seed=1)
    trainer, _, cb = builder(objective)(cfg)
    base = trainer.model.get_base_model()
    assert trainer.medtune_speed["attn_implementation"] == "eager"  # the default on CPU would be sdpa
    assert trainer.medtune_speed["packing"] is (objective in ("sft", "pt"))
    assert any(isinstance(c, PreemptionCallback) for c in trainer.callback_handler.callbacks)
    assert trainer._save_checkpoint.__name__ == "save_atomically"
    trainer.train()
    assert base.config._attn_implementation == "eager"
    assert base.is_activation_checkpointing  # transformers turns it on when training starts
    assert [h["step"] for h in cb.history if "loss" in h] == [1]
    assert any("lora_" in n for n, _ in trainer.model.named_parameters())


def test_objective_modules_use_no_private_helper_of_another():
    root = Path(__file__).resolve().parents[1] / "medtune" / "train"
    for name in ("grpo.py", "preference.py", "pt.py"):
        text = (root / name).read_text(encoding="utf-8")
        assert "from medtune.train.sft import" not in text, name
    assert "load_model(" not in (root / "grpo.py").read_text() + (root / "preference.py").read_text()
