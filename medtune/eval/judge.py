"""``medtune eval judge``: LLM-as-judge, rubric scores and order-swapped pairwise comparison.

Rubric: the judge scores each answer 1-4 on **accuracy, conciseness, understandability**
with a short rationale (the three-criterion protocol of radiology patient-QA studies). The
rubric prompts live in ``medtune/judge_prompts/rubric_<lang>.txt`` (replaceable with ``prompts_dir``).

Pairwise: A vs B is judged twice, once in each order; a verdict counts only when both
orders agree, otherwise it is a tie and an order inconsistency (position bias; Zheng et al.,
"Judging LLM-as-a-judge with MT-Bench and Chatbot Arena", NeurIPS 2023).

Replies must be one JSON object with exactly the expected fields (strict parsing); an
off-format reply is re-asked up to ``max_retries`` times with the reason, then counted as
invalid. With temperature > 0 the judge is asked ``samples`` times (seed + i) and the median
score / majority verdict is kept. Every call goes through the shared client
(:mod:`medtune.llm`): cached in ``judge_cache.sqlite``, so a killed run resumes free.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

from rich.console import Console

from medtune.errors import EvalError
from medtune.eval.backends import endpoint_client
from medtune.eval.config import JudgeConfig
from medtune.eval.results import append_rows, elapsed, finish, load_done, run_key
from medtune.eval.stats import median, proportion
from medtune.io import Reject, read_rows
from medtune.judge_core import (
    InvalidReply,
    json_object,
    judge_swapped,
    load_template,
    reference_block,
    sampled,
)
from medtune.manifest import tree_digests
from medtune.text import detect_language

console = Console(stderr=True)
CRITERIA = ("accuracy", "conciseness", "understandability")


def parse_rubric(reply: str) -> dict:
    """``{"accuracy", "conciseness", "understandability": int 1-4, "rationale": str}`` from a judge reply.

    Raises:
        InvalidReply: missing field, a score that is not an integer 1-4, or no rationale.
    """
    obj = json_object(reply)
    out = {}
    for c in CRITERIA:
        v = obj.get(c)
        if type(v) is not int or not 1 <= v <= 4:
            raise InvalidReply(f"{c!r} must be an integer 1-4, got {v!r}")
        out[c] = v
    if not isinstance(obj.get("rationale"), str) or not obj["rationale"].strip():
        raise InvalidReply("'rationale' must be a non-empty string")
    return {**out, "rationale": obj["rationale"].strip()}


async def _sampled(judge, messages, parse, cfg: JudgeConfig) -> tuple[list[dict], int]:
    k = cfg.samples if cfg.temperature > 0 else 1
    return await sampled(judge, messages, parse, k, cfg.max_retries, cfg.seed, max_tokens=cfg.max_tokens)


async def judge_rubric_item(judge, row: dict, cfg: JudgeConfig, lang: str) -> dict:
    """Rubric scores of every answer column of one row (median over valid samples)."""
    template = load_template("rubric", lang, cfg.prompts_dir)
    out = {}
    for col in cfg.answer_columns:
        prompt = template.substitute(question=row["question"], answer=row[col], reference=row["reference_block"])
        valid, calls = await _sampled(judge, [{"role": "user", "content": prompt}], parse_rubric, cfg)
        scores = {c: median([v[c] for v in valid]) for c in CRITERIA} if valid else None
        out[col] = {"scores": scores, "rationale": valid[0]["rationale"] if valid else None,
                    "samples": [{c: v[c] for c in CRITERIA} for v in valid], "judge_calls": calls}
    return out


async def judge_pair_item(judge, row: dict, cfg: JudgeConfig, lang: str) -> dict:
    """Pairwise verdict of one row: judged as (A, B) and as (B, A); agreement or a tie
    (:func:`medtune.judge_core.judge_swapped`), with the judge's reason for each order."""
    a, b = cfg.answer_columns
    return await judge_swapped(judge, load_template("pairwise", lang, cfg.prompts_dir), row["question"],
                               {a: row[a], b: row[b]}, row["reference_block"],
                               samples=cfg.samples if cfg.temperature > 0 else 1, max_retries=cfg.max_retries,
                               seed=cfg.seed, max_tokens=cfg.max_tokens)


def load_judge_rows(cfg: JudgeConfig) -> tuple[list[dict], list[Reject]]:
    """Rows with ``id``, ``question``, the answer columns and the reference block; bad rows rejected."""
    rows, rejects = [], []
    for n, (loc, rec) in enumerate(read_rows(cfg.data), 1):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        missing = [c for c in (cfg.question_column, *cfg.answer_columns) if not str(rec.get(c) or "").strip()]
        if missing:
            rejects.append(Reject(str(cfg.data), loc, "missing or empty", missing[0], rec))
            continue
        q = str(rec[cfg.question_column])
        lang = cfg.language if cfg.language != "auto" else detect_language(q, default="en")
        ref = str(rec.get(cfg.reference_column) or "") if cfg.reference_column else ""
        rows.append({"id": str(rec.get("id") or n), "question": q, "lang": lang,
                     "reference_block": reference_block(ref, lang),
                     **{c: str(rec[c]) for c in cfg.answer_columns}})
    return rows, rejects


def summarize_rubric(done: list[dict], columns: list[str]) -> dict:
    """Per answer column: mean and distribution (1-4) of each criterion, and invalid count."""
    out = {}
    for col in columns:
        valid = [d["judgement"][col]["scores"] for d in done if d["judgement"][col]["scores"]]
        out[col] = {"n": len(done), "invalid": len(done) - len(valid),
                    **{c: {"mean": round(sum(v[c] for v in valid) / len(valid), 3) if valid else None,
                           "distribution": {str(s): sum(1 for v in valid if round(v[c]) == s) for s in range(1, 5)}}
                       for c in CRITERIA}}
    return out


def summarize_pairwise(done: list[dict], a: str, b: str) -> dict:
    """Win/tie/loss of A (with 95% Wilson CIs) and the order-inconsistency rate."""
    valid = [d["judgement"] for d in done if d["judgement"]["verdict"] is not None]
    n = len(valid)
    return {"a": a, "b": b, "n": len(done), "invalid": len(done) - n,
            "win": proportion(sum(v["verdict"] == a for v in valid), n),
            "tie": proportion(sum(v["verdict"] == "tie" for v in valid), n),
            "loss": proportion(sum(v["verdict"] == b for v in valid), n),
            "order_inconsistency": proportion(sum(not v["consistent"] for v in valid), n)}


async def _judge_all(judge, todo: list[dict], cfg: JudgeConfig, key: str, out: Path) -> list[dict]:
    fn = judge_rubric_item if cfg.mode == "rubric" else judge_pair_item
    finished = []

    async def one(row):
        result = {"id": row["id"], "judgement": await fn(judge, row, cfg, row["lang"]), "run_key": key}
        append_rows(out / "judgements.jsonl", [result])
        finished.append(result)

    try:
        await asyncio.gather(*(one(r) for r in todo))
    finally:
        await judge.aclose()
    return finished


def run_judge(cfg: JudgeConfig, judge=None) -> dict:
    """Judge every row; write ``judgements.jsonl``, ``results.json`` and ``manifest.json``.

    Args:
        cfg: the judge config.
        judge: a ready client (``async complete(messages, **params)`` returning ``.text``); built
            from ``cfg.judge`` with the shared client when None.

    Returns:
        Rubric: per answer column, mean and distribution of each criterion. Pairwise: win /
        tie / loss of A with CIs and the order-inconsistency rate. Both pin the judge identity.

    Raises:
        EvalError: pairwise without exactly two answer columns.
        medtune.errors.ConfigError: a missing prompt file.
        medtune.llm.LLMError: the judge endpoint failed for good (finished rows are kept).
    """
    if cfg.mode == "pairwise" and len(cfg.answer_columns) != 2:
        raise EvalError(f"pairwise judging needs exactly two answer columns (A, B), got {cfg.answer_columns}")
    started = time.time()
    rows, rejects = load_judge_rows(cfg)
    rows = rows[:cfg.max_items] if cfg.max_items else rows
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge = judge or endpoint_client(cfg.judge, out / "judge_cache.sqlite", cfg.temperature, cfg.seed)
    langs = sorted({r["lang"] for r in rows})
    prompts = {f"{k}_{lang}": load_template(k, lang, cfg.prompts_dir).template for k in ("rubric", "pairwise") for lang in langs}
    identity = {"spec": cfg.judge, "base_url": getattr(judge.cfg, "base_url", None), "model": judge.model,
                "temperature": cfg.temperature, "samples": cfg.samples if cfg.temperature > 0 else 1,
                "prompts_sha256": hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()}
    config = {**cfg.model_dump(mode="json", exclude={"output_dir", "overwrite"}), "prompt_templates": prompts}
    inputs = {"data": tree_digests(Path(cfg.data)), "judge": identity}
    key = run_key(config, inputs)
    done = load_done(out / "judgements.jsonl", key, cfg.overwrite)
    todo = [r for r in rows if r["id"] not in done]
    console.print(f"judge ({cfg.mode}) {identity['model']}: {len(todo)} rows to judge, {len(rows) - len(todo)} done before")
    for r in asyncio.run(_judge_all(judge, todo, cfg, key, out)):
        done[r["id"]] = r
    ordered = [done[r["id"]] for r in rows]
    summary = summarize_rubric(ordered, cfg.answer_columns) if cfg.mode == "rubric" else \
        summarize_pairwise(ordered, *cfg.answer_columns)
    results = {"mode": cfg.mode, "judge": identity, "data": str(cfg.data), "n": len(rows), "seed": cfg.seed,
               cfg.mode: summary, "rejected": len(rejects), "predictions_file": "judgements.jsonl"}
    (out / "judgements.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8")
    results = finish(out, "judge", config, inputs, results, cfg.seed, started, rejects, None,
                     {"rows": len(rows), "judged": len(todo), "usage": getattr(judge, "usage", {}), "wall_s": elapsed(started)})
    console.print(f"judge {cfg.mode}: {len(rows)} rows -> {out / 'results.json'}")
    return results
