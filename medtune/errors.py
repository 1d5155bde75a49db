"""User-facing errors: every error medtune raises on purpose, in one place.

Each class is a :class:`MedtuneError`; the CLI prints its message (which names the file, record
and field, and what to do) and exits with code 2 instead of showing a traceback. Library users
can catch :class:`MedtuneError` to handle all of them.
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


class AccessError(MedtuneError, PermissionError):
    """A ``medtune studio`` request refused for safety: a non-local host without ``--auth``, a path outside
    the work dir, an upload over the size limit; the message says what was refused and what to do."""
