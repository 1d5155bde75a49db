"""Preemption-safe training through the real CLI: `kill -TERM` -> complete checkpoint + exit 75 ->
the printed resume command continues on the losses of an uninterrupted run; a kill during a save
leaves the previous checkpoint whole; the grace period bounds the wait; manifests are atomic."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtune.errors import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def train_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "medtune", "train", "--model", str(model), "--train-file", str(data), "--output-dir", str(out),
            "--max-steps", "30", "--save-steps", "100", "--learning-rate", "5e-3", "--per-device-train-batch-size", "2",
            "--max-seq-length", "128", "--warmup-ratio", "0", "--seed", "3", *extra]


def logged_losses(history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def start_and_signal(cmd, after_step: int, sig=signal.SIGTERM, timeout=300):
    """Start ``cmd``, send ``sig`` once its log shows ``step {after_step}:``; return (returncode, stderr)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT)
    lines, deadline = [], time.time() + timeout
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(f"step {after_step}:"):
            proc.send_signal(sig)
            break
        assert time.time() < deadline, "".join(lines)[-3000:]
    _, rest = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + rest


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_75_and_the_printed_command_resumes_on_the_same_losses(qwen_dir, sft_file, tmp_path):
    ref = subprocess.run(train_cmd(qwen_dir, sft_file, tmp_path / "ref"), capture_output=True, text=True, env=ENV, cwd=ROOT,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = logged_losses(json.loads((tmp_path / "ref" / "train_log.json").read_text())["history"])

    out = tmp_path / "run"
    rc, err = start_and_signal(train_cmd(qwen_dir, sft_file, out), after_step=3)
    assert rc == EXIT_PREEMPTED == 75, err[-3000:]
    assert "SIGTERM received: finishing this step" in err
    ckpts = sorted(out.glob("checkpoint-*"))
    assert len(ckpts) == 1 and not (out / ".staging").exists() and not (out / "adapter_model.safetensors").exists()
    step = int(ckpts[0].name.split("-")[1])
    assert 3 <= step < 30
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (ckpts[0] / name).is_file(), name
    assert json.loads((out / "preempted.json").read_text())["step"] == step
    flat = " ".join(err.split())
    assert f"complete checkpoint saved in {ckpts[0]}" in flat
    command = flat.split("resume with: ", 1)[1].strip()
    assert command.startswith("medtune train ") and command.endswith(" --resume")

    before = logged_losses(json.loads((ckpts[0] / "trainer_state.json").read_text())["log_history"])
    resumed = subprocess.run([sys.executable, "-m", "medtune", *shlex.split(command)[1:]], capture_output=True, text=True,
                             env=ENV, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ckpts[0]}" in " ".join(resumed.stderr.split())
    after = logged_losses(json.loads((out / "train_log.json").read_text())["history"])
    assert sorted(before) == list(range(1, step + 1)) and sorted(after) == list(range(step + 1, 31))
    got = {**before, **after}
    print(f"\nstopped after step {step}; max |loss difference| vs uninterrupted over 30 steps: "
          f"{max(abs(got[s] - want[s]) for s in want):.2e}")
    assert got == pytest.approx(want, abs=1e-4)
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 30
    assert not (out / "preempted.json").exists()


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(qwen_dir, sft_file, tmp_path):
    # SIGKILL the process in the middle of writing checkpoint-4 (after the adapter, before the RNG state and
    # trainer_state.json): checkpoint-2 must stay complete and be what --resume picks up.
    out = tmp_path / "run"
    script = ("import os, signal, sys\n"
              "from transformers import Trainer\n"
              "save = Trainer._save_rng_state\n"
              "def dying(self, output_dir):\n"
              "    if self.state.global_step == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return save(self, output_dir)\n"
              "Trainer._save_rng_state = dying\n"
              "from medtune.cli import main\n"
              "sys.argv = ['medtune'] + sys.argv[1:]\n"
              "main()\n")
    cmd = train_cmd(qwen_dir, sft_file, out, "--save-steps", "2", "--save-total-limit", "1")
    killed = subprocess.run([sys.executable, "-c", script, *cmd[3:]], capture_output=True, text=True, env=ENV, cwd=ROOT,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "checkpoint-2" / "optimizer.pt").is_file()
    assert (out / ".staging" / "checkpoint-4" / "adapter_model.safetensors").is_file()  # the half-written one
    assert not (out / ".staging" / "checkpoint-4" / "trainer_state.json").exists()
    resumed = subprocess.run([*cmd, "--max-steps", "6", "--resume"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from " + str(out / "checkpoint-2") in " ".join(resumed.stderr.split())
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"] and not (out / ".staging").exists()


@pytest.mark.slow
def test_grace_period_over_exits_75_without_a_new_checkpoint(qwen_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(qwen_dir, sft_file, out, "--preemption-grace-s", "0.001", "--per-device-train-batch-size", "8")
    rc, err = start_and_signal(cmd, after_step=2)
    assert rc == EXIT_PREEMPTED, err[-3000:]
    assert "grace period of 0.001 s is over" in " ".join(err.split())
    assert not list(out.glob("checkpoint-*"))


def test_manifest_is_written_atomically(tmp_path, monkeypatch):
    from medtune import manifest

    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "out.txt").write_text("x")
    first = manifest.write_manifest(stage, "train", {"a": 1}, {}, "fp1", 0, time.time())
    assert manifest.is_up_to_date(stage, "fp1")

    def dies(*a, **k):
        raise KeyboardInterrupt  # the process is stopped after the temporary file is written, before the rename

    monkeypatch.setattr(manifest.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        manifest.write_manifest(stage, "train", {"a": 2}, {}, "fp2", 0, time.time())
    assert json.loads((stage / "manifest.json").read_text()) == json.loads(json.dumps(first, default=str))
    assert manifest.is_up_to_date(stage, "fp1")  # the leftover temporary file is not an output


@pytest.mark.slow
def test_medtune_run_stopped_by_sigterm_resumes_with_the_printed_command(qwen_dir, sft_file, tmp_path):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(qwen_dir), "output_dir": str(tmp_path / "run"), "seed": 3,
                                      "train": {"train_file": str(sft_file), "max_steps": 20, "save_steps": 100,
                                                "per_device_train_batch_size": 2, "max_seq_length": 128}}), encoding="utf-8")
    rc, err = start_and_signal([sys.executable, "-m", "medtune", "run", str(recipe)], after_step=2)
    assert rc == EXIT_PREEMPTED, err[-3000:]
    assert not (tmp_path / "run" / "adapter" / "manifest.json").exists()  # a stopped stage is not up to date
    command = " ".join(err.split()).split("resume with: ", 1)[1].strip()
    assert command == f"medtune run {recipe} --set train.resume=true"
    resumed = subprocess.run([sys.executable, "-m", "medtune", *shlex.split(command)[1:]], capture_output=True, text=True,
                             env=ENV, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())["summary"]["steps"] == 20


def _run_signalling_itself(cmd, patch: str):
    """Run ``medtune`` with ``cmd``'s arguments after ``patch`` (Python run first, in the same process)."""
    script = (f"import os, signal, sys\n{patch}\n"
              "from medtune.cli import main\nsys.argv = ['medtune'] + sys.argv[1:]\nmain()\n")
    return subprocess.run([sys.executable, "-c", script, *cmd[3:]], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=600)


@pytest.mark.slow  # a server or trainer in a child process (seconds): full tier
def test_a_stop_while_the_model_loads_exits_75_with_nothing_to_save(qwen_dir, sft_file, tmp_path):
    # the studio's Stop can come before the first step: that is a clean stop too, not death by SIGTERM (-15)
    patch = ("import medtune.train.harness as h\nload = h.load_model\n"
             "def loading(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return load(*a, **k)\n"
             "h.load_model = loading")
    out = tmp_path / "run"
    done = _run_signalling_itself(train_cmd(qwen_dir, sft_file, out), patch)
    assert done.returncode == EXIT_PREEMPTED, done.stderr[-3000:]
    flat = " ".join(done.stderr.split())
    assert "stopped by SIGTERM before its first step: nothing to save" in flat and "Traceback" not in flat
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.slow  # a server or trainer in a child process (seconds): full tier
def test_a_stop_during_the_final_save_lets_the_run_complete(qwen_dir, sft_file, tmp_path):
    patch = ("from transformers import Trainer\nsave = Trainer.save_model\n"
             "def saving(self, *a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return save(self, *a, **k)\n"
             "Trainer.save_model = saving")
    out = tmp_path / "run"
    done = _run_signalling_itself(train_cmd(qwen_dir, sft_file, out, "--max-steps", "2"), patch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SIGTERM received after the last step: finishing the final save" in " ".join(done.stderr.split())
    assert (out / "adapter_model.safetensors").is_file() and json.loads((out / "train_summary.json").read_text())["steps"] == 2
