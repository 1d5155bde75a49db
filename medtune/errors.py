"""User-facing errors: every error medtune raises on purpose, in one place.

Each class is a :class:`MedtuneError`; the CLI prints its message (which names the file, record
and field, and what to do) and exits with code 2 instead of showing a traceback (a preempted
training run: :data:`EXIT_PREEMPTED`). Library users can catch :class:`MedtuneError` to handle all of them.
"""

from __future__ import annotations


class MedtuneError(Exception):
    """Base of every user-facing medtune error; ``str(e)`` is the whole message."""


class ConfigError(MedtuneError, ValueError):
    """A recipe, override or option that cannot be used; the message names the file and key."""


class SpeedError(ConfigError):
    """A training speed setting that was asked for explicitly but cannot run here; the message says why."""


class DataFileError(MedtuneError, ValueError):
    """A data or source file that cannot be read at all (missing, empty, binary, undecodable, wrong layout)."""


class ModelError(MedtuneError, RuntimeError):
    """A model, pack or adapter that cannot be resolved or loaded; the message says what to do."""


class TrainError(MedtuneError, RuntimeError):
    """A training setup that cannot run here (e.g. QLoRA without CUDA); the message says why."""


class MergeError(MedtuneError, RuntimeError):
    """A merge that must not be done (4-bit base) or that failed the parity check."""


class EvalError(MedtuneError, RuntimeError):
    """An evaluation that cannot run as asked; the message says which input and what to do."""


class LLMError(MedtuneError, RuntimeError):
    """An LLM call that failed for good (retries exhausted or a non-retryable error); names the model and cause."""


class SensitiveDataError(LLMError):
    """A ``sensitive`` source would be sent to a non-local endpoint without an explicit override."""


class ExportError(MedtuneError, RuntimeError):
    """An export that cannot run (missing llama.cpp converter, unknown tokenizer) or failed its parity check."""


class DocumentError(DataFileError):
    """A document (Word, HWP/HWPX, HTML, PDF, text) that yields no text: unsupported type, too large, a zip
    bomb, encrypted, no text layer, or damaged. ``reason`` is the short cause a rejects file records."""

    def __init__(self, path, reason: str, hint: str = ""):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}" + (f"; {hint}" if hint else ""))


EXIT_PREEMPTED = 75
"""Exit status of a run stopped by SIGTERM/SIGINT after saving a checkpoint: ``EX_TEMPFAIL`` of
sysexits.h ("try again later"), so a scheduler or script can tell it from success (0), a bad
config (2) and a crash (1). Resume with ``--resume``."""


class TrainingPreempted(MedtuneError):
    """Training stopped on SIGTERM/SIGINT after its checkpoint was written; the CLI exits with :data:`EXIT_PREEMPTED`.

    Attributes:
        checkpoint: the complete checkpoint directory to resume from (None: stopped before the first
            step, nothing saved).
        step: the optimizer step it holds.
        resume_command: the command that resumes (set by the CLI, which knows how the run was started).
    """

    exit_code = EXIT_PREEMPTED

    def __init__(self, checkpoint, step: int, signal_name: str = "SIGTERM"):
        self.checkpoint, self.step, self.signal_name, self.resume_command = checkpoint, step, signal_name, None
        super().__init__()

    def __str__(self) -> str:
        if self.checkpoint is None:
            again = self.resume_command or "the same command"
            return (f"training stopped by {self.signal_name} before its first step: nothing to save; "
                    f"start it again with: {again}")
        how = f"resume with: {self.resume_command}" if self.resume_command else "resume with --resume (train.resume=true)"
        return (f"training stopped by {self.signal_name} after step {self.step}; complete checkpoint saved in "
                f"{self.checkpoint}; {how}")


class AccessError(MedtuneError, PermissionError):
    """A ``medtune studio`` request refused for safety: a non-local host without ``--auth``, a path outside
    the work dir, an upload over the size limit; the message says what was refused and what to do."""
