"""Retrieval speed on synthetic passages: index build rate and query latency p50/p95.

    OMP_NUM_THREADS=1 python bench/rag.py --passages 100000 --queries 200

Builds a lexical (BM25, ``ngram`` and ``words`` tokenisers) index over ``--passages`` synthetic
zh/ko/en passages (~200 characters, words drawn from the example guidelines), then times
``Index.search`` for lexical and hybrid queries. Embedding 100k passages with e5 on a 2-core CPU
takes hours, so the hybrid timing uses random unit vectors for the passages (the dense part of a
query costs the same: one real e5 query embedding plus a (n, 384) matrix-vector product); the
embedding rate itself is measured on ``--embed`` real passages. Targets (issue 14): build >= 500
passages/s lexical-only, query p50 <= 20 ms lexical, <= 60 ms hybrid.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from medtune.index.build import build_index, embed_passages
from medtune.index.config import RagConfig
from medtune.retrieval import Index, query_vector_of

SOURCES = Path(__file__).parent.parent / "examples" / "sources" / "guidelines"


def vocabulary() -> dict[str, list[str]]:
    text = {f.stem.split("_")[-1]: f.read_text(encoding="utf-8") for f in SOURCES.iterdir()}
    zh = re.findall(r"[\u4e00-\u9fff]{2,4}", text["zh"] + text["consensus"] if "consensus" in text else text["zh"])
    return {"zh": zh, "ko": re.findall(r"[\uac00-\ud7a3]+", text["ko"]), "en": re.findall(r"[A-Za-z]+", text["en"])}


def synthetic(n: int, seed: int = 0) -> list[SimpleNamespace]:
    rng, words = random.Random(seed), vocabulary()
    out = []
    for i in range(n):
        lang = ("zh", "ko", "en")[i % 3]
        sep = "" if lang == "zh" else " "
        text = sep.join(rng.choices(words[lang], k={"zh": 60, "ko": 45, "en": 40}[lang]))
        out.append(SimpleNamespace(id=f"syn{i}", kind="passage", text=text, fields={},
                                   meta={"source_file": f"syn/{i // 100}.txt", "doc_id": f"syn{i // 100}",
                                         "passage_id": f"syn{i}", "char_span": [0, len(text)], "language": lang}))
    return out


def latency(index: Index, queries: list[str], mode: str) -> dict:
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q, k=5, mode=mode)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--embed", type=int, default=64, help="real passages embedded to measure the e5 rate")
    ap.add_argument("--tokenizers", default="ngram,words", help="comma-separated; words (jieba/Kiwi) is ~15x slower to build")
    args = ap.parse_args()
    records = synthetic(args.passages)
    rng = random.Random(1)
    queries = [" ".join(r.text.split()[:6]) if r.meta["language"] != "zh" else r.text[:12]
               for r in rng.sample(records, args.queries)]
    report = {"passages": args.passages, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp:
        for tok in args.tokenizers.split(","):
            stats = build_index(records, RagConfig(index_dir=Path(tmp) / tok, tokenizer=tok, dense=False))
            report[f"build_{tok}_passages_per_s"] = stats["passages_per_s"]
        index = Index.load(Path(tmp) / "ngram")
        report["lexical_ngram"] = latency(index, queries, "lexical")
        if "words" in args.tokenizers:
            report["lexical_words"] = latency(Index.load(Path(tmp) / "words"), queries, "lexical")
        v = np.random.default_rng(0).standard_normal((args.passages, 384)).astype(np.float32)
        index.vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        for q in queries:
            query_vector_of(q)  # warm the model once; then time with the cache cleared
        query_vector_of.cache_clear()
        report["hybrid_ngram"] = latency(index, queries, "hybrid")
        passages = [{"text": r.text, "sha256": str(i)} for i, r in enumerate(records[:args.embed])]
        t = time.perf_counter()
        embed_passages(passages, {}, 32)
        report["e5_passages_per_s"] = round(args.embed / (time.perf_counter() - t), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
