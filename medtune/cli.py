"""The ``medtune`` command line: one subcommand per library function, nothing else.

| subcommand               | function                               |
|--------------------------|----------------------------------------|
| ``models list``          | :func:`medtune.models.pack_status`     |
| ``models prepare NAME``  | :func:`medtune.models.prepare_pack`    |
| ``data build RECIPE``    | :func:`medtune.data.build.build_data`  |
| ``train [RECIPE]``       | :func:`medtune.train.sft.run_sft`      |
| ``merge [RECIPE]``       | :func:`medtune.merge.merge_adapter`    |
| ``chat [RECIPE]``        | :func:`medtune.chat.chat`              |
| ``run RECIPE``           | :func:`medtune.run.run_recipe`         |
| ``serve [RECIPE]``       | :func:`medtune.serve.serve`            |
| ``web [RECIPE]``         | :func:`medtune.web.launch_web`         |
| ``eval safety``          | :func:`medtune.safety.evaluate_safety` |

Every stage command takes an optional YAML recipe and ``--set KEY=VALUE`` overrides
(``--set train.learning_rate=2e-4``); field descriptions are listed in each ``--help``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from medtune.config import (ChatConfig, ConfigError, MergeConfig, Recipe, ServeConfig, TrainConfig, WebConfig,
                            field_help, load_recipe)
from medtune.data.cli import data_app
from medtune.eval.cli import eval_app

app = typer.Typer(help="medtune: medical sources -> instruction data -> LoRA/QLoRA fine-tuning -> merge -> chat.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
models_app = typer.Typer(help="Offline model packs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
err = Console(stderr=True)
RECIPE_ARG = typer.Argument(None, help="YAML recipe (optional; defaults are used without one).")
SET_OPT = typer.Option(None, "--set", help="Override a field: --set train.learning_rate=2e-4 (repeatable).")
ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate_configs"


def _fields(*sections: tuple[type, str]) -> str:
    return "Fields (use with --set):\n\n" + "\n\n".join(field_help(m, p) for m, p in sections)


def friendly_errors(fn):
    """Turn medtune's own errors into a one-paragraph message and exit code 2 (no traceback)."""
    from medtune.merge import MergeError
    from medtune.models import ModelError
    from medtune.train.dataset import DataFileError
    from medtune.data.records import DataSourceError
    from medtune.data.teacher import TeacherError
    from medtune.eval.backends import EvalError
    from medtune.train.sft import TrainError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ModelError, TrainError, MergeError, DataFileError, DataSourceError, TeacherError,
                EvalError, FileNotFoundError) as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _recipe(path: Optional[Path], sets: Optional[List[str]], extra: dict[str, object]) -> Recipe:
    overrides = list(sets or []) + [f"{k}={v}" for k, v in extra.items() if v is not None]
    return load_recipe(path, overrides)


@models_app.command("list")
def models_list() -> None:
    """List offline packs: installed?, converted to the cache?, size, licence."""
    from medtune.models import PACKS, medtune_home, pack_status

    table = Table(title=f"medtune model packs (cache: {medtune_home() / 'models'})")
    for col in ("name", "installed", "cached", "GGUF size (GiB)", "licence", "description"):
        table.add_column(col)
    for pack in PACKS.values():
        s = pack_status(pack)
        table.add_row(s["name"], "yes" if s["installed"] else "no", "yes" if s["cached"] else "no",
                      str(s["size_gib"]), s["licence"], s["description"])
    Console().print(table)


@models_app.command("prepare")
@friendly_errors
def models_prepare(name: str = typer.Argument(..., help="Pack name, see `medtune models list`.")) -> None:
    """Check a pack's sha256 and convert it once to a cached safetensors model directory."""
    from medtune.models import prepare_pack

    Console().print(f"{name}: ready at {prepare_pack(name)}")


@app.command(epilog=_fields((Recipe, "recipe"), (TrainConfig, "train")))
@friendly_errors
def train(recipe: Optional[Path] = RECIPE_ARG, sets: Optional[List[str]] = SET_OPT,
          model: Optional[str] = typer.Option(None, help="Base model: pack name, directory, .gguf or hub id."),
          train_file: Optional[Path] = typer.Option(None, help="Training data (JSONL/JSON)."),
          output_dir: Optional[Path] = typer.Option(None, help="Where the adapter goes."),
          resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
          launcher: str = typer.Option("none", help="'none' (this process) or 'accelerate' (multi-GPU / multi-node)."),
          config_file: Optional[str] = typer.Option(None, help="accelerate config: a path or a shipped name "
                                                     "(ddp, fsdp, zero2, zero3, cpu2)."),
          ) -> None:
    """Fine-tune a model (LoRA, QLoRA or full) on Alpaca or messages data."""
    if launcher == "accelerate":
        raise typer.Exit(_launch_accelerate(config_file))
    from medtune.train.sft import run_sft

    r = _recipe(recipe, sets, {"model": model, "train.train_file": train_file, "train.output_dir": output_dir,
                               "train.resume": "true" if resume else None})
    cfg = r.train or TrainConfig()
    run_sft(cfg, model=r.model, output_dir=r.output_dir / "adapter", seed=r.seed)


def _launch_accelerate(config_file: Optional[str]) -> int:
    """Re-run this ``medtune train`` command under ``accelerate launch`` with the given config."""
    if config_file is None:
        raise ConfigError("--launcher accelerate needs --config-file (a path, or one of: ddp, fsdp, zero2, zero3, cpu2)")
    path = Path(config_file)
    if not path.is_file():
        path = ACCELERATE_CONFIGS / f"{config_file}.yaml"
        if not path.is_file():
            raise ConfigError(f"accelerate config not found: {config_file}")
    args, skip = [], False
    for a in sys.argv[sys.argv.index("train") + 1:]:
        if skip:
            skip = False
        elif a in ("--launcher", "--config-file"):
            skip = True
        elif not a.startswith(("--launcher=", "--config-file=")):
            args.append(a)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "-m", "medtune", "train", *args]
    err.print("[bold]launching:[/] " + " ".join(cmd))
    return subprocess.call(cmd, env={**os.environ, "MEDTUNE_LAUNCHED": "1"})


@app.command(epilog=_fields((MergeConfig, "merge")))
@friendly_errors
def merge(recipe: Optional[Path] = RECIPE_ARG, sets: Optional[List[str]] = SET_OPT,
          adapter: Optional[Path] = typer.Option(None, help="LoRA adapter directory."),
          model: Optional[str] = typer.Option(None, help="Unquantized base model (default: recorded in the adapter)."),
          output_dir: Optional[Path] = typer.Option(None, help="Merged model directory."),
          ) -> None:
    """Merge a LoRA adapter into its base and check adapter-vs-merged logit parity."""
    from medtune.merge import merge_adapter

    r = _recipe(recipe, sets, {"merge.adapter": adapter, "merge.model": model, "merge.output_dir": output_dir})
    merge_adapter(r.merge or MergeConfig(), adapter=r.output_dir / "adapter", output_dir=r.output_dir / "merged")


@app.command(epilog=_fields((ChatConfig, "chat")))
@friendly_errors
def chat(recipe: Optional[Path] = RECIPE_ARG, sets: Optional[List[str]] = SET_OPT,
         model: Optional[str] = typer.Option(None, help="Model dir, pack, .gguf, hub id (or the base of --adapter)."),
         adapter: Optional[Path] = typer.Option(None, help="LoRA adapter to apply."),
         prompt: Optional[str] = typer.Option(None, help="Answer this one message and exit (non-interactive)."),
         system: Optional[str] = typer.Option(None, help="System prompt."),
         temperature: Optional[float] = typer.Option(None, help="0 = greedy."),
         top_p: Optional[float] = typer.Option(None),
         max_new_tokens: Optional[int] = typer.Option(None),
         repetition_penalty: Optional[float] = typer.Option(None),
         ) -> None:
    """Chat with a model: interactive (/reset, /exit) or one-shot with --prompt."""
    from medtune.chat import chat as run_chat

    r = _recipe(recipe, sets, {"chat.model": model, "chat.adapter": adapter, "chat.system": system,
                               "chat.generation.temperature": temperature, "chat.generation.top_p": top_p,
                               "chat.generation.max_new_tokens": max_new_tokens,
                               "chat.generation.repetition_penalty": repetition_penalty})
    cfg = r.chat or ChatConfig()
    if cfg.model is None and cfg.adapter is None:
        merged = r.output_dir / "merged"
        cfg = cfg.model_copy(update={"model": str(merged) if recipe and merged.is_dir() else r.model})
    run_chat(cfg, prompt=prompt)


@app.command(epilog=_fields((Recipe, "recipe")))
@friendly_errors
def run(recipe: Path = typer.Argument(..., help="YAML recipe."), sets: Optional[List[str]] = SET_OPT,
        force: bool = typer.Option(False, "--force", help="Redo stages even when up to date."),
        only: Optional[List[str]] = typer.Option(None, "--only", help="Run only these stages (repeatable)."),
        ) -> None:
    """Run a recipe's stages in order (train -> merge -> samples), skipping up-to-date ones."""
    from medtune.run import run_recipe

    r = load_recipe(recipe, sets)
    run_recipe(r, force=force, only=only)
    merged = r.output_dir / "merged"
    if merged.is_dir():
        print(f"\nChat with the result:\n  medtune chat --model {merged}\n"
                        f"  medtune chat --model {merged} --prompt \"What is hypertension?\"")


def _optional(module: str, name: str):
    """Import ``module.name`` whose extra may be missing; exit 2 with the install hint instead of a traceback."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _default_model(r: Recipe, recipe: Optional[Path]) -> str:
    merged = r.output_dir / "merged"
    return str(merged) if recipe and merged.is_dir() else r.model


def _adapter_overrides(items: Optional[List[str]]) -> list[str]:
    out = []
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--adapter {item!r}: expected NAME=PATH, e.g. --adapter cardio=runs/cardio/adapter")
        out.append(f"serve.adapters.{name.strip()}={path.strip()}")
    return out


@app.command(epilog=_fields((ServeConfig, "serve")))
@friendly_errors
def serve(recipe: Optional[Path] = RECIPE_ARG, sets: Optional[List[str]] = SET_OPT,
          model: Optional[str] = typer.Option(None, help="Model dir, pack or hub id (the base when adapters are given)."),
          adapter: Optional[List[str]] = typer.Option(None, "--adapter", help="NAME=PATH LoRA adapter, chosen by the request's `model` (repeatable)."),
          host: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
          api_key: Optional[str] = typer.Option(None, help="Require this bearer token (default: env MEDTUNE_API_KEY)."),
          backend: Optional[str] = typer.Option(None, help="transformers (default) or vllm."),
          max_batch_size: Optional[int] = typer.Option(None, help="Most requests decoded together."),
          ) -> None:
    """OpenAI-compatible server: /v1/chat/completions (streaming or not), /v1/models, /health, /metrics."""
    run_server = _optional("medtune.serve", "serve")

    r = _recipe(recipe, list(sets or []) + _adapter_overrides(adapter),
                {"serve.model": model, "serve.host": host, "serve.port": port, "serve.api_key": api_key,
                 "serve.backend": backend, "serve.max_batch_size": max_batch_size})
    cfg = r.serve or ServeConfig()
    run_server(cfg if cfg.model else cfg.model_copy(update={"model": _default_model(r, recipe)}))


@app.command(epilog=_fields((WebConfig, "web")))
@friendly_errors
def web(recipe: Optional[Path] = RECIPE_ARG, sets: Optional[List[str]] = SET_OPT,
        model: Optional[str] = typer.Option(None, help="Local model dir, pack or hub id."),
        adapter: Optional[Path] = typer.Option(None, help="LoRA adapter for the local model."),
        endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL instead of a local model."),
        host: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
        ) -> None:
    """Web chat (gradio): streaming, multi-turn, system prompt, settings, safety banners."""
    launch_web = _optional("medtune.web", "launch_web")

    r = _recipe(recipe, sets, {"web.model": model, "web.adapter": adapter, "web.endpoint": endpoint,
                               "web.host": host, "web.port": port})
    cfg = r.web or WebConfig()
    if cfg.model is None and cfg.endpoint is None:
        cfg = cfg.model_copy(update={"model": _default_model(r, recipe)})
    launch_web(cfg)


@eval_app.command("safety")
def eval_safety(file: Optional[Path] = typer.Option(None, help="Labelled JSONL set (default: the shipped one)."),
                errors: bool = typer.Option(False, "--errors", help="List every misclassified item.")) -> None:
    """Precision and recall of the clinical red-flag detector per language (zh, ko, en)."""
    from medtune.safety import EVAL_SET, evaluate_safety

    report = evaluate_safety(file or EVAL_SET)
    table = Table(title=f"red-flag detection on {file or EVAL_SET}")
    for col in ("lang", "items", "TP", "FP", "FN", "TN", "precision", "recall", "category match"):
        table.add_column(col)
    for lang, r in report.items():
        table.add_row(lang, str(r["n"]), str(r["tp"]), str(r["fp"]), str(r["fn"]), str(r["tn"]),
                      f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['category_match']:.3f}")
    Console().print(table)
    for lang, r in report.items():
        for item_id, expected, got in r["errors"] if errors else []:
            Console().print(f"{item_id}: expected {expected or 'none'}, got {got or 'none'}")


def quiet_libraries() -> None:
    """Hide library progress bars and deprecation chatter; medtune prints its own progress and summaries."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main() -> None:
    """Console-script entry point."""
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
