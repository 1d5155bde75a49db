"""Two CPU processes under `medtune train --launcher accelerate`: DDP (cpu2), DeepSpeed ZeRO-2 and ZeRO-3.

For each: a real SIGTERM to `medtune train` after step 2 -> every rank saves its part -> exit 75 ->
the printed command resumes; the 6 losses (before + after the stop) equal a single-process run with
the same global batch, and the saved adapter merges to the logits of the single-process adapter.
FSDP is refused on CPU (accelerate would silently run it as DDP), see docs/training.md.
"""

import json
import shlex
import subprocess
import sys

import pytest
import torch

from medtune.config import MergeConfig
from medtune.errors import EXIT_PREEMPTED
from test_preemption import ENV, ROOT, logged_losses, start_and_signal

pytestmark = pytest.mark.slow
LOSS_TOL, LOGIT_TOL = 1e-4, 1e-4


def cmd(model, data, out, per_device: int, *extra):
    # 40 examples pack into ~20 rows of 128 tokens: 6 steps of global batch 2 stay in the first epoch (the order of
    # later epochs differs between 1 and 2 processes);
    # no LoRA dropout: its masks come from each process's own RNG stream, which differ between 1 and 2 processes.
    return [sys.executable, "-m", "medtune", "train", "--model", str(model), "--train-file", str(data), "--output-dir", str(out),
            "--max-steps", "6", "--save-steps", "100", "--learning-rate", "5e-3", "--warmup-ratio", "0", "--seed", "3",
            "--max-seq-length", "128", "--lora-dropout", "0", "--per-device-train-batch-size", str(per_device), *extra]


def merged_logits(adapter, out, tokenizer):
    from medtune.merge import merge_adapter
    from medtune.models import load_model

    parity = merge_adapter(MergeConfig(adapter=adapter, output_dir=out))["max_abs_logit_diff"]
    ids = torch.tensor([tokenizer.encode("Hypertension is blood pressure of 140/90 mmHg")])
    with torch.no_grad():
        return parity, load_model(str(out)).eval()(ids).logits


@pytest.fixture(scope="module")
def single(qwen_dir, tmp_path_factory, tokenizer):
    """One process, batch 2: the losses and merged logits the two-process runs must reproduce."""
    from conftest import SAMPLES

    tmp = tmp_path_factory.mktemp("single")
    data = tmp / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in SAMPLES * 8) + "\n", encoding="utf-8")
    r = subprocess.run(cmd(qwen_dir, data, tmp / "out", 2), capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = logged_losses(json.loads((tmp / "out" / "train_log.json").read_text())["history"])
    return data, losses, merged_logits(tmp / "out", tmp / "merged", tokenizer)[1]


@pytest.mark.parametrize("config", ["cpu2", "zero2", "zero3"])
def test_two_processes_stop_on_sigterm_resume_and_match_one_process(config, single, qwen_dir, tmp_path, tokenizer):
    if config.startswith("zero"):
        pytest.importorskip("deepspeed", reason="DeepSpeed: DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed")
    data, want, want_logits = single
    out = tmp_path / "out"
    rc, err = start_and_signal(cmd(qwen_dir, data, out, 1, "--launcher", "accelerate", "--config-file", config), after_step=2)
    assert rc == EXIT_PREEMPTED, err[-4000:]
    (ckpt,) = out.glob("checkpoint-*")
    step = int(ckpt.name.split("-")[1])
    assert 2 <= step < 6 and (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    if config.startswith("zero"):  # each rank wrote its own optimizer-state shard (and, ZeRO-3, parameter shard)
        shards = {p.name for p in (ckpt / f"global_step{step}").iterdir()}
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= shards, shards
    command = " ".join(err.split()).split("resume with: ", 1)[1].split(" --resume")[0] + " --resume"
    assert f"--launcher accelerate --config-file {config}" in command
    resumed = subprocess.run([sys.executable, "-m", "medtune", *shlex.split(command)[1:]], capture_output=True, text=True,
                             env=ENV, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    before = logged_losses(json.loads((ckpt / "trainer_state.json").read_text())["log_history"])
    got = {**before, **logged_losses(json.loads((out / "train_log.json").read_text())["history"])}
    parity, logits = merged_logits(out, tmp_path / "merged", tokenizer)
    print(f"\n{config}: stopped after step {step}; max |loss - single-process loss| over 6 steps = "
          f"{max(abs(got[s] - want[s]) for s in want):.1e}; merge parity {parity:.1e}; "
          f"max |merged logits - single-process merged logits| = {(logits - want_logits).abs().max().item():.1e}")
    assert sorted(got) == list(range(1, 7))
    assert got == pytest.approx(want, abs=LOSS_TOL)
    assert parity <= 1e-3 and torch.allclose(logits, want_logits, atol=LOGIT_TOL)


def test_fsdp_on_cpu_is_refused_before_launch(qwen_dir, sft_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    r = subprocess.run(cmd(qwen_dir, sft_file, tmp_path / "o", 1, "--launcher", "accelerate", "--config-file", "fsdp"),
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "FSDP needs GPUs" in " ".join(r.stderr.split()) and "cpu2" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
