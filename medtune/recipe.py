"""A recipe: one YAML file with shared settings and one section per stage, loaded with dotted
``--set`` overrides and resolved once.

A recipe is a YAML mapping::

    model: qwen2.5-coder-0.5b-instruct   # pack name, hub id, local dir or .gguf file
    output_dir: runs/quickstart
    seed: 42
    train: {train_file: examples/medical_qa.jsonl, max_steps: 60}
    merge: {}
    samples: {prompts: ["What is hypertension?"]}

:func:`load_recipe` validates it (unknown keys and wrong types are errors that name the key);
:func:`resolve` fills every default that depends on other sections (each stage's model, output
directory, seed, the data stage's files) in this one place, so the CLI, ``medtune run`` and
the eval stage all hand fully resolved configs to the stage functions.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from medtune.config import (ChatConfig, ExportConfig, MergeConfig, SamplesConfig, Section, ServeConfig,
                            TrainConfig, WebConfig)
from medtune.data.config import DataConfig
from medtune.errors import ConfigError
from medtune.eval.config import (AnswersConfig, EvalConfig, FactConfig, JudgeConfig, LmEvalConfig, McqConfig,
                                 RagEvalConfig, RubricConfig)
from medtune.index.config import IndexSource, RagConfig

# Where each stage writes under the recipe's output_dir (also the names `medtune run` prints).
STAGE_DIRS = {"data": "data", "rag": "index", "pretrain": "pretrain", "train": "adapter", "merge": "merged",
              "align": "align", "samples": "samples", "export": "export", "eval": "eval"}


class Recipe(Section):
    """A whole pipeline: shared settings plus one section per stage (absent = stage not run by
    ``medtune run``), and one section per evaluation command (``medtune eval mcq RECIPE`` reads ``mcq:``)."""

    model: str = Field("qwen2.5-coder-0.5b-instruct", description="Base model for every stage.")
    output_dir: Path = Field(Path("runs/default"), description="Root for every stage's outputs.")
    seed: int = Field(42, description="Seed for every stage.")
    data: DataConfig | None = None
    pretrain: TrainConfig | None = Field(None, description="Continued pre-training before `train` (objective pt unless set); `train` then starts from its merged model.")
    rag: RagConfig | None = None
    train: TrainConfig | None = None
    merge: MergeConfig | None = None
    align: TrainConfig | None = Field(None, description="Preference / RL tuning after `merge` (objective dpo unless set), starting from the merged SFT model; its adapter is merged into <output_dir>/align-merged.")
    samples: SamplesConfig | None = None
    chat: ChatConfig | None = None
    serve: ServeConfig | None = None
    web: WebConfig | None = None
    eval: EvalConfig | None = None
    export: ExportConfig | None = None
    mcq: McqConfig | None = None
    fact: FactConfig | None = None
    judge: JudgeConfig | None = None
    answers: AnswersConfig | None = None
    rag_eval: RagEvalConfig | None = None
    lm_eval: LmEvalConfig | None = None
    rubric: RubricConfig | None = None

    def stage_dir(self, stage: str) -> Path:
        """``<output_dir>/<dir>`` of a stage (``train`` -> ``adapter``, ``merge`` -> ``merged`` ...)."""
        return self.output_dir / STAGE_DIRS[stage]


def data_stage_files(recipe: Recipe) -> dict:
    """``train_file`` / ``validation_file`` taken from the data stage's outputs when the recipe has a
    ``data`` section and ``train`` does not name its own files."""
    update = {}
    train = recipe.train
    if recipe.data is not None and train is not None and "train_file" not in train.model_fields_set:
        data_dir = recipe.data.output_dir or recipe.stage_dir("data")
        update["train_file"] = data_dir / "train.jsonl"
        if train.validation_file is None and recipe.data.validation_fraction > 0:
            update["validation_file"] = data_dir / "validation.jsonl"
    return update


def _chained(recipe: Recipe, t: TrainConfig, stage: str, objective: str, start: str) -> TrainConfig:
    """A training section of a chain with its defaults: objective, model (``start``), output dir, seed."""
    return t.model_copy(update={"objective": t.objective if "objective" in t.model_fields_set else objective,
                                "model": t.model or start, "output_dir": t.output_dir or recipe.stage_dir(stage),
                                "seed": t.seed if "seed" in t.model_fields_set else recipe.seed})


def pretrained_model(recipe: Recipe) -> str:
    """The model the pretrain stage leaves: its merged adapter, or its output itself for full fine-tuning."""
    pre = recipe.pretrain
    out = pre.output_dir or recipe.stage_dir("pretrain")
    return str(out) if pre.method == "full" else str(recipe.output_dir / "pretrain-merged")


def rag_sources(recipe: Recipe) -> list:
    """The data section's guideline and kb sources, as index sources (the ``rag`` section names none)."""
    keep = ("path", "type", "encoding", "language", "max_chars", "overlap_chars")
    return [IndexSource(**{k: getattr(s, k) for k in keep}) for s in (recipe.data.sources if recipe.data else [])
            if s.type in ("guideline", "kb")]


def _default_model(recipe: Recipe, prefer_merged: bool) -> str:
    merged = recipe.stage_dir("merge")
    return str(merged) if prefer_merged and merged.is_dir() else recipe.model


def resolve(recipe: Recipe, create: tuple[str, ...] = (), prefer_merged: bool = False) -> Recipe:
    """Fill every cross-section default once and return a new recipe.

    - ``data.output_dir`` -> ``<output_dir>/data``;
    - ``train.model`` -> the recipe's ``model``; ``train.output_dir`` -> ``<output_dir>/adapter``;
      ``train.seed`` -> the recipe's ``seed`` unless set; ``train_file`` / ``validation_file``
      -> the data stage's outputs when the recipe has a ``data`` section and names no files;
    - ``pretrain``: ``objective`` -> ``pt`` unless set; model, output dir (``<output_dir>/pretrain``) and seed
      as for ``train``; ``train.model`` -> the pretrain stage's merged model (``<output_dir>/pretrain-merged``);
    - ``merge.adapter`` -> ``<output_dir>/adapter``; ``merge.output_dir`` -> ``<output_dir>/merged``;
    - ``align``: ``objective`` -> ``dpo`` unless set; ``model`` -> ``<output_dir>/merged`` when the recipe
      merges (else the recipe's ``model``); output dir ``<output_dir>/align``; seed as for ``train``;
      ``train_file`` -> the data stage's ``pairs.jsonl`` (from ``safety-pairs`` and ``pairwise-judge``) when unset;
    - ``rag.index_dir`` -> ``<output_dir>/index``; ``rag.sources`` -> the data section's guideline/kb sources;
    - ``chat`` / ``serve`` / ``web`` ``model`` (when no adapter or endpoint is given) -> the merged
      model when ``prefer_merged`` and it exists, else the recipe's ``model``; their ``rag.index``
      -> ``rag.index_dir`` when the recipe has a ``rag`` section, and so does ``eval.rag_index``.
    - ``export.model`` -> ``<output_dir>/merged`` when the recipe merges (or ``prefer_merged`` and it
      exists), else the recipe's ``model``; ``export.output_dir`` -> ``<output_dir>/export``;
      ``export.prompts`` -> ``samples.prompts`` when the recipe has samples and export names none.

    Args:
        recipe: a validated recipe.
        create: sections to create with defaults when absent (the stage a command runs).
        prefer_merged: chat/serve/web default to ``<output_dir>/merged`` when it exists.

    Returns:
        A copy; the input is not changed.
    """
    r = recipe.model_copy(update={name: Recipe.model_fields[name].annotation.__args__[0]()
                                  for name in create if getattr(recipe, name) is None})
    up: dict[str, Any] = {}
    if r.data is not None:
        up["data"] = r.data.model_copy(update={"output_dir": r.data.output_dir or r.stage_dir("data")})
    if r.pretrain is not None:
        up["pretrain"] = _chained(r, r.pretrain, "pretrain", "pt", r.model)
    if r.train is not None:
        start = pretrained_model(r) if r.pretrain is not None else r.model
        up["train"] = _chained(r, r.train, "train", "sft", start).model_copy(update=data_stage_files(r))
    if r.align is not None:
        up["align"] = _chained(r, r.align, "align", "dpo", str(r.stage_dir("merge")) if r.merge is not None else r.model)
        if "train_file" not in r.align.model_fields_set and r.data is not None:  # the data stage's safety pairs
            up["align"] = up["align"].model_copy(update={"train_file": up["data"].output_dir / "pairs.jsonl"})
    if r.merge is not None:
        up["merge"] = r.merge.model_copy(update={"adapter": r.merge.adapter or r.stage_dir("train"),
                                                 "output_dir": r.merge.output_dir or r.stage_dir("merge")})
    if r.rag is not None:
        up["rag"] = r.rag.model_copy(update={"index_dir": r.rag.index_dir or r.stage_dir("rag"),
                                             "sources": r.rag.sources or rag_sources(r)})
    if r.eval is not None and r.rag is not None and r.eval.rag_index is None:
        up["eval"] = r.eval.model_copy(update={"rag_index": up["rag"].index_dir})
    for name in ("chat", "serve", "web"):
        cfg = getattr(r, name)
        if cfg is not None and cfg.model is None and not getattr(cfg, "adapter", None) and not getattr(cfg, "endpoint", None):
            cfg = up[name] = cfg.model_copy(update={"model": _default_model(r, prefer_merged)})
        if cfg is not None and r.rag is not None and cfg.rag.index is None:
            up[name] = cfg.model_copy(update={"rag": cfg.rag.model_copy(update={"index": up["rag"].index_dir})})
    if r.export is not None:
        e = r.export
        model = e.model or (str(r.stage_dir("merge")) if r.merge is not None and not e.adapter
                            else _default_model(r, prefer_merged))
        prompts = r.samples.prompts if r.samples is not None and "prompts" not in e.model_fields_set else e.prompts
        up["export"] = e.model_copy(update={"model": model, "output_dir": e.output_dir or r.stage_dir("export"),
                                            "prompts": prompts})
    return r.model_copy(update=up)


def _target_annotation(path: list[str]) -> Any:
    """The type annotation of the recipe field at dotted ``path`` (None when it is not a model field)."""
    model, ann = Recipe, None
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return ann


def _takes_text(ann: Any) -> bool:
    """True when a field of annotation ``ann`` holds text (str, Path, or a Literal of strings), alone or with None."""
    import typing

    if ann in (str, Path):
        return True
    if typing.get_origin(ann) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(ann))
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    return typing.get_origin(ann) in (typing.Union, __import__("types").UnionType) and len(args) == 1 and _takes_text(args[0])


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"train.learning_rate=2e-4"`` into ``(["train", "learning_rate"], "2e-4")``.

    A value for a text field (str, Path or a Literal of strings, e.g. ``chat.safety.disclaimer``)
    is kept exactly as typed: ``off``/``no``/``yes``/``on``/``1e-4`` stay strings (YAML 1.1 would
    read them as booleans or numbers); ``null`` or ``~`` is None only when the field is optional.
    Other values are parsed as YAML when that gives a list, mapping, bool, number or null; the rest
    stay strings and pydantic converts them to the field's type.

    Raises:
        ConfigError: if the item has no ``=`` or an empty key.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=2e-4")
    path = key.strip().split(".")
    ann = _target_annotation(path)
    if ann is not None and _takes_text(ann):
        optional = type(None) in getattr(ann, "__args__", ())
        return path, None if optional and raw.strip() in ("null", "~") else raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) or (value is None and raw.strip() not in ("null", "~", "")):
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each ``KEY=VALUE`` override set at its dotted path."""
    data = yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) if data else {}
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = node[part]
        node[path[-1]] = value
    return data


def _describe(err: dict, source: str) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = Recipe
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part))
            ann = getattr(field, "annotation", None)
            parent = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if parent is None:
                break
        known = list(parent.model_fields) if parent else []
        hint = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(known)})"
        return f"{source}: unknown key {loc!r}{extra}"
    return f"{source}: {loc}: {err['msg']} (got {err.get('input')!r})"


def load_recipe(path: Path | str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or defaults when ``path`` is None) and apply dotted overrides.

    Args:
        path: YAML file; None starts from an empty recipe.
        overrides: ``KEY=VALUE`` strings, e.g. ``["train.learning_rate=2e-4", "model=smollm2-135m-instruct"]``.

    Returns:
        The validated :class:`Recipe`.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key or wrong type; the message names
            the file and the dotted key.
    """
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a recipe must be a YAML mapping, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + --set"
    return validate_recipe(data, source)


def validate_recipe(data: dict, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (as read from YAML).

    Raises:
        ConfigError: one line per problem, ``<source>: <dotted key>: <what is wrong> (got ...)``, an
            unknown key with the closest known one.
    """
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_describe(err, source) for err in e.errors())) from None


def field_help(model: type[BaseModel], prefix: str, values: BaseModel | None = None) -> str:
    """Render ``model``'s fields as help lines ``prefix.field = default  -- description`` (click keeps ``\\b`` blocks unwrapped).

    Args:
        values: an instance whose values are shown instead of the class defaults (a nested section's
            ``default_factory`` may set its own, e.g. ``fact.generation.max_new_tokens = 64``).
    """
    lines = ["\b"]
    for name, f in model.model_fields.items():
        default = f.default if f.default_factory is None else f.default_factory()
        default = getattr(values, name) if values is not None else default
        if isinstance(default, BaseModel):
            lines.append(field_help(type(default), _key(prefix, name), default).removeprefix("\b\n"))
        elif not (default is None and name in Recipe.model_fields and model is Recipe and name != "model"):
            shown = "(required)" if f.is_required() and values is None else str(default) if isinstance(default, Path) else repr(default)
            lines.append(f"  {_key(prefix, name)} = {shown}  -- {f.description or ''}")
    return "\n".join(lines)


def _key(prefix: str, name: str) -> str:
    """The dotted key ``--set`` takes (a recipe's own fields have no prefix: ``--set output_dir=...``)."""
    return f"{prefix}.{name}" if prefix else name
