"""SFT on tiny random models: loss falls, only LoRA weights move, adapters round-trip, resume works."""

import json

import pytest
import torch

from tests.conftest import tiny_train_cfg
from medtune.errors import ConfigError
from medtune.models import load_model
from medtune.train.sft import build_trainer, run_sft


cfg = tiny_train_cfg


def test_loss_falls_and_only_lora_params_change(tiny_model_dir, sft_file, tmp_path):
    trainer, stats, cb = build_trainer(cfg(tiny_model_dir, sft_file, tmp_path / "out"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora, "no LoRA parameters were created"
    assert all(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n or "lora_A" in n)
    frozen = [n for n in before if "lora_" not in n]
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not after[n].requires_grad for n in frozen)
    losses = [h["loss"] for h in cb.history if "loss" in h]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    # LoRA covers every linear layer of the blocks by default (all-linear).
    targets = {n.split(".lora_")[0].split(".")[-1] for n in lora}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets


@pytest.mark.slow  # quick tier: > 30 s on the shared 2-core machine
def test_adapter_round_trip_and_metadata(qwen_dir, sft_file, tmp_path, tokenizer):
    out = tmp_path / "out"
    summary = run_sft(cfg(qwen_dir, sft_file, out, max_steps=6))
    assert summary["steps"] == 6 and summary["examples"] == 20
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "medtune_base.json",
                 "train_config.json", "train_log.json", "train_summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_config.json").read_text())["lora_r"] == 8
    live = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]  # appended as it ran
    steps = [r for r in live if "loss" in r]
    assert live[0]["event"] == "begin" and [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r["max_steps"] == 6 and {"learning_rate", "tokens_per_s", "peak_mem_gib"} <= set(r) for r in steps)
    assert [r["time"] for r in live] == sorted(r["time"] for r in live)
    ids = torch.tensor([tokenizer.encode("Hypertension is")])
    reloaded = load_model(str(qwen_dir), adapter=out).eval()
    plain = load_model(str(qwen_dir)).eval()
    with torch.no_grad():
        assert not torch.allclose(reloaded(ids).logits, plain(ids).logits)  # the adapter does something
    # The same adapter loaded twice gives identical logits (deterministic save/load).
    again = load_model(str(qwen_dir), adapter=out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, again(ids).logits)


@pytest.mark.slow
def test_resume_continues_from_saved_step(qwen_dir, sft_file, tmp_path):
    out = tmp_path / "out"
    run_sft(cfg(qwen_dir, sft_file, out, max_steps=10, save_steps=5))
    assert (out / "checkpoint-10").is_dir()
    summary = run_sft(cfg(qwen_dir, sft_file, out, max_steps=14, save_steps=5, resume=True))
    log = json.loads((out / "train_log.json").read_text())["history"]
    steps = [h["step"] for h in log if "loss" in h]
    assert steps[0] == 11 and steps[-1] == 14 and summary["steps"] == 14


def test_eval_split_reports_eval_loss(qwen_dir, sft_file, tmp_path):
    summary = run_sft(cfg(qwen_dir, sft_file, tmp_path / "o", max_steps=3, validation_split_percentage=20))
    assert summary["eval_loss"] is not None and summary["examples"] == 20


def test_full_finetune_changes_base_weights(qwen_dir, sft_file, tmp_path):
    trainer, _, _ = build_trainer(cfg(qwen_dir, sft_file, tmp_path / "o", method="full", max_steps=3, learning_rate=1e-3))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert any("q_proj" in n for n in changed) and not any("lora_" in n for n in before)


def test_gbk_train_file_tokenises_like_utf8(tokenizer, tmp_path):
    """issue 11: a GBK-encoded training file used to stop with a UnicodeDecodeError traceback."""
    from medtune.chat_tokens import build_sft_examples

    rows = [{"instruction": "高血压患者应注意什么？", "output": "减少盐的摄入，规律运动，按时服药。"},
            {"instruction": "糖尿病的诊断标准是什么？", "output": "空腹血糖≥7.0 mmol/L。"}] * 3
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    (tmp_path / "gbk.jsonl").write_bytes(text.encode("gbk"))
    (tmp_path / "utf8.jsonl").write_text(text, encoding="utf-8")
    gbk, rejects, stats = build_sft_examples(tmp_path / "gbk.jsonl", tokenizer, 256)
    assert not rejects and stats.kept == 6
    assert gbk == build_sft_examples(tmp_path / "utf8.jsonl", tokenizer, 256)[0]


@pytest.mark.slow
def test_resume_skips_an_incomplete_checkpoint_and_reports_whole_run_loss(qwen_dir, sft_file, tmp_path, capsys):
    """issue 11: --resume picked a newer checkpoint without trainer_state.json; train_loss covered only resumed steps."""
    out = tmp_path / "out"
    first = run_sft(cfg(qwen_dir, sft_file, out, max_steps=10, save_steps=5, save_total_limit=None))
    broken = out / "checkpoint-15"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")  # killed while saving: no trainer_state.json
    capsys.readouterr()
    second = run_sft(cfg(qwen_dir, sft_file, out, max_steps=14, save_steps=100, resume=True, save_total_limit=None))
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-15" in err and "trainer_state.json" in err
    assert second["steps"] == 14 and len(second["losses"]) == 4
    whole = first["losses"] + second["losses"]
    assert second["train_loss"] == pytest.approx(sum(whole) / len(whole), abs=1e-3)


def test_report_to_tensorboard_writes_event_files_offline(qwen_dir, sft_file, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    run_sft(cfg(qwen_dir, sft_file, tmp_path / "o", max_steps=3, report_to="tensorboard"))
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 3


def test_report_to_without_its_package_says_what_to_install(qwen_dir, sft_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "swanlab" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install swanlab"):
        run_sft(cfg(qwen_dir, sft_file, tmp_path / "o", max_steps=1, report_to="swanlab"))
