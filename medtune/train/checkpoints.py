"""Checkpoints that survive a kill: atomic saves, a clean stop on SIGTERM/SIGINT, and resume.

- **Atomic saves** (:func:`atomic_checkpoints`): every rank writes its part of checkpoint N
  (adapter or FSDP/DeepSpeed shards, optimizer, scheduler, RNG states, ``trainer_state.json``)
  into ``<output_dir>/.staging/checkpoint-N``; once all ranks are done, the main process renames
  it to ``<output_dir>/checkpoint-N`` (``rename(2)`` is atomic on one filesystem) and only then
  deletes checkpoints beyond ``save_total_limit``. A kill at any moment of a save leaves every
  earlier checkpoint whole and no half-written ``checkpoint-N``; the next save clears the
  leftover staging directory.
- **Preemption** (:class:`PreemptionCallback`): SLURM, Kubernetes and spot instances send
  SIGTERM some seconds before SIGKILL; Ctrl-C sends SIGINT. On either, training finishes the
  optimizer step under way, saves a checkpoint (every rank: the stop step is agreed with an
  all-reduce so no rank starts another step), and :func:`preempted` raises
  :class:`~medtune.errors.TrainingPreempted`: the CLI prints where the checkpoint is and the
  exact command that resumes, and exits with :data:`~medtune.errors.EXIT_PREEMPTED` (75,
  ``EX_TEMPFAIL``: try again later). ``train.preemption_grace_s`` bounds the wait: when the step
  and the save are not done in that many seconds the process exits at once with the same status
  (the last complete checkpoint stays as it was). A repeated signal within 2 s is taken for the
  same one (launchers forward signals to their workers); a later one exits at once.
- **Resume** (:func:`last_checkpoint`, ``--resume``): the newest ``checkpoint-N`` with a
  ``trainer_state.json``; transformers restores the model, optimizer, scheduler, RNG states and
  the position in the data, so the resumed losses are those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

from medtune.errors import EXIT_PREEMPTED, TrainingPreempted

console = Console(stderr=True)
STAGING = ".staging"
REPEAT_WINDOW_S = 2.0  # a second signal this soon after the first is the same stop request, forwarded


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def publish(staged: Path, final: Path) -> None:
    """Move the complete checkpoint ``staged`` to ``final`` by renames (an older ``final`` is replaced)."""
    if final.exists():
        old = staged.with_name(staged.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, final)


def atomic_checkpoints(trainer) -> None:
    """Make ``trainer`` write each checkpoint into ``<output_dir>/.staging/`` and rename it into place when complete.

    Wraps the trainer's own ``_save_checkpoint`` (transformers), so what a checkpoint holds is
    unchanged for every objective and every backend (DDP, FSDP, DeepSpeed).
    """
    from transformers.trainer_utils import rotate_checkpoints

    save = trainer._save_checkpoint

    def save_atomically(model, trial=None):
        real = Path(trainer.args.output_dir)
        staging, name = real / STAGING, f"checkpoint-{trainer.state.global_step}"
        if trainer.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
            staging.mkdir(parents=True)
        trainer.accelerator.wait_for_everyone()
        trainer.args.output_dir = str(staging)
        try:
            save(model, trial)
        finally:
            trainer.args.output_dir = str(real)
        trainer.accelerator.wait_for_everyone()  # every rank has written its shards
        if trainer.args.should_save:
            publish(staging / name, real / name)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(real), save_total_limit=trainer.args.save_total_limit)
        trainer.accelerator.wait_for_everyone()

    trainer._save_checkpoint = save_atomically


class PreemptionCallback(TrainerCallback):
    """On SIGTERM or SIGINT: finish the optimizer step under way, save a checkpoint, stop training.

    Args:
        grace_s: seconds allowed from the signal to the end of the save; past them the process
            exits with :data:`EXIT_PREEMPTED` without a new checkpoint. None: no limit.

    Attributes:
        signal: the first signal received (``signal.Signals``), or None.
        stopped_at: the step after which training stopped and was saved, or None.
    """

    def __init__(self, grace_s: float | None = None):
        self.grace_s, self.signal, self.stopped_at = grace_s, None, None
        self.phase, self.late_signal = "before", None  # "before" -> "training" -> "after"
        self._first_at, self._old, self._timer, self._held_by_run = 0.0, {}, None, False

    def install(self) -> None:
        """Handle SIGTERM/SIGINT from now until :meth:`uninstall` (main thread only; a no-op elsewhere).

        Called by :func:`medtune.train.harness.train_and_save` as soon as the trainer exists, so a stop
        is handled for the whole run, not only between ``on_train_begin`` and ``on_train_end``: before
        the first step it raises :class:`~medtune.errors.TrainingPreempted` with no checkpoint (nothing
        to save yet); after the last step it lets the final save finish and the run complete.
        """
        self._held_by_run = True
        self._install()

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install` (or ``on_train_begin``)."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread() and not self._old:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def on_train_begin(self, args, state, control, **kw):
        self.phase = "training"
        self._install()

    def on_train_end(self, args, state, control, **kw):
        self.phase = "after"
        if self._timer is not None:  # the checkpoint is saved: the grace deadline no longer applies
            self._timer.cancel()
        if not self._held_by_run:
            self.uninstall()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.phase == "before":
            raise TrainingPreempted(None, 0, name)
        if self.phase == "after":
            if self.late_signal is None and self.stopped_at is None and _is_main():
                console.print(f"[yellow]{name} received after the last step: finishing the final save; "
                              "the run is complete[/]")
            self.late_signal = self.late_signal or name
            return
        if self.signal is not None:
            if time.monotonic() - self._first_at > REPEAT_WINDOW_S:
                console.print(f"[red]{name} again: exiting now; the last complete checkpoint is unchanged[/]")
                os._exit(EXIT_PREEMPTED)
            return
        self.signal, self._first_at = signal.Signals(signum), time.monotonic()
        if _is_main():
            limit = f" (at most {self.grace_s:g} s)" if self.grace_s else ""
            console.print(f"[yellow]{name} received: finishing this step, then saving a checkpoint{limit}[/]")
        if self.grace_s:
            self._timer = threading.Timer(self.grace_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        console.print(f"[red]preemption grace period of {self.grace_s:g} s is over before the checkpoint was saved: "
                      "exiting; the last complete checkpoint is unchanged (resume from it with --resume)[/]")
        os._exit(EXIT_PREEMPTED)

    def on_step_end(self, args, state, control, **kw):
        if self._stop_agreed(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def _stop_agreed(self, args) -> bool:
        """Whether any rank got a signal (all-reduce MAX), so every rank stops after the same step."""
        import torch
        import torch.distributed as dist

        asked = self.signal is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([int(asked)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item())
            if asked and self.signal is None:
                self.signal = signal.SIGTERM  # another rank got it
        return asked


@contextmanager
def stop_before_training():
    """While loading the model and data: SIGTERM/SIGINT raise :class:`~medtune.errors.TrainingPreempted`
    with no checkpoint (there is nothing to save yet), so the CLI exits with
    :data:`~medtune.errors.EXIT_PREEMPTED` and a message instead of dying on the signal. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TrainingPreempted(None, 0, signal.Signals(signum).name)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def preempted(trainer) -> None:
    """Raise :class:`TrainingPreempted` when ``trainer``'s run was stopped by a signal (after its checkpoint was saved).

    The main process also writes ``<output_dir>/preempted.json`` (``checkpoint``, ``step``,
    ``signal``), which a launcher reads to tell a preemption from a crash.
    """
    stop = getattr(trainer, "medtune_preemption", None)
    if stop is None or stop.stopped_at is None:
        return
    out = Path(trainer.args.output_dir)
    ckpt = out / f"checkpoint-{stop.stopped_at}"
    if trainer.args.should_save:
        info = {"checkpoint": str(ckpt), "step": stop.stopped_at, "signal": stop.signal.name, "time": time.time()}
        (out / "preempted.json").write_text(json.dumps(info, indent=2))
    raise TrainingPreempted(ckpt, stop.stopped_at, stop.signal.name)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint (one with ``trainer_state.json``, written last when saving).

    Newer incomplete ones (left by versions that saved in place) are skipped, each with a message.
    """
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (ckpt / "trainer_state.json").is_file():
            return str(ckpt)
        if _is_main():
            console.print(f"[yellow]--resume: skipping {ckpt}: incomplete, no trainer_state.json "
                          "(the run was probably stopped while saving it)[/]")
    return None


def whole_run_loss(resume_state: dict | None, resumed_loss: float, final_step: int) -> float:
    """Mean training loss over every step of the run, the steps before the resume included.

    Args:
        resume_state: the ``trainer_state.json`` of the checkpoint resumed from (read before
            training: rotation may delete that checkpoint during the run), or None.
        resumed_loss: ``Trainer``'s mean over the resumed steps only.
        final_step: the last step of the run.

    The earlier steps' losses come from ``resume_state``'s ``log_history`` (each logged loss
    weighted by the steps it covers).
    """
    if not resume_state:
        return resumed_loss
    start = int(resume_state.get("global_step", 0))
    logs = [h for h in resume_state.get("log_history", []) if "loss" in h and h.get("step", 0) <= start]
    if not logs or final_step <= 0:
        return resumed_loss
    covered, total, prev = 0, 0.0, 0
    for h in logs:
        covered, total, prev = covered + h["step"] - prev, total + h["loss"] * (h["step"] - prev), h["step"]
    earlier = total / max(covered, 1)
    return (earlier * start + resumed_loss * (final_step - start)) / final_step
