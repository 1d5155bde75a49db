"""bench/gpu_proof.sh --cpu: the GPU proof's plan runs end to end on tiny shapes and writes its JSON and table."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_proof_dry_run_on_cpu(tmp_path):
    out, table = tmp_path / "proof.json", tmp_path / "proof.md"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", __import__("sys").executable)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_proof.sh"), "--cpu", "--json", str(out), "--table", str(table)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    arms = {(a["method"], a["arm"]): a for a in result["arms"]}
    assert {("lora", "default"), ("lora", "packing=off"), ("lora", "fused_loss=off")} <= set(arms)
    assert arms["lora", "default"]["settings"]["packing"] and not arms["lora", "packing=off"]["settings"]["packing"]
    assert arms["lora", "fused_loss=off"]["settings"]["fused_loss"] is False
    for a in arms.values():
        assert a["tokens_per_s"] > 0 and 0 < a["mfu"] < 1 and a["timed_steps"] == 2 and a["first_loss"] > 0
    import importlib.util
    if importlib.util.find_spec("bitsandbytes"):
        assert ("qlora", "default") in arms  # bitsandbytes' CPU backend
    phases = {p["phase"]: p for p in result["phases"]}
    assert phases["dpo"]["steps"] == 2 and phases["grpo"]["steps"] == 2 and len(phases["grpo"]["reward"]) == 2
    assert phases["merge"]["max_abs_logit_diff"] <= 1e-3
    assert {s["what"] for s in result["skipped"]} == {"lora liger=off", "lora attn=sdpa"}  # CUDA-only switches
    text = table.read_text()
    assert "| lora | default |" in text and "bash bench/gpu_proof.sh --cpu" in text and "- merge:" in text
