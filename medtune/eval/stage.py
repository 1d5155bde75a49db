"""The recipe's ``eval`` stage: base model vs fine-tuned (merged) model, ending with a report.

For each of the two models (loaded one at a time) it runs log-likelihood MCQ scoring on
``eval.mcq_files``, fact recall on ``eval.fact_file`` (a few short greedy answers: generation
is the slow part on CPU) — closed-book and, with ``eval.rag_index``, grounded in the index
(RAG) — and held-out answer perplexity, then writes ``report.html`` and ``report.md``.
Output layout under ``<output_dir>/eval/``::

    mcq/<file stem>/<base|finetuned>/   fact/<base|finetuned>[+rag]/   heldout/<base|finetuned>/
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
from medtune.eval.config import EvalConfig, FactConfig, McqConfig
from medtune.eval.fact import run_fact
from medtune.eval.heldout import run_heldout
from medtune.eval.mcq import run_mcq
from medtune.eval.report import collect, comparisons, write_report

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
        r = run_mcq(McqConfig(data=f, model=name, batch_size=cfg.batch_size, seed=seed,
                              output_dir=out / "mcq" / Path(f).stem / name, overwrite=True), backend=backend)
        summary["mcq"][Path(f).name] = {"accuracy": r["accuracy"], "ci95": r["ci95"], "n": r["n"]}
    if cfg.fact_file:
        r = run_fact(FactConfig(data=cfg.fact_file, model=name, max_items=cfg.max_fact_items, seed=seed,
                                generation=cfg.fact_generation, output_dir=out / "fact" / name, overwrite=True), backend=backend)
        summary["fact"] = {c: r[c]["rate"] for c in ("hit_any", "hit_half", "hit_two_thirds")}
        summary["fact_quality"] = {k: v["rate"] for k, v in r["quality"].items()}
    if cfg.fact_file and cfg.rag_index:
        r = run_fact(FactConfig(data=cfg.fact_file, model=name, max_items=cfg.max_fact_items, seed=seed,
                                generation=cfg.fact_generation, rag=RagSettings(index=cfg.rag_index, top_k=cfg.rag_top_k),
                                output_dir=out / "fact" / f"{name}+rag", overwrite=True),
                     backend=dataclasses.replace(backend, name=f"{name}+rag"))
        summary["fact_rag"] = {c: r[c]["rate"] for c in ("hit_any", "hit_half", "hit_two_thirds")}
    if cfg.heldout and train is not None:
        r = run_heldout(backend, train, train.seed, out / "heldout" / name)
        if r:
            summary["heldout"] = {"nll_per_token": r["nll_per_token"], "perplexity": r["perplexity"],
                                  "perplexity_ci95": r["perplexity_ci95"], "n": r["n"]}
    return summary


def run_eval_stage(cfg: EvalConfig, base: str, finetuned: list[Path], train: TrainConfig | None, seed: int,
                   out: Path, title: str) -> dict:
    """Compare the base model and the fine-tuned model; write the report.

    Args:
        cfg: the ``eval:`` section.
        base: the base model spec.
        finetuned: candidate fine-tuned model dirs, best first (merged, adapter).
        train: the resolved train config (its held-out examples), or None.
        seed: seed for every evaluation.
        out: the stage directory.
        title: report title.

    Returns:
        ``{"base": {...}, "finetuned": {...}, "comparison": [...], "report": path}``; each
        comparison is ``{"measure", "base", "finetuned", "verdict"}`` (:func:`medtune.eval.report.comparisons`);
        with ``cfg.rag_index`` also ``"rag_comparison"``: ``{"model", "measure", "closed_book", "rag", "verdict"}``
        per model and fact measure (values ``(rate, low, high)``).

    Raises:
        EvalError: no fine-tuned model yet.
        medtune.errors.DataFileError: an evaluation file cannot be read.
    """
    models = {"base": base, "finetuned": finetuned_model(finetuned)}
    summary: dict = {name: evaluate_model(name, spec, cfg, train, seed, out) for name, spec in models.items()}
    report = write_report([out], out / "report.html", title)
    results = collect([out])
    summary["comparison"] = comparisons(results)
    for c in summary["comparison"]:
        console.print(f"  {c['measure']}: base {c['base'][0]:.3f} -> fine-tuned {c['finetuned'][0]:.3f}: {c['verdict']}")
    if cfg.rag_index:
        summary["rag_comparison"] = [{"model": name, "measure": c["measure"], "closed_book": c["base"], "rag": c["finetuned"],
                                      "verdict": c["verdict"]}
                                     for name in models for c in comparisons(results, name, f"{name}+rag") if "fact" in c["measure"]]
        for c in summary["rag_comparison"]:
            console.print(f"  {c['model']} {c['measure']}: closed-book {c['closed_book'][0]:.3f} -> RAG {c['rag'][0]:.3f}: {c['verdict']}")
    summary["report"] = report["html"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    console.print(f"eval: report at {report['html']}")
    return summary
