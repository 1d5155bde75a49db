"""``medtune eval rag``: does the index find the passage a question came from, and do the answers cite it right?

Questions that know their source passage come from a data build (``guideline-qa`` records carry
``meta.passage_id``; ``kb-template`` records ``meta.doc_id``) or from a JSONL of
``{question, passage_id | doc_id}``. For each ranker (lexical BM25, dense e5, hybrid RRF):

- **recall@k**: share of questions whose source is among the top k (Wilson 95% CI);
- **MRR**: mean reciprocal rank of the source (0 when not in the top ``max(k)``; Voorhees, 1999,
  TREC-8 QA track);
- **calibration** of ``min_score``: the best-hit relevance (e5 cosine) of the answerable questions
  against that of off-topic ones (a shipped zh/ko/en set); the suggested threshold is the highest
  that keeps ``target_coverage`` of the answerable questions covered, reported with the share of
  off-topic questions it lets through;
- with ``answers`` (RAG answers with the passages they were shown) and ``judge``: **citation
  precision**, answers with a citation, sentences without one (:mod:`medtune.eval.citations`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from medtune.errors import ConfigError, DataFileError
from medtune.eval.citations import citation_precision
from medtune.eval.config import RagEvalConfig
from medtune.eval.results import elapsed, finish
from medtune.eval.stats import proportion
from medtune.io import Reject, read_rows
from medtune.manifest import tree_digests
from medtune.retrieval import Index

console = Console(stderr=True)
OFF_TOPIC = Path(__file__).parent / "rag_off_topic.txt"


def load_pairs(path: Path) -> tuple[list[dict], list[Reject]]:
    """``[{id, question, gold, language}]`` from a data build's JSONL or ``{question, passage_id|doc_id}`` rows.

    Reads ``messages`` (first user turn) or ``question``; ``meta.passage_id`` / ``passage_id``,
    else ``meta.doc_id`` / ``doc_id``. Rows with neither are rejected (reason named).
    """
    pairs, rejects = [], []
    for where, row in read_rows(path):
        if isinstance(row, Reject):
            rejects.append(row)
            continue
        meta = row.get("meta") or {}
        msgs = row.get("messages") or []
        question = row.get("question") or next((m.get("content") for m in msgs if m.get("role") == "user"), None)
        gold = meta.get("passage_id") or row.get("passage_id") or meta.get("doc_id") or row.get("doc_id")
        if not question or not gold:
            rejects.append(Reject(str(path), where, "no question or no passage_id/doc_id", record=str(row)[:200], step="eval:rag"))
            continue
        pairs.append({"id": str(row.get("id") or where), "question": question, "gold": gold,
                      "language": meta.get("language") or row.get("language")})
    if not pairs:
        raise DataFileError(f"{path}: no question with a source passage (need messages/question and meta.passage_id or meta.doc_id)")
    return pairs, rejects


def rank_of(hits: list, gold: str) -> int | None:
    """1-based rank of the first hit whose passage id or document id is ``gold``."""
    return next((i for i, h in enumerate(hits, start=1) if gold in (h.passage["passage_id"], h.passage["doc_id"])), None)


def _off_topic(path: Path | None) -> list[str]:
    text = (path or OFF_TOPIC).read_text(encoding="utf-8")
    return [json.loads(line)["question"] if line.startswith("{") else line.strip() for line in text.splitlines() if line.strip()]


def calibrate(index: Index, pairs: list[dict], off_topic: list[str], target: float) -> dict:
    """Best-hit e5 cosine of answerable vs off-topic questions and the suggested ``min_score``."""
    best = lambda q: max((h.dense for h in index.search(q, k=1, mode="dense")), default=0.0)
    pos = sorted(best(p["question"]) for p in pairs)
    neg = sorted(best(q) for q in off_topic)
    threshold = pos[int((1 - target) * len(pos))] if pos else 0.0
    return {"suggested_min_score": round(threshold, 4), "answerable_covered": proportion(sum(s >= threshold for s in pos), len(pos)),
            "off_topic_let_through": proportion(sum(s >= threshold for s in neg), len(neg)),
            "answerable_cosine_median": round(pos[len(pos) // 2], 4) if pos else None,
            "off_topic_cosine_median": round(neg[len(neg) // 2], 4) if neg else None,
            "index_min_score": index.settings.get("min_score")}


def run_rag_eval(cfg: RagEvalConfig, judge=None) -> dict:
    """Score retrieval of every question's source passage and/or the citations of RAG answers.

    Writes ``results.json``, ``predictions.jsonl`` (per question and ranker: the source's rank),
    ``citations.jsonl`` (per answer: sentences, markers, the judge's verdict and reason) and the manifest.

    Args:
        cfg: the config; ``data`` + ``index`` for retrieval, ``answers`` + ``judge`` for citations.
        judge: a ready judge client (tests); built from ``cfg.judge`` when None.

    Returns:
        ``{"modes": {mode: {"recall@k": {"n", "k", "rate", "ci95"}, "mrr", "by_language"}}, "calibration", ...}``
        with data, and ``{"citations": {"citation_precision", "answers_with_citation",
        "sentences_without_citation", ...}}`` with answers (:func:`medtune.eval.citations.summarize`).

    Raises:
        ConfigError: neither data nor answers; data without index; answers without judge; not an index.
        DataFileError: no usable question in ``cfg.data`` or answer in ``cfg.answers``.
    """
    if cfg.data is None and cfg.answers is None:
        raise ConfigError("eval rag: give questions (DATA --index DIR) for recall@k, or --answers FILE --judge SPEC for citation precision")
    if cfg.data is not None and cfg.index is None:
        raise ConfigError(f"eval rag {cfg.data}: --index DIR is needed to score retrieval")
    if cfg.answers is not None and not (cfg.judge or judge):
        raise ConfigError(f"eval rag --answers {cfg.answers}: --judge URL#MODEL (or a local model spec) is needed for citation precision")
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, inputs, rows, rejects = {}, {}, None, []
    if cfg.data is not None:
        results, rows, rejects = _retrieval(cfg)
        inputs = {"data": tree_digests(Path(cfg.data)), "index": tree_digests(Path(cfg.index) / "passages.jsonl")}
    if cfg.answers is not None:
        settings = {"max_retries": cfg.judge_max_retries, "max_tokens": cfg.judge_max_tokens, "seed": cfg.seed,
                    "prompts_dir": cfg.prompts_dir, "max_items": cfg.max_items}
        summary, judged, more = citation_precision(cfg.answers, cfg.judge or "", out, settings, judge)
        results["citations"], rejects = summary, rejects + more
        inputs.update(answers=tree_digests(Path(cfg.answers)), judge=summary["judge"])
        (out / "citations.jsonl").write_text("".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged), encoding="utf-8")
    config = cfg.model_dump(mode="json", exclude={"output_dir"})
    return finish(out, "rag", config, inputs, results, cfg.seed, started, rejects, rows,
                  {"questions": results.get("n", 0), "answers": results.get("citations", {}).get("answers", 0), "wall_s": elapsed(started)})


def _retrieval(cfg: RagEvalConfig) -> tuple[dict, list[dict], list[Reject]]:
    """Recall@k, MRR and calibration of every ranker on ``cfg.data`` over ``cfg.index``: (results, rows, rejects)."""
    index = Index.load(cfg.index)
    pairs, rejects = load_pairs(cfg.data)
    pairs = pairs[:cfg.max_items] if cfg.max_items else pairs
    depth, rows, modes = max(cfg.k), [], {}
    dense_ok = index.vectors is not None
    for mode in [m for m in cfg.modes if dense_ok or m == "lexical"]:
        ranks = [rank_of(index.search(p["question"], k=depth, mode=mode), p["gold"]) for p in pairs]
        rows += [{"id": p["id"], "mode": mode, "question": p["question"], "gold": p["gold"], "rank": r} for p, r in zip(pairs, ranks)]
        modes[mode] = _scores(ranks, cfg.k, [p["language"] for p in pairs])
        recalls = ", ".join(f"R@{k} {modes[mode][f'recall@{k}']['rate']:.3f}" for k in cfg.k)
        console.print(f"eval rag {mode}: {recalls}, MRR {modes[mode]['mrr']:.3f} (n={len(pairs)})", markup=False)
    results = {"index": str(cfg.index), "data": str(cfg.data), "n": len(pairs), "tokenizer": index.settings.get("tokenizer"),
               "passages": len(index.passages), "modes": modes,
               "calibration": calibrate(index, pairs, _off_topic(cfg.off_topic), cfg.target_coverage) if dense_ok else None}
    return results, rows, rejects


def _scores(ranks: list[int | None], ks: list[int], languages: list[str | None]) -> dict:
    n = len(ranks)
    out = {f"recall@{k}": proportion(sum(r is not None and r <= k for r in ranks), n) for k in ks}
    out["mrr"] = round(sum(1 / r for r in ranks if r) / n, 4) if n else 0.0
    by_lang = {}
    for lang in sorted({x for x in languages if x}):
        sub = [r for r, x in zip(ranks, languages) if x == lang]
        by_lang[lang] = {"n": len(sub), **{f"recall@{k}": round(sum(r is not None and r <= k for r in sub) / len(sub), 4) for k in ks},
                         "mrr": round(sum(1 / r for r in sub if r) / len(sub), 4)}
    out["by_language"] = by_lang
    return out
