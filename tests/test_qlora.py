"""QLoRA on the CPU: bitsandbytes >= 0.48 runs 4-bit NF4 layers without CUDA, so `method: qlora`
trains here (slowly); the adapter merges onto the unquantized base with logit parity."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from medtune.cli import app
from medtune.config import TrainConfig
from medtune.errors import TrainError
from medtune.train import harness
from medtune.train.sft import build_trainer

bnb = pytest.importorskip("bitsandbytes", reason="needs the qlora extra: pip install 'medtune[qlora]'")
NEW_ENOUGH = harness._version(bnb.__version__) >= (0, 48)


def cfg(model_dir, data, out, **kw):
    base = dict(model=str(model_dir), train_file=data, output_dir=out, max_steps=3, learning_rate=5e-3, method="qlora",
                per_device_train_batch_size=4, save_steps=100, warmup_ratio=0.0, seed=1, max_seq_length=128)
    return TrainConfig(**{**base, **kw})


@pytest.mark.skipif(not NEW_ENOUGH or torch.cuda.is_available(), reason="the CPU backend of bitsandbytes >= 0.48")
def test_qlora_on_cpu_loads_a_4bit_base_and_only_lora_weights_change(qwen_dir, sft_file, tmp_path):
    trainer, _, cb = build_trainer(cfg(qwen_dir, sft_file, tmp_path / "o"))
    base = trainer.model.get_base_model()
    q_proj = base.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.dtype == torch.uint8  # two 4-bit values per byte
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert len([h for h in cb.history if "loss" in h]) == 3


@pytest.mark.slow
@pytest.mark.skipif(not NEW_ENOUGH or torch.cuda.is_available(), reason="the CPU backend of bitsandbytes >= 0.48")
def test_qlora_cli_trains_on_cpu_and_merges_onto_the_unquantized_base(qwen_dir, sft_file, tmp_path, tokenizer):
    out = tmp_path / "adapter"
    r = CliRunner().invoke(app, ["train", "--model", str(qwen_dir), "--train-file", str(sft_file), "--output-dir", str(out),
                                 "--method", "qlora", "--max-steps", "12", "--learning-rate", "5e-3", "--warmup-ratio", "0",
                                 "--per-device-train-batch-size", "4", "--max-seq-length", "128", "--save-steps", "100"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "train_summary.json").read_text())
    losses = summary["losses"]
    assert summary["method"] == "qlora" and len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    merged = CliRunner().invoke(app, ["merge", "--adapter", str(out), "--output-dir", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    parity = json.loads((tmp_path / "merged" / "medtune_merge.json").read_text())["max_abs_logit_diff"]
    assert f"max |dlogit| = {parity:.2e}" in " ".join(merged.output.split())  # what the user reads, whatever the width
    print(f"\nQLoRA adapter (trained on a 4-bit base) merged onto the fp32 base: max |dlogit| = {parity:.2e}", file=sys.stderr)
    assert parity <= 1e-3
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())


def test_qlora_without_bitsandbytes_or_with_an_old_one_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(TrainError, match=r"pip install 'medtune\[qlora\]'"):
        harness.quantization_config(TrainConfig(method="qlora"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", type(sys)("bitsandbytes"))
    sys.modules["bitsandbytes"].__version__ = "0.45.5"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainError, match=r"bitsandbytes >= 0.48.*installed: 0.45.5"):
        harness.quantization_config(TrainConfig(method="qlora"))
    assert harness.quantization_config(TrainConfig(method="lora")) is None
