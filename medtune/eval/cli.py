"""``medtune eval ...``: one subcommand per evaluation function.

| subcommand        | function                                  |
|-------------------|-------------------------------------------|
| ``eval mcq``      | :func:`medtune.eval.mcq.run_mcq`          |
| ``eval fact``     | :func:`medtune.eval.fact.run_fact`        |
| ``eval judge``    | :func:`medtune.eval.judge.run_judge`      |
| ``eval answers``  | :func:`medtune.eval.answers.run_answers`  |
| ``eval report``   | :func:`medtune.eval.report.write_report`  |
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer
from pydantic import ValidationError

from medtune.config import ConfigError, GenerationSettings
from medtune.eval.config import AnswersConfig, FactConfig, JudgeConfig, McqConfig

eval_app = typer.Typer(help="Evaluate models: multiple-choice benchmarks, fact recall, LLM-as-judge, answers, report.",
                       no_args_is_help=True)


def eval_errors(fn):
    """Like :func:`medtune.cli.friendly_errors`, plus evaluation, client and config validation errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from medtune.cli import friendly_errors
        from medtune.data.teacher import TeacherError
        from medtune.eval.backends import EvalError

        try:
            return friendly_errors(fn)(*args, **kwargs)
        except (EvalError, TeacherError) as e:
            raise _exit(str(e)) from None
        except ValidationError as e:
            raise _exit("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None

    return wrapper


def _exit(message: str) -> typer.Exit:
    from medtune.cli import err

    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(2)


def _pairs(items: Optional[List[str]], what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"{what} {item!r}: expected FIELD=COLUMN, e.g. question=stem")
        out[k.strip()] = v.strip()
    return out


def _gen(temperature: float, max_new_tokens: int) -> GenerationSettings:
    return GenerationSettings(temperature=temperature, max_new_tokens=max_new_tokens)


@eval_app.command("mcq")
@eval_errors
def mcq(data: Path = typer.Argument(..., help="Benchmark file (CSV/TSV/JSONL/JSON)."),
        model: str = typer.Option(..., help="[NAME=]SPEC: pack, model dir, adapter dir, hub id or URL#MODEL."),
        adapter: Optional[Path] = typer.Option(None, help="LoRA adapter applied on --model."),
        format: str = typer.Option("auto", help="auto, cmexam, cmb, kormedmcqa, medqa, medmcqa, pubmedqa or generic."),
        map: Optional[List[str]] = typer.Option(None, "--map", help="generic: FIELD=COLUMN (question, answer, options or A..J, subject, context, id)."),
        ground_truth: Optional[Path] = typer.Option(None, help="PubMedQA ground-truth JSON for the test-set form."),
        encoding: str = typer.Option("utf-8", help="Encodings tried per line, comma-separated (e.g. utf-8,gb18030)."),
        mode: str = typer.Option("auto", help="loglik, generate, or auto (loglik for local models)."),
        cot: bool = typer.Option(False, "--cot", help="generate mode: reason step by step before the answer."),
        shots: int = typer.Option(0, help="k-shot examples per question."),
        shots_file: Optional[Path] = typer.Option(None, help="File the k-shot examples come from."),
        language: str = typer.Option("auto", help="Prompt language: auto, en, zh, ko."),
        batch_size: int = typer.Option(8, help="Questions per batch."),
        max_items: Optional[int] = typer.Option(None, help="Only the first N questions."),
        max_new_tokens: int = typer.Option(16, help="generate mode: reply length limit (use ~512 with --cot)."),
        temperature: float = typer.Option(0.0, help="generate mode: 0 = greedy."),
        output_dir: Path = typer.Option(Path("runs/eval/mcq"), help="Output directory."),
        seed: int = typer.Option(42, help="Seed for k-shot sampling and sampled decoding."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Discard a different earlier run in output_dir."),
        ) -> None:
    """Score a model on a multiple-choice benchmark (accuracy with 95% CI, per subject, per item)."""
    from medtune.eval.mcq import run_mcq

    run_mcq(McqConfig(data=data, model=model, adapter=adapter, format=format, column_map=_pairs(map, "--map"),
                      ground_truth=ground_truth, encodings=encoding.split(","), mode=mode, cot=cot, shots=shots,
                      shots_file=shots_file, language=language, batch_size=batch_size, max_items=max_items,
                      generation=_gen(temperature, max_new_tokens), output_dir=output_dir, seed=seed, overwrite=overwrite))
