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


@eval_app.command("fact")
@eval_errors
def fact(data: Path = typer.Argument(..., help="Fact questions: JSONL/JSON of {id, question, expected: [..], synonyms?}."),
         model: str = typer.Option(..., help="[NAME=]SPEC: pack, model dir, adapter dir, hub id or URL#MODEL."),
         adapter: Optional[Path] = typer.Option(None, help="LoRA adapter applied on --model."),
         synonyms: Optional[Path] = typer.Option(None, help="JSON {item: [synonyms]} used for every question."),
         system: Optional[str] = typer.Option(None, help="System prompt."),
         batch_size: int = typer.Option(4, help="Questions per generate call."),
         max_items: Optional[int] = typer.Option(None, help="Only the first N questions."),
         max_new_tokens: int = typer.Option(64, help="Answer length limit (tokens)."),
         temperature: float = typer.Option(0.0, help="0 = greedy."),
         output_dir: Path = typer.Option(Path("runs/eval/fact"), help="Output directory."),
         seed: int = typer.Option(42, help="Seed for sampled decoding."),
         overwrite: bool = typer.Option(False, "--overwrite", help="Discard a different earlier run in output_dir."),
         ) -> None:
    """Knowledge-base fact recall: share of questions with >=1, >=1/2 and >=2/3 of expected items mentioned."""
    from medtune.eval.fact import run_fact

    run_fact(FactConfig(data=data, model=model, adapter=adapter, synonyms=synonyms, system=system, batch_size=batch_size,
                        max_items=max_items, generation=_gen(temperature, max_new_tokens), output_dir=output_dir,
                        seed=seed, overwrite=overwrite))


@eval_app.command("judge")
@eval_errors
def judge(data: Path = typer.Argument(..., help="CSV/JSONL with a question column and answer columns."),
          judge_model: str = typer.Option(..., "--judge", help="Judge: URL#MODEL endpoint or a local model spec."),
          answer: List[str] = typer.Option(..., "--answer", help="Answer column (repeat; pairwise: exactly two, A then B)."),
          mode: str = typer.Option("rubric", help="rubric (1-4 x accuracy/conciseness/understandability) or pairwise."),
          question_column: str = typer.Option("prompt", help="Column holding the question."),
          reference_column: Optional[str] = typer.Option(None, help="Column with a reference answer."),
          language: str = typer.Option("auto", help="Rubric language: auto, en, zh, ko."),
          prompts_dir: Optional[Path] = typer.Option(None, help="Folder with replacement rubric_<lang>.txt / pairwise_<lang>.txt."),
          temperature: float = typer.Option(0.0, help="Judge temperature; > 0 uses the median of --samples judgements."),
          samples: int = typer.Option(1, help="Judgements per item when temperature > 0."),
          max_retries: int = typer.Option(2, help="Re-asks after an off-format reply before counting it invalid."),
          max_items: Optional[int] = typer.Option(None, help="Only the first N rows."),
          output_dir: Path = typer.Option(Path("runs/eval/judge"), help="Output directory."),
          seed: int = typer.Option(42, help="Seed sent to the judge."),
          ) -> None:
    """LLM-as-judge: rubric scores, or A vs B judged in both orders (win/tie/loss, order inconsistency)."""
    from medtune.eval.judge import run_judge

    run_judge(JudgeConfig(data=data, judge=judge_model, answer_columns=answer, mode=mode, question_column=question_column,
                          reference_column=reference_column, language=language, prompts_dir=prompts_dir,
                          temperature=temperature, samples=samples, max_retries=max_retries, max_items=max_items,
                          output_dir=output_dir, seed=seed))


@eval_app.command("answers")
@eval_errors
def answers(data: Path = typer.Argument(..., help="CSV/JSONL of prompts."),
            model: List[str] = typer.Option(..., "--model", help="NAME=SPEC (repeat); each adds <NAME>_answer."),
            prompt_column: str = typer.Option("prompt", help="Column holding the prompt."),
            system: Optional[str] = typer.Option(None, help="System prompt."),
            batch_size: int = typer.Option(4, help="Prompts per generate call."),
            max_new_tokens: int = typer.Option(128, help="Answer length limit (tokens)."),
            temperature: float = typer.Option(0.0, help="0 = greedy."),
            output: Path = typer.Option(Path("runs/eval/answers.jsonl"), help="Output .csv or .jsonl."),
            seed: int = typer.Option(42, help="Seed for sampled decoding."),
            ) -> None:
    """Answer a prompt file with several models (one <name>_answer column each); resumable."""
    from medtune.eval.answers import run_answers

    run_answers(AnswersConfig(data=data, models=model, prompt_column=prompt_column, system=system, batch_size=batch_size,
                              generation=_gen(temperature, max_new_tokens), output=output, seed=seed))


@eval_app.command("report")
@eval_errors
def report(runs: List[Path] = typer.Argument(..., help="Directories holding results.json files (searched recursively)."),
           output: Path = typer.Option(Path("runs/eval/report.html"), help="HTML report path (markdown written beside it)."),
           title: str = typer.Option("medtune evaluation report", help="Report title."),
           ) -> None:
    """One self-contained HTML (+ markdown) report: accuracy with error bars, judge scores, win rates."""
    from medtune.eval.report import write_report

    write_report(runs, output, title)
