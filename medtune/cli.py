"""The ``medtune`` command line: one subcommand per library function, nothing else.

| subcommand               | function                                  | recipe section |
|--------------------------|-------------------------------------------|----------------|
| ``models list``          | :func:`medtune.models.pack_status`        |                |
| ``models prepare NAME``  | :func:`medtune.models.prepare_pack`       |                |
| ``data build RECIPE``    | :func:`medtune.data.build.build_data`     | ``data``       |
| ``index build [RECIPE]`` | :func:`medtune.index.build.build_index`     | ``rag``        |
| ``train [RECIPE]``       | :func:`medtune.train.objectives.run_training` | ``train``  |
| ``merge [RECIPE]``       | :func:`medtune.merge.merge_adapter`       | ``merge``      |
| ``chat [RECIPE]``        | :func:`medtune.chat.chat`                 | ``chat``       |
| ``serve [RECIPE]``       | :func:`medtune.serve.serve` (:func:`medtune.gateway.serve_gateway` with ``--upstream``) | ``serve`` |
| ``web [RECIPE]``         | :func:`medtune.web.launch_web`            | ``web``        |
| ``studio``               | :func:`medtune.studio.app.launch_studio`  | (all, in a page) |
| ``export [RECIPE]``      | :func:`medtune.export.stage.export_model` | ``export``     |
| ``run RECIPE``           | :func:`medtune.run.run_recipe`            | all stages     |
| ``eval mcq [RECIPE]``    | :func:`medtune.eval.mcq.run_mcq`          | ``mcq``        |
| ``eval fact [RECIPE]``   | :func:`medtune.eval.fact.run_fact`        | ``fact``       |
| ``eval rag [RECIPE]``    | :func:`medtune.eval.rag.run_rag_eval`     | ``rag_eval``   |
| ``eval judge [RECIPE]``  | :func:`medtune.eval.judge.run_judge`      | ``judge``      |
| ``eval answers [RECIPE]``| :func:`medtune.eval.answers.run_answers`  | ``answers``    |
| ``eval lm-eval [RECIPE]``| :func:`medtune.eval.harness.run_lm_eval`  | ``lm_eval``    |
| ``eval rubric [RECIPE]`` | :func:`medtune.eval.rubric.run_rubric`    | ``rubric``     |
| ``eval report RUNS...``  | :func:`medtune.eval.report.write_report`  |                |
| ``eval safety``          | :func:`medtune.safety.evaluate_safety`    |                |
| ``eval safety --model``  | :func:`medtune.eval.guarded.run_guarded`  |                |
| ``safety train``         | :func:`medtune.safety.train_classifier`       |            |

Every stage command is made the same way (:func:`_stage_command`): an optional YAML recipe,
``--set SECTION.FIELD=VALUE`` overrides, and one option per field of the section's config
(``--learning-rate``, ``--max-items`` ...) generated from the pydantic model, whose field
description is the option's help. An option is just a shorter ``--set``; the recipe is then
resolved once (:func:`medtune.recipe.resolve`) and the section handed to the function.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Callable, List, Optional

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medtune.config import ChatConfig, ExportConfig, MergeConfig, ServeConfig, TrainConfig, WebConfig
from medtune.data.config import DataConfig, FilterConfig, SourceConfig
from medtune.embed import engine as encoder_engine
from medtune.errors import EXIT_PREEMPTED, ConfigError, MedtuneError, TrainingPreempted
from medtune.eval.config import AnswersConfig, FactConfig, JudgeConfig, LmEvalConfig, McqConfig, RagEvalConfig, RubricConfig
from medtune.llm import LLMConfig
from medtune.index.config import IndexSource, RagConfig
from medtune.recipe import Recipe, field_help, load_recipe, resolve
from medtune.studio.config import StudioConfig

app = typer.Typer(help="medtune: medical sources -> instruction data -> LoRA/QLoRA fine-tuning -> merge -> chat.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
models_app = typer.Typer(help="Offline model packs.", no_args_is_help=True)
data_app = typer.Typer(help="Build instruction data from medical sources.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models: multiple-choice benchmarks, fact recall, LLM-as-judge, answers, report.",
                       no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="Retrieval index over guidelines and knowledge bases (chat/serve/web --index DIR).",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
safety_app = typer.Typer(help="Clinical safety layer: the learned red-flag classifier.", no_args_is_help=True)
app.add_typer(safety_app, name="safety")
err = Console(stderr=True)
ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate_configs"
SCALARS = (str, int, float, bool, Path)


def friendly_errors(fn):
    """Print medtune's own errors (and config validation errors) as one paragraph and exit 2, no traceback;
    a training run stopped by a signal (checkpoint saved) exits with :data:`medtune.errors.EXIT_PREEMPTED`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        code = 2
        try:
            encoder_engine()  # a typo in MEDTUNE_E5_ENGINE fails here, not at a server's first request
            return fn(*args, **kwargs)
        except TrainingPreempted as e:
            if os.environ.get("RANK", "0") != "0":  # one message per run: rank 0's (the launcher adds the command)
                raise typer.Exit(e.exit_code) from None
            message, code = str(e), e.exit_code
        except (MedtuneError, FileNotFoundError) as e:
            message = str(e)
        except ValidationError as e:
            message = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        label = "stopped:" if code == EXIT_PREEMPTED else "error:"
        err.print(f"[bold red]{label}[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code)

    return wrapper


# ----------------------------------------------------------------------------- generated options


def _option_type(annotation) -> tuple[type, str] | None:
    """``(click-level type, kind)`` for a field annotation; kind is ``scalar``, ``list`` (of
    scalars), ``dict`` or ``yaml`` (a union such as ``Path | list[Path]``: the value is read as
    YAML, like ``--set``); None when the field cannot be an option (nested models, lists of them)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
        kinds = [_option_type(a) for a in inner]
        return (str, "yaml") if all(kinds) else None
    if origin is typing.Literal:
        return str, "scalar"
    if origin is list:
        return (str, "list") if args and (args[0] in SCALARS or typing.get_origin(args[0]) is typing.Literal) else None
    if origin is dict:
        return str, "dict"
    return (annotation, "scalar") if annotation in SCALARS else None


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, type, str, str]]:
    """``(option name, dotted field, type, kind, help)`` for every option of ``model``; nested
    sections (e.g. ``generation``) are flattened: ``--temperature`` -> ``generation.temperature``."""
    out, names = [], set(model.model_fields)
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for opt, dotted, typ, kind, hlp in _fields(ann):
                bare = name == "generation" and opt not in names
                out.append((opt if bare else f"{name}_{opt}", f"{name}.{dotted}", typ, kind, hlp))
            continue
        spec = _option_type(ann)
        if spec:
            out.append((name, prefix + name, spec[0], spec[1], f.description or ""))
    return out


def _overrides(section: str, values: dict, fields: list) -> list[str]:
    """``--set`` strings for the options the user gave."""
    sets = []
    for opt, dotted, _typ, kind, _h in fields:
        v = values.get(opt)
        if v is None or v == []:
            continue
        key = f"{section}.{dotted}" if section else dotted
        if kind == "list":
            items = [x.strip() for item in v for x in str(item).split(",") if x.strip()]
            sets.append(f"{key}={json.dumps(items, ensure_ascii=False)}")
        elif kind == "dict":
            for item in v:
                k, sep, val = str(item).partition("=")
                if not sep or not k.strip():
                    raise ConfigError(f"--{opt.replace('_', '-')} {item!r}: expected KEY=VALUE")
                sets.append(f"{key}.{k.strip()}={val.strip()}")
        else:
            sets.append(f"{key}={v}")
    return sets


def _stage_command(group: typer.Typer, name: str, section: str, model: type[BaseModel], run: Callable,
                   aliases: dict[str, list[str]] | None = None, extra: dict[str, tuple[type, object]] | None = None,
                   positional: str | None = None, help: str = "") -> None:
    """Register ``name`` on ``group``: ``[RECIPE] [--set ...] [--<field> ...] [extra options]``.

    Args:
        section: the recipe section the options write to (``""``: top level).
        model: the section's config class; every scalar, list or dict field becomes an option.
        run: ``run(recipe_path, recipe, **extra_values)``: loads nothing itself.
        aliases: older or shorter option names per field (``{"column_map": ["--map"]}``).
        extra: options that are not config fields, ``{name: (type, typer.Option(...))}``.
        positional: a field that a non-YAML first argument fills (``data``: ``eval mcq bench.csv``).
    """
    fields, aliases, extra = _fields(model), aliases or {}, extra or {}
    params = [inspect.Parameter("recipe", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                                default=typer.Argument(None, help="YAML recipe (optional)" + (
                                    f"; or the {positional} file itself" if positional else "") + ".")),
              inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[str]],
                                default=typer.Option(None, "--set", help=f"Override any field: --set {section or 'train'}.FIELD=VALUE (repeatable)."))]
    for opt, dotted, typ, kind, hlp in fields:
        flags = [f"--{opt.replace('_', '-')}", *aliases.get(opt, [])]
        if kind == "scalar" and typ is bool:
            flags = [f"{flags[0]}/--no-{opt.replace('_', '-')}", *flags[1:]]
        many = kind in ("list", "dict")
        hint = " (repeatable)" if kind == "list" else " KEY=VALUE (repeatable)" if kind == "dict" else ""
        params.append(inspect.Parameter(opt, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[str]] if many else Optional[typ],
                                        default=typer.Option(None, *flags, help=hlp + hint, show_default=False)))
    for opt, (typ, default) in extra.items():
        params.append(inspect.Parameter(opt, inspect.Parameter.KEYWORD_ONLY, annotation=typ, default=default))

    def command(recipe=None, sets=None, **values):
        is_recipe = recipe is not None and recipe.suffix.lower() in (".yaml", ".yml")
        pre = [] if is_recipe or recipe is None else _positional(recipe, positional, section)
        own = {k: values.pop(k) for k in list(values) if k in extra}
        r = load_recipe(recipe if is_recipe else None, pre + list(sets or []) + _overrides(section, values, fields))
        return run(recipe if is_recipe else None, r, **own)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    epilog = "Fields (use with --set):\n\n" + field_help(model, section or "recipe")
    group.command(name, epilog=epilog, help=help)(friendly_errors(command))


def _positional(arg: Path, positional: str | None, section: str) -> list[str]:
    if positional is None:
        raise ConfigError(f"{arg}: expected a YAML recipe (.yaml or .yml)")
    return [f"{section}.{positional}={arg}"]


# ----------------------------------------------------------------------------- models


@models_app.command("list")
def models_list() -> None:
    """List offline packs: installed?, converted to the cache?, size, licence."""
    from medtune.models import PACKS, medtune_home, pack_status

    console = Console()
    console.print(f"medtune model packs (cache: {medtune_home() / 'models'})")
    table = Table(show_edge=False, pad_edge=False)
    for col, ratio in (("name", None), ("installed", None), ("cached", None), ("GiB", None), ("licence", None)):
        table.add_column(col, no_wrap=True, ratio=ratio)
    for pack in PACKS.values():
        s = pack_status(pack)
        table.add_row(s["name"], "yes" if s["installed"] else "no", "yes" if s["cached"] else "no",
                      str(s["size_gib"]), s["licence"])
    console.print(table)
    for pack in PACKS.values():
        console.print(f"  {pack.name}: {pack_status(pack)['description']}", highlight=False)


@models_app.command("prepare")
@friendly_errors
def models_prepare(name: str = typer.Argument(..., help="Pack name, see `medtune models list`.")) -> None:
    """Check a pack's sha256 and convert it once to a cached safetensors model directory."""
    from medtune.models import prepare_pack

    Console().print(f"{name}: ready at {prepare_pack(name)}")


# ----------------------------------------------------------------------------- stages


def _run_data(path: Optional[Path], r: Recipe) -> None:
    from medtune.data.build import build_data

    if r.data is None:
        raise ConfigError(f"{path or 'the recipe'}: no `data:` section (see `medtune data build --help`)")
    build_data(resolve(r).data, seed=r.seed)


def _index_source(spec: str) -> IndexSource:
    """``[guideline:|kb:]PATH``; without a prefix a .json/.jsonl/.csv file, or a path through a ``kb`` folder, is a kb."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("guideline", "kb"):
        return IndexSource(path=Path(rest), type=kind)
    p = Path(spec)
    return IndexSource(path=p, type="kb" if p.suffix.lower() in (".json", ".jsonl", ".csv") or "kb" in p.parts else "guideline")


def _run_index(path: Optional[Path], r: Recipe, source: Optional[List[str]] = None) -> None:
    from medtune.run import build_index_from_sources

    if source:
        r = r.model_copy(update={"rag": (r.rag or RagConfig()).model_copy(update={"sources": [_index_source(s) for s in source]})})
    cfg = resolve(r, create=("rag",)).rag
    if not cfg.sources:
        raise ConfigError(f"{path or 'medtune index build'}: nothing to index; give --source PATH (repeatable) "
                          "or a recipe with rag.sources or guideline/kb data.sources")
    stats = build_index_from_sources(cfg)
    dropped = f", {stats['rejected']} records rejected by the readers ({stats['rejects_file']})" if stats["rejected"] else ""
    err.print(f"index {cfg.index_dir}: {stats['passages']} passages ({stats['embedded']} embedded, "
              f"{stats['reused']} reused) in {stats['seconds']} s{dropped}", markup=False)
    for file, reason in stats["skipped"]:
        err.print(f"  skipped {file}: {reason}", markup=False, highlight=False)


def _run_train(path: Optional[Path], r: Recipe, launcher: str = "none",
               config_file: Optional[str] = None) -> None:
    from medtune.train.objectives import run_training

    cfg = resolve(r, create=("train",)).train
    try:
        if launcher == "accelerate":
            raise typer.Exit(_launch_accelerate(config_file, cfg))
        run_training(cfg)
    except TrainingPreempted as e:
        if launcher == "accelerate" or "LOCAL_RANK" not in os.environ:  # not a launched rank: this is the user's command
            e.resume_command = resume_command([] if "--resume" in sys.argv else ["--resume"])
        raise


def resume_command(extra: list[str]) -> str:
    """The command line of this process (as ``medtune ...``) plus ``extra``: what resumes a stopped run."""
    import shlex

    return shlex.join(["medtune", *sys.argv[1:], *extra])


def _refuse_fsdp_on_cpu(path: Path) -> None:
    """FSDP needs an accelerator: accelerate 1.16 would run an FSDP config on CPUs as plain DDP, silently.

    Raises:
        ConfigError: ``distributed_type: FSDP`` in ``path`` on a machine without CUDA.
    """
    import yaml

    kind = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("distributed_type")
    if kind == "FSDP" and not _cuda():
        raise ConfigError(f"{path}: FSDP needs GPUs (accelerate takes its FSDP path only for accelerator devices and "
                          "would run this config on CPUs as plain DDP); here use --config-file cpu2 (DDP over gloo) or "
                          "zero2/zero3 (DeepSpeed's CPU accelerator)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _launch_accelerate(config_file: Optional[str], cfg: TrainConfig) -> int:
    """Re-run this ``medtune train`` command under ``accelerate launch`` with the given config.

    The mixed precision of the launch follows ``train.bf16`` / ``train.fp16`` (the shipped configs'
    own ``mixed_precision`` is overridden). SIGTERM/SIGINT sent to this process is passed once to
    the launcher, which passes it to every rank (each saves its shard, see
    :mod:`medtune.train.checkpoints`); the launcher waits ``train.preemption_grace_s`` + 30 s for
    them (torchrun's ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``; no limit given: 24 h) before SIGKILL.

    Returns:
        The launcher's exit status.

    Raises:
        TrainingPreempted: the ranks stopped on a signal after saving (``preempted.json`` written
            during this launch), so the exit status is :data:`EXIT_PREEMPTED`.
    """
    import time

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
    _refuse_fsdp_on_cpu(path)
    precision = "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "no"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "--mixed_precision", precision,
           "-m", "medtune", "train", *args]
    err.print("[bold]launching:[/] " + " ".join(cmd))
    wait_s = int(cfg.preemption_grace_s) + 30 if cfg.preemption_grace_s else 86400
    started = time.time()
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(wait_s)}
    if not _cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (zero2/zero3 configs without a GPU)
    rc = _run_forwarding_signals(cmd, env)
    marker = Path(cfg.output_dir) / "preempted.json"
    if rc != 0 and marker.is_file() and marker.stat().st_mtime >= started:
        info = json.loads(marker.read_text(encoding="utf-8"))
        raise TrainingPreempted(info["checkpoint"], info["step"], info["signal"])
    return rc


def _run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run ``cmd`` in its own session; pass the first SIGTERM/SIGINT this process gets on to it, once.

    Its own session keeps a terminal's Ctrl-C from reaching the launcher twice (directly and from us).

    Returns:
        Its exit status.
    """
    import signal

    proc, got = subprocess.Popen(cmd, env=env, start_new_session=True), []

    def forward(signum, frame):
        if not got:
            proc.send_signal(signum)
        got.append(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _run_merge(path: Optional[Path], r: Recipe) -> None:
    from medtune.merge import merge_adapter

    merge_adapter(resolve(r, create=("merge",)).merge)


def _run_chat(path: Optional[Path], r: Recipe, prompt: Optional[str] = None) -> None:
    from medtune.chat import chat as run_chat

    run_chat(resolve(r, create=("chat",), prefer_merged=path is not None).chat, prompt=prompt)


def _optional(module: str, name: str):
    """Import ``module.name`` whose extra may be missing; a missing extra raises ConfigError with the install hint."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(str(e)) from None


def _run_serve(path: Optional[Path], r: Recipe) -> None:
    cfg = resolve(r, create=("serve",), prefer_merged=path is not None).serve
    if cfg.upstream:  # gateway mode: the clinical layer in front of another OpenAI-compatible server
        _optional("medtune.gateway", "serve_gateway")(cfg)
    else:
        _optional("medtune.serve", "serve")(cfg)


def _run_web(path: Optional[Path], r: Recipe) -> None:
    _optional("medtune.web", "launch_web")(resolve(r, create=("web",), prefer_merged=path is not None).web)


def _run_export(path: Optional[Path], r: Recipe) -> None:
    from medtune.run import export_merged

    given = r.export.model_fields_set if r.export is not None else set()
    cfg = resolve(r, create=("export",), prefer_merged=path is not None).export
    if path is None and "output_dir" not in given:  # no recipe: next to the model (or the adapter)
        source = Path(str(cfg.adapter or cfg.model))
        cfg = cfg.model_copy(update={"output_dir": source.with_name(source.name + "-gguf") if source.exists()
                                     else Path(source.name + "-gguf")})
    export_merged(cfg, base_given="model" in given)  # base + adapter: merged first, then exported


_DATA_HELP = "\n\n".join(field_help(m, p) for m, p in ((SourceConfig, "data.sources[i]"), (LLMConfig, "data.teacher"),
                                                       (FilterConfig, "data.filters")))
_stage_command(data_app, "build", "data", DataConfig, _run_data,
               help="Read sources, generate QA pairs, filter, and write train/validation JSONL, stats.json and a data card.\n\n"
                    "Nested fields (use with --set):\n\n" + _DATA_HELP)
_stage_command(index_app, "build", "rag", RagConfig, _run_index,
               extra={"source": (Optional[List[str]], typer.Option(None, "--source", help="[guideline:|kb:]PATH to index (repeatable); replaces rag.sources."))},
               help="Build (or update: only changed passages are re-embedded) a BM25 + e5 index over guideline and KB passages.")
_stage_command(app, "train", "train", TrainConfig, _run_train,
               extra={"launcher": (str, typer.Option("none", help="'none' (this process) or 'accelerate' (multi-GPU / multi-node).")),
                      "config_file": (Optional[str], typer.Option(None, help="accelerate config: a path or a shipped name (ddp, fsdp, zero2, zero3, cpu2)."))},
               help="Train a model: --objective sft (default), pt, dpo, kto, orpo or grpo, through --method lora (default), qlora or full. See docs/training.md.")
_stage_command(app, "merge", "merge", MergeConfig, _run_merge,
               help="Merge a LoRA adapter into its base and check adapter-vs-merged logit parity.")
_stage_command(app, "chat", "chat", ChatConfig, _run_chat, aliases={"rag_index": ["--index"]},
               extra={"prompt": (Optional[str], typer.Option(None, help="Answer this one message and exit (non-interactive)."))},
               help="Chat with a model: interactive (/reset, /exit) or one-shot with --prompt.")
_stage_command(app, "serve", "serve", ServeConfig, _run_serve, aliases={"adapters": ["--adapter"], "rag_index": ["--index"]},
               help="OpenAI-compatible server: /v1/chat/completions (streaming or not), /v1/models, /health, /metrics. "
                    "With --upstream URL (gateway mode) it loads no model and adds the safety layer, retrieval, keys, "
                    "limits and metrics in front of another OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama).")
_stage_command(app, "web", "web", WebConfig, _run_web, aliases={"rag_index": ["--index"]},
               help="Web chat (gradio): streaming, multi-turn, system prompt, settings, safety banners.")
_stage_command(app, "export", "export", ExportConfig, _run_export, positional="model",
               help="Export to GGUF (f16, q8_0, q4_k_m) or Ollama with llama.cpp's converter and quantizer; "
                    "checks greedy parity with transformers (parity.json) and writes a model card.")


@app.command(epilog="Fields (use with --set):\n\n" + field_help(Recipe, ""))
@friendly_errors
def run(recipe: Path = typer.Argument(..., help="YAML recipe."),
        sets: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set train.learning_rate=2e-4 (repeatable)."),
        force: bool = typer.Option(False, "--force", help="Redo stages even when up to date."),
        only: Optional[List[str]] = typer.Option(None, "--only", help="Run only these stages (repeatable)."),
        ) -> None:
    """Run a recipe's stages in order (data -> pretrain -> train -> merge -> align -> samples -> eval), skipping up-to-date ones."""
    from medtune.run import run_recipe

    r = load_recipe(recipe, sets)
    try:
        run_recipe(r, force=force, only=only)
    except TrainingPreempted as e:
        e.resume_command = resume_command(["--set", f"{getattr(e, 'stage', 'train')}.resume=true"])
        raise
    merged = r.stage_dir("merge")
    if merged.is_dir():
        print(f"\nChat with the result:\n  medtune chat --model {merged}\n"
              f"  medtune chat --model {merged} --prompt \"What is hypertension?\"")
        if not r.stage_dir("export").is_dir():
            print(f"Export it for llama.cpp / Ollama / LM Studio (needs pip install 'medtune[gguf]'):\n"
                  f"  medtune export {merged} --quant q8_0 --format ollama --output-dir {r.stage_dir('export')}")


def _studio_help(name: str) -> str:
    return StudioConfig.model_fields[name].description


@app.command()
@friendly_errors
def studio(host: str = typer.Option("127.0.0.1", help=_studio_help("host")),
           port: int = typer.Option(7870, help=_studio_help("port")),
           workdir: Path = typer.Option(Path("runs"), help=_studio_help("workdir")),
           auth: Optional[str] = typer.Option(None, help=_studio_help("auth")),
           max_upload_mb: float = typer.Option(20.0, help=_studio_help("max_upload_mb")),
           read_root: Optional[List[Path]] = typer.Option(None, "--read-root", help=_studio_help("read_roots")
                                                         + " Repeatable; default: examples.")) -> None:
    """The whole pipeline in a local web page: recipe form, data browser, training with live curves, stop and
    resume, evaluation reports side by side, base vs fine-tuned chat. See docs/studio.md."""
    from medtune.studio.access import check_bind

    cfg = StudioConfig(host=host, port=port, workdir=workdir, auth=auth, max_upload_mb=max_upload_mb,
                       **({"read_roots": read_root} if read_root else {}))
    check_bind(cfg.host, cfg.auth)  # before gradio is imported: a refusal is immediate
    err.print(f"medtune studio: http://{cfg.host}:{cfg.port}/  (work dir {cfg.workdir}; Ctrl-C stops)", markup=False)
    _optional("medtune.studio.app", "launch_studio")(cfg)


# ----------------------------------------------------------------------------- eval


def _eval_runner(section: str, module: str, function: str, command: str, needs: str) -> Callable:
    """The function behind ``medtune eval COMMAND``; without the section it names the options ``needs``."""
    def run_eval(path: Optional[Path], r: Recipe) -> None:
        import importlib

        cfg = getattr(r, section)
        if cfg is None:
            raise ConfigError(f"{path or 'no recipe'}: no `{section}:` section; give the file and {needs}, "
                              f"or a recipe with `{section}:` (see `medtune eval {command} --help`)")
        getattr(importlib.import_module(module), function)(cfg)

    return run_eval


_stage_command(eval_app, "mcq", "mcq", McqConfig, _eval_runner("mcq", "medtune.eval.mcq", "run_mcq", "mcq", "--model MODEL"),
               positional="data", aliases={"column_map": ["--map"], "encodings": ["--encoding"]},
               help="Score a model on a multiple-choice benchmark (accuracy with 95% CI, per subject, per item).")
_stage_command(eval_app, "rag", "rag_eval", RagEvalConfig,
               _eval_runner("rag_eval", "medtune.eval.rag", "run_rag_eval", "rag", "--index DIR"),
               positional="data", help="Retrieval quality of an index: recall@k and MRR per ranker, and a calibrated min_score.")
_stage_command(eval_app, "fact", "fact", FactConfig, _eval_runner("fact", "medtune.eval.fact", "run_fact", "fact", "--model MODEL"),
               positional="data", aliases={"rag_index": ["--index"], "encodings": ["--encoding"]},
               help="Knowledge-base fact recall: share of questions with >=1, >=1/2 and >=2/3 of expected items mentioned.")
_stage_command(eval_app, "judge", "judge", JudgeConfig,
               _eval_runner("judge", "medtune.eval.judge", "run_judge", "judge", "--judge SPEC --answer COLUMN"),
               positional="data", aliases={"answer_columns": ["--answer"]},
               help="LLM-as-judge: rubric scores, or A vs B judged in both orders (win/tie/loss, order inconsistency).")
_stage_command(eval_app, "answers", "answers", AnswersConfig,
               _eval_runner("answers", "medtune.eval.answers", "run_answers", "answers", "--model NAME=SPEC"),
               positional="data", aliases={"models": ["--model"]},
               help="Answer a prompt file with several models (one <name>_answer column each); resumable.")

_stage_command(eval_app, "lm-eval", "lm_eval", LmEvalConfig, _eval_runner("lm_eval", "medtune.eval.harness", "run_lm_eval", "lm-eval", "--tasks TASKS --model MODEL"),
               aliases={"tasks": ["--task"], "max_items": ["--limit"]},
               help="lm-evaluation-harness tasks (medqa_4options, kormedmcqa, mmlu clinical ...) on a model medtune loads; "
                    "results with the harness's stderr, beside medtune's MCQ in the report. Needs pip install 'medtune[lm-eval]'.")
_stage_command(eval_app, "rubric", "rubric", RubricConfig, _eval_runner("rubric", "medtune.eval.rubric", "run_rubric", "rubric", "--model MODEL"),
               positional="data",
               help="Rubric-graded conversations (HealthBench format): each criterion graded by a judge; HealthBench score "
                    "with a bootstrap interval, per tag, and the criteria most often missed.")


@eval_app.command("report")
@friendly_errors
def report(runs: List[Path] = typer.Argument(..., help="Directories holding results.json files (searched recursively)."),
           output: Path = typer.Option(Path("runs/eval/report.html"), help="HTML report path (markdown written beside it)."),
           title: str = typer.Option("medtune evaluation report", help="Report title."),
           answers_per_language: int = typer.Option(3, min=0, help="Answers per evaluation and language shown side by side in 'What the models said'."),
           seed: int = typer.Option(42, help="Seed of that sample of answers."),
           ) -> None:
    """One self-contained HTML (+ markdown) report: accuracy with error bars, judge scores, win rates, answers side by side."""
    from medtune.eval.report import write_report

    write_report(runs, output, title, answers_per_language, seed)


@eval_app.command("safety")
@friendly_errors
def eval_safety(file: Optional[Path] = typer.Option(None, help="One labelled JSONL set, or a folder whose *.jsonl files make "
                                                                "one set (e.g. a test set kept outside the repository); default: the "
                                                                "shipped rule set, the training validation split, the development sets "
                                                                "and the test sets; with --model: the test set."),
                classifier: bool = typer.Option(True, help="Also run the learned classifier (--no-classifier: rules only)."),
                errors: bool = typer.Option(False, "--errors", help="List every misclassified item."),
                model: Optional[str] = typer.Option(None, help="End to end: answer every message with this model (pack, "
                                                               "model dir, hub id; as `medtune chat --model`) through the safety layer."),
                adapter: Optional[Path] = typer.Option(None, help="LoRA adapter on --model (as `medtune chat --adapter`)."),
                max_items: Optional[int] = typer.Option(None, min=1, help="With --model: per language, at most this many "
                                                                          "red-flag and this many other messages."),
                max_new_tokens: Optional[int] = typer.Option(None, min=1, help="With --model: tokens generated after the "
                                                                               "urgent message, greedy (default 16)."),
                output: Optional[Path] = typer.Option(None, help="With --model: write results.json and predictions.jsonl here."),
                guard: bool = typer.Option(True, help="With --model: --no-guard measures the model alone (no safety layer, "
                                                      "no system prompt): the share of red-flag answers that open with "
                                                      "urgent-care advice in the message's language, and of other answers "
                                                      "that wrongly do."),
                backend: str = typer.Option("transformers", help="With --model: transformers, or llamacpp to run a .gguf "
                                                                 "file with llama.cpp as Ollama / LM Studio would (needs "
                                                                 "pip install 'medtune[gguf]').")) -> None:
    """Recall, precision and category agreement of the red-flag detector: rules, classifier and both, per language and category.

    Sets: the training validation split (thresholds are chosen here), the development set
    ``medtune/safety/data/dev/`` (scored during development, used to choose between approaches) and the
    test set ``medtune/safety/data/test/`` (written separately, scored once; skipped with a note when absent).

    With --model (or --adapter) the check is end to end instead (:func:`medtune.eval.guarded.run_guarded`):
    every message goes through the chat path (chat template, generation, safety layer) and the share of
    red-flag answers that begin with the urgent-care message, and of other answers that wrongly do, is reported.
    With --no-guard the model answers alone (as an exported GGUF or another engine serves it) and an answer
    counts when it opens with urgent-care advice in the message's language.
    """
    if backend not in ("transformers", "llamacpp"):
        raise ConfigError(f"--backend {backend!r}: choose transformers or llamacpp")
    if model or adapter:
        return _eval_safety_guarded(model, adapter, file, classifier, errors, max_items, max_new_tokens, output, guard, backend)
    if max_items or max_new_tokens or output or not guard or backend != "transformers":
        raise ConfigError("--max-items, --max-new-tokens, --output, --no-guard and --backend need --model (the end-to-end check)")
    from medtune.safety.evaluate import run_detection_eval

    run_detection_eval(file, classifier, errors)


def _eval_safety_guarded(model: str | None, adapter: Path | None, file: Path | None, classifier: bool, errors: bool,
                         max_items: int | None, max_new_tokens: int | None, output: Path | None, guard: bool = True,
                         backend: str = "transformers") -> None:
    from medtune.eval.guarded import print_guarded, run_guarded

    default_tokens = 16 if guard else 48  # unguarded, the model must write the opener itself
    result, rows = run_guarded(model, file, adapter, output, max_items, max_new_tokens or default_tokens, classifier, guard,
                               backend)
    print_guarded(result, rows, errors, output)


@safety_app.command("train")
@friendly_errors
def safety_train(files: List[Path] = typer.Argument(None, help="Labelled JSONL files (default: the shipped train_*.jsonl; "
                                                                "add your own file beside them to extend)."),
                 output: Path = typer.Option(None, help="Weights file (default: the shipped medtune/safety/data/classifier.npz)."),
                 seed: int = typer.Option(0, help="Seed of the 80/20 train/validation split.")) -> None:
    """Refit the learned red-flag classifier and write its weights; prints the validation thresholds and metrics."""
    from medtune.safety.classifier import WEIGHTS
    from medtune.safety.fit import train_classifier

    report = train_classifier(files or None, output or WEIGHTS, seed=seed)
    Console().print_json(json.dumps(report))


def quiet_libraries() -> None:
    """Hide library progress bars and deprecation chatter; medtune prints its own progress and summaries."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    # bitsandbytes' CPU backend tries an optional hub kernel on import (peft imports it) and warns when it
    # cannot have it; its own CPU kernels run instead, so the warning says nothing a user can act on.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main() -> None:
    """Console-script entry point."""
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
