"""The recipe's ``eval`` stage: base model vs fine-tuned (merged) model, ending with a report.

For each of the two models (loaded one at a time) it runs log-likelihood MCQ scoring on
``eval.mcq_files``, fact recall on ``eval.fact_file`` (a few short greedy answers: generation
is the slow part on CPU) and held-out answer perplexity, then writes ``report.html`` and
``report.md``. Output layout under ``<output_dir>/eval/``::

    mcq/<file stem>/<base|finetuned>/   fact/<base|finetuned>/   heldout/<base|finetuned>/
    report.html   report.md   summary.json
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from medtune.config import Recipe, TrainConfig
from medtune.eval.backends import EvalError, load_backend
from medtune.eval.config import EvalConfig, FactConfig, McqConfig
from medtune.eval.fact import run_fact
from medtune.eval.heldout import run_heldout
from medtune.eval.mcq import run_mcq
from medtune.eval.report import write_report
from medtune.run import data_stage_files

console = Console(stderr=True)


def finetuned_model(recipe: Recipe) -> str:
    """The merged model directory, else the adapter directory.

    Raises:
        EvalError: neither exists (run the train/merge stages first).
    """
    for sub in ("merged", "adapter"):
        path = recipe.output_dir / sub
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return str(path)
    raise EvalError(f"no fine-tuned model in {recipe.output_dir}/merged or /adapter: run the train (and merge) stages first")


def evaluate_model(name: str, spec: str, cfg: EvalConfig, recipe: Recipe, out: Path) -> dict:
    """Every evaluation of the stage for one model; returns ``{"mcq": {file: acc}, "fact": ..., "heldout": ...}``."""
    backend = load_backend(f"{name}={spec}")
    summary = {"mcq": {}}
    for f in cfg.mcq_files:
        r = run_mcq(McqConfig(data=f, model=name, batch_size=cfg.batch_size, seed=recipe.seed,
                              output_dir=out / "mcq" / Path(f).stem / name, overwrite=True), backend=backend)
        summary["mcq"][Path(f).name] = {"accuracy": r["accuracy"], "ci95": r["ci95"], "n": r["n"]}
    if cfg.fact_file:
        r = run_fact(FactConfig(data=cfg.fact_file, model=name, max_items=cfg.max_fact_items, seed=recipe.seed,
                                generation=cfg.fact_generation, output_dir=out / "fact" / name, overwrite=True), backend=backend)
        summary["fact"] = {c: r[c]["rate"] for c in ("hit_any", "hit_half", "hit_two_thirds")}
    if cfg.heldout:
        train = (recipe.train or TrainConfig()).model_copy(update=data_stage_files(recipe))
        seed = train.seed if train.seed is not None else recipe.seed
        r = run_heldout(backend, train, seed, out / "heldout" / name)
        if r:
            summary["heldout"] = {"nll_per_token": r["nll_per_token"], "perplexity": r["perplexity"], "n": r["n"]}
    return summary


def run_eval_stage(recipe: Recipe, out: Path) -> dict:
    """Compare the base model and the fine-tuned model; write the report.

    Returns:
        ``{"base": {...}, "finetuned": {...}, "report": path}``.

    Raises:
        EvalError: no fine-tuned model yet.
        medtune.train.dataset.DataFileError: an evaluation file cannot be read.
    """
    cfg = recipe.eval or EvalConfig()
    models = {"base": recipe.model, "finetuned": finetuned_model(recipe)}
    summary = {name: evaluate_model(name, spec, cfg, recipe, out) for name, spec in models.items()}
    report = write_report([out], out / "report.html", f"medtune: base vs fine-tuned ({recipe.output_dir})")
    summary["report"] = report["html"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    console.print(f"eval: report at {report['html']}")
    return summary
