"""Continued pre-training (objective pt): passage-bounded chunks, every token labelled, loss falls, only LoRA moves."""

import pytest
import json

import torch

from medtune.config import TrainConfig
from medtune.train.pt import build_pt_examples, chunk_document, split_passages
from medtune.train.sft import build_trainer

BOOK = """Hypertension is blood pressure of 140/90 mmHg or higher on repeated measurements.

Metformin is a first-line medicine for type 2 diabetes; take it with meals.

Asthma causes wheezing and shortness of breath; a salbutamol inhaler relieves symptoms.
"""


def test_documents_split_at_passage_boundaries(tokenizer, tmp_path):
    (tmp_path / "book.txt").write_text("\n".join([BOOK] * 2), encoding="utf-8")
    rows = [{"text": BOOK}, {"title": "no text here"}]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert len(split_passages(BOOK)) == 3
    passage_len = max(len(tokenizer(p + "\n\n", add_special_tokens=False)["input_ids"]) for p in split_passages(BOOK))
    examples, rejects, stats = build_pt_examples(tmp_path / "book.txt", tokenizer, max_seq_length=passage_len + 2)
    assert stats.read == 1 and stats.truncated == 0 and len(examples) == 6  # one passage per chunk
    for ex in examples:
        assert ex["labels"] == ex["input_ids"] and ex["input_ids"][-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ex["input_ids"], skip_special_tokens=True).strip()
        assert text in split_passages(BOOK)  # a chunk never starts or ends mid-passage
    assert "<|im_start|>" not in tokenizer.decode(examples[0]["input_ids"])  # no chat template
    examples, rejects, stats = build_pt_examples(tmp_path / "corpus.jsonl", tokenizer, max_seq_length=512)
    assert len(examples) == 1 and stats.read == 2
    assert rejects[0].where == "line 2" and rejects[0].field == "text"


def test_overlong_passage_is_cut_into_windows():
    chunks = list(chunk_document([[1] * 3, [2] * 10, [3] * 2, [4] * 2], budget=4))
    assert chunks == [([1] * 3, False), ([2] * 4, True), ([2] * 4, True), ([2] * 2, True), ([3] * 2 + [4] * 2, False)]


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_pt_loss_falls_and_only_lora_changes(qwen_dir, tmp_path):
    (tmp_path / "book.txt").write_text("\n".join([BOOK] * 4), encoding="utf-8")
    cfg = TrainConfig(objective="pt", model=str(qwen_dir), train_file=tmp_path / "book.txt", output_dir=tmp_path / "out",
                      max_steps=15, learning_rate=5e-3, per_device_train_batch_size=2, warmup_ratio=0.0,
                      max_seq_length=64, save_steps=100, seed=1)
    trainer, stats, cb = build_trainer(cfg)
    assert stats.label_tokens == stats.tokens > 0
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
