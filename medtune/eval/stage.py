"""The recipe's ``eval`` stage: base model vs fine-tuned (merged) model (vs the aligned model when the
recipe has an ``align`` stage), ending with a report.

For each model (loaded one at a time) it runs log-likelihood MCQ scoring on
``eval.mcq_files``, fact recall on ``eval.fact_file`` (a few short greedy answers: generation
is the slow part on CPU) — closed-book and, with ``eval.rag_index``, grounded in the index
(RAG) — held-out answer perplexity and, with ``eval.safety_file``, urgent care with the safety
layer off (:mod:`medtune.eval.urgent`), with ``eval.lm_eval_tasks`` lm-evaluation-harness tasks
(:mod:`medtune.eval.harness`) and with ``eval.rubric_file`` rubric-graded conversations
(:mod:`medtune.eval.rubric`), then writes ``report.html`` and ``report.md`` (with a seeded sample of
answers side by side). Output layout under ``<output_dir>/eval/``::

    mcq/<file stem>/<base|finetuned|aligned>/   fact/<model>[+rag]/   rag/<model>+rag/   heldout/<model>/   urgent/<model>/
    lm_eval/<model>/<task>/   rubric/<model>/
    report.html   report.md   summary.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console

from medtune.config import RagSettings, TrainConfig
from medtune.errors import EvalError
from medtune.eval.backends import load_backend
from medtune.eval.config import EvalConfig, FactConfig, LmEvalConfig, McqConfig, RagEvalConfig, RubricConfig
from medtune.eval.fact import run_fact
from medtune.eval.harness import run_lm_eval
from medtune.eval.heldout import run_heldout
from medtune.eval.mcq import run_mcq
from medtune.eval.rag import run_rag_eval
from medtune.eval.report import collect, comparisons, verdict, write_report
from medtune.eval.rubric import run_rubric
from medtune.eval.urgent import run_urgent

console = Console(stderr=True)


def finetuned_model(candidates: list[Path]) -> str:
    """The first of ``candidates`` (merged model dir, then adapter dir) that holds a model.

    Raises:
        EvalError: none does (run the train/merge stages first).
    """
    for path in map(Path, candidates):
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return str(path)
    raise EvalError(f"no fine-tuned model in {' or '.join(map(str, candidates))}: run the train (and merge) stages first")


def evaluate_model(name: str, spec: str, cfg: EvalConfig, train: TrainConfig | None, seed: int, out: Path) -> dict:
    """Every evaluation of the stage for one model; returns ``{"mcq": {file: acc}, "fact": ..., "heldout": ...}``.

    ``train`` is the resolved train stage config whose held-out examples are scored (None: skip).
    """
    backend = load_backend(f"{name}={spec}")
    summary = {"mcq": {}}
    for f in cfg.mcq_files:
        r = run_mcq(McqConfig(data=f, model=name, batch_size=cfg.batch_size, seed=seed, calibrate=cfg.mcq_calibrate,
                              pride=cfg.mcq_pride, verdict=cfg.mcq_verdict, output_dir=out / "mcq" / Path(f).stem / name,
                              overwrite=True), backend=backend)
        summary["mcq"][Path(f).name] = {"accuracy": r["accuracy"], "ci95": r["ci95"], "n": r["n"], "verdict": r["verdict"]}
    if cfg.fact_file:
        r = run_fact(_fact_config(cfg, name, seed, out / "fact" / name), backend=backend)
        summary["fact"] = {c: r[c]["rate"] for c in ("hit_any", "hit_half", "hit_two_thirds", "bleed")}
        summary["fact_by_language"] = r["by_language"]
        summary["fact"].update(_rag_extras(r))
        summary["fact_quality"] = {k: v["rate"] for k, v in r["quality"].items()}
    if cfg.fact_file and cfg.rag_index:
        r = run_fact(_fact_config(cfg, name, seed, out / "fact" / f"{name}+rag",
                                  rag=RagSettings(index=cfg.rag_index, top_k=cfg.rag_top_k,
                                                  min_answer_support=cfg.rag_min_answer_support,
                                                  candidates=cfg.rag_candidates)),
                     backend=dataclasses.replace(backend, name=f"{name}+rag"))
        summary["fact_rag"] = {c: r[c]["rate"] for c in ("hit_any", "hit_half", "hit_two_thirds", "bleed")}
        summary["fact_rag"].update(_rag_extras(r))
    if cfg.fact_file and cfg.rag_index and cfg.rag_judge:
        r = run_rag_eval(RagEvalConfig(answers=out / "fact" / f"{name}+rag" / "predictions.jsonl", judge=cfg.rag_judge, seed=seed,
                                       output_dir=out / "rag" / f"{name}+rag"))["citations"]
        summary["citations"] = {k: r[k] for k in ("citation_precision", "answers_with_citation", "sentences_without_citation")}
    if cfg.heldout and train is not None:
        r = run_heldout(backend, train, train.seed, out / "heldout" / name)
        if r:
            summary["heldout"] = {"nll_per_token": r["nll_per_token"], "perplexity": r["perplexity"],
                                  "perplexity_ci95": r["perplexity_ci95"], "n": r["n"]}
    if cfg.lm_eval_tasks:
        r = run_lm_eval(LmEvalConfig(tasks=cfg.lm_eval_tasks, model=name, data=cfg.lm_eval_data, max_items=cfg.lm_eval_max_items,
                                     batch_size=cfg.batch_size, seed=seed, output_dir=out / "lm_eval" / name), backend=backend)
        summary["lm_eval"] = {t: {"metric": x["metric"], "value": x["value"], "stderr": x["stderr"]} for t, x in r["tasks"].items()}
    if cfg.rubric_file:
        r = run_rubric(RubricConfig(data=cfg.rubric_file, model=name, judge=cfg.rubric_judge, max_items=cfg.max_rubric_items,
                                    generation=cfg.rubric_generation, batch_size=cfg.batch_size, seed=seed,
                                    output_dir=out / "rubric" / name, overwrite=True), backend=backend)
        summary["rubric"] = {"score": r["score"], "invalid_grades": r["invalid_grades"]}
    if cfg.safety_file:
        r = run_urgent(backend, name, cfg.safety_file, out / "urgent" / name, cfg.max_safety_items,
                       cfg.safety_generation, cfg.batch_size)
        summary["urgent"] = {k: r[k] for k in ("urgent_on_red_flag", "alarm_on_benign")}
    return summary


def _fact_config(cfg: EvalConfig, name: str, seed: int, out: Path, **extra) -> FactConfig:
    """The fact-recall run of the stage for one model (closed-book, or with ``rag=``)."""
    return FactConfig(data=cfg.fact_file, model=name, max_items=cfg.max_fact_items, seed=seed, entities=cfg.fact_entities,
                      unanswerable=cfg.fact_unanswerable, question_column=cfg.fact_question_column,
                      expected_column=cfg.fact_expected_column, generation=cfg.fact_generation, output_dir=out,
                      overwrite=True, **extra)


def _rag_extras(r: dict) -> dict:
    """Citation support and the not-covered answers of a fact result, as rates, when it has them."""
    out = {"citation_support": r["citation_support"]["rate"]} if "citation_support" in r else {}
    if "unanswerable" in r:
        out.update(unanswerable_said_so=r["unanswerable"]["abstained"]["rate"],
                   answerable_said_not_covered=r["abstained_when_answerable"]["rate"])
    if "declined" in r.get("unanswerable", {}):  # with retrieval: the reply as chat / serve show it
        out.update(unanswerable_reply_declined=r["unanswerable"]["declined"]["rate"],
                   answerable_reply_declined=r["declined_when_answerable"]["rate"])
    return out


def run_eval_stage(cfg: EvalConfig, base: str, finetuned: list[Path], train: TrainConfig | None, seed: int,
                   out: Path, title: str, aligned: list[Path] | None = None) -> dict:
    """Compare the base model and the fine-tuned model (and the aligned one); write the report.

    Args:
        cfg: the ``eval:`` section.
        base: the base model spec.
        finetuned: candidate fine-tuned model dirs, best first (merged, adapter).
        train: the resolved train config (its held-out examples), or None.
        seed: seed for every evaluation.
        out: the stage directory.
        title: report title.
        aligned: candidate aligned model dirs (``align-merged``, ``align``), or None without an align stage.

    Returns:
        ``{"base": {...}, "finetuned": {...}, ["aligned": {...},] "comparison": [...], "report": path}``; each
        comparison is ``{"measure", "base", "finetuned", "verdict"}`` (:func:`medtune.eval.report.comparisons`);
        with an aligned model also ``"comparison_aligned"`` (fine-tuned -> aligned, same keys) and
        ``"comparison_base_aligned"`` (base -> aligned); with ``cfg.rag_index`` also ``"rag_comparison"``:
        ``{"model", "measure", "closed_book", "rag", "verdict"}`` per model and fact measure.

    Raises:
        EvalError: no fine-tuned model yet.
        medtune.errors.DataFileError: an evaluation file cannot be read.
    """
    if cfg.rubric_file and not cfg.rubric_judge:
        raise EvalError("eval.rubric_file needs eval.rubric_judge (a URL#MODEL endpoint or a local model spec) to grade the criteria")
    models = {"base": base, "finetuned": finetuned_model(finetuned)}
    if aligned:
        models["aligned"] = finetuned_model(aligned)
    summary: dict = {name: evaluate_model(name, spec, cfg, train, seed, out) for name, spec in models.items()}
    report = write_report([out], out / "report.html", title, cfg.answers_per_language, seed)
    results = collect([out])
    pairs = [("comparison", "base", "finetuned")] + ([("comparison_aligned", "finetuned", "aligned"),
                                                     ("comparison_base_aligned", "base", "aligned")] if aligned else [])
    for key, a, b in pairs:
        summary[key] = comparisons(results, a, b)
        for c in summary[key]:
            console.print(f"  {c['measure']}: {a} {c['base'][0]:.3f} -> {b} {c['finetuned'][0]:.3f}: {c['verdict']}")
    if cfg.rag_index:
        summary["rag_comparison"] = [{"model": name, "measure": c["measure"], "closed_book": c["base"], "rag": c["finetuned"],
                                      "verdict": verdict(c["base"], c["finetuned"], True, change="retrieval")}
                                     for name in models for c in comparisons(results, name, f"{name}+rag") if c["measure"].startswith("fact recall")]
        for c in summary["rag_comparison"]:
            console.print(f"  {c['model']} {c['measure']}: closed-book {c['closed_book'][0]:.3f} -> RAG {c['rag'][0]:.3f}: {c['verdict']}")
    summary["report"] = report["html"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    console.print(f"eval: report at {report['html']}")
    return summary
