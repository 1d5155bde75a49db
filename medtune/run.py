"""``medtune run RECIPE``: run a recipe's stages in order, each skipped when already up to date.

Stages and their directories under the recipe's ``output_dir``:

- ``data``     -> ``data/``     (train/validation JSONL with provenance, stats.json, data card)
- ``rag``      -> ``index/``    (optional: BM25 + e5 retrieval index over the guideline / kb sources)
- ``pretrain`` -> ``pretrain/`` (continued pre-training adapter; merged into ``pretrain-merged/``, where ``train`` starts)
- ``train``    -> ``adapter/``  (LoRA adapter or full model, tokenizer, training config and log)
- ``merge``    -> ``merged/``   (merged safetensors model + tokenizer + generation config)
- ``align``    -> ``align/``    (DPO/KTO/ORPO/GRPO adapter on the merged model; merged into ``align-merged/``)
- ``samples``  -> ``samples/``  (``samples.jsonl``: answers of the merged model to a few prompts)
- ``export``   -> ``export/``   (optional: GGUF files, parity.json, Modelfile, model card; needs medtune[gguf])
- ``eval``     -> ``eval/``     (base vs fine-tuned [vs aligned]: MCQ, fact recall (closed-book and, with an
  index, RAG), held-out perplexity, ``report.html``)

Every stage writes ``manifest.json`` (see :mod:`medtune.manifest`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medtune.errors import ConfigError, TrainingPreempted
from medtune.recipe import STAGE_DIRS, Recipe, resolve
from medtune.manifest import fingerprint, is_up_to_date, tree_digests, write_manifest
from medtune.models import model_identity

console = Console(stderr=True)


def _data(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    from medtune.data.build import build_data

    cfg = recipe.data
    inputs = {str(s.path): tree_digests(s.path) for s in cfg.sources}
    inputs.update({str(p): tree_digests(p) for p in cfg.filters.decontam_files})
    for extra in (cfg.templates, cfg.view_templates, cfg.prompts_dir, cfg.dialogue.seed_file if cfg.dialogue else None):
        if extra is not None:
            inputs[str(extra)] = tree_digests(extra)
    return cfg.model_dump(mode="json"), inputs, lambda: build_data(cfg, seed=recipe.seed)


def build_index_from_sources(cfg) -> dict:
    """Compose two stages: the data stage's readers give the passages, the rag stage indexes them.

    Args:
        cfg: a resolved :class:`medtune.index.config.RagConfig` (``sources`` and ``index_dir`` set).

    Returns:
        :func:`medtune.index.build.build_index`'s stats plus ``rejected`` (records the readers rejected),
        ``skipped`` (``[(file, reason)]`` of files not read at all) and ``rejects_file``
        (``<index_dir>/rejects.jsonl``, every reject located).

    Raises:
        ConfigError: the sources gave no passage (the message says how each source was read -- its
            type and how to choose the other --, its counts and first reject reasons, and the skipped files).
    """
    from medtune.data.build import read_source
    from medtune.data.config import SourceConfig
    from medtune.data.records import Tally, save_rejects
    from medtune.errors import ConfigError
    from medtune.index.build import build_index

    records, tallies = [], []
    for s in cfg.sources:
        tallies.append(Tally(f"index:{s.type}:{s.path}"))
        records += read_source(SourceConfig(**s.model_dump()), tallies[-1])
    skipped = [f for t in tallies for f in t.skipped_files()]
    if not any(r.text.strip() or r.fields for r in records):
        raise ConfigError("medtune index build: the sources gave no passages:\n  " + "\n  ".join(
            _source_report(s, t) for s, t in zip(cfg.sources, tallies)))
    try:
        stats = build_index(records, cfg)
    except ConfigError as e:
        if not skipped:
            raise
        raise ConfigError(f"{e}; files not read: " + "; ".join(f"{f} ({r})" for f, r in skipped[:10])) from None
    rejects = Path(cfg.index_dir) / "rejects.jsonl"
    save_rejects(tallies, rejects)
    return {**stats, "rejected": sum(sum(t.dropped.values()) for t in tallies), "skipped": skipped,
            "rejects_file": str(rejects)}


def _source_report(source, tally) -> str:
    """One line on what reading an index source gave: its type (and how to choose the other), counts,
    the first reasons and the files not read."""
    first: dict[str, str] = {}
    for r in tally.rejects:
        first.setdefault(r.reason, r.where)
    reasons = [f"{reason} ({tally.dropped[reason]}, first at {where})" for reason, where in list(first.items())[:3]]
    other = "guideline" if source.type == "kb" else "kb"
    what = "knowledge-base entries with a name field" if source.type == "kb" else "guideline text"
    return (f"{source.path}: read as {source.type} ({what}): {tally.kept} records, {sum(tally.dropped.values())} rejected"
            + (f"; first reasons: {'; '.join(reasons)}" if reasons else "")
            + f"; if it holds {other} {'entries' if other == 'kb' else 'passages'}, give --source {other}:{source.path}")


def _index(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    cfg = recipe.rag
    inputs = {str(s.path): tree_digests(s.path) for s in cfg.sources}
    return cfg.model_dump(mode="json"), inputs, lambda: build_index_from_sources(cfg)


def _train_inputs(cfg) -> dict:
    inputs = {"model": model_identity(cfg.model), "train_file": [tree_digests(f) for f in (
        cfg.train_file if isinstance(cfg.train_file, list) else [cfg.train_file])]}
    if cfg.validation_file:
        inputs["validation_file"] = tree_digests(cfg.validation_file)
    return inputs


def _train(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    from medtune.train.objectives import run_training

    cfg = recipe.train
    return cfg.model_dump(mode="json", exclude={"resume"}), _train_inputs(cfg), lambda: run_training(cfg)


def train_then_merge(cfg, merged: Path) -> dict:
    """Train ``cfg`` and merge its adapter into ``merged`` (a full fine-tune is already a whole model),
    so the next stage of a chain starts from one plain model directory."""
    from medtune.config import MergeConfig
    from medtune.merge import merge_adapter
    from medtune.train.objectives import run_training

    summary = run_training(cfg)
    if (Path(cfg.output_dir) / "adapter_config.json").is_file():
        summary["merged"] = merge_adapter(MergeConfig(adapter=cfg.output_dir, output_dir=merged))["output_dir"]
    return summary


def _chain_stage(name: str):
    def build(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
        cfg = getattr(recipe, name)
        merged = recipe.output_dir / f"{STAGE_DIRS[name]}-merged"
        return cfg.model_dump(mode="json", exclude={"resume"}), _train_inputs(cfg), lambda: train_then_merge(cfg, merged)
    return build


def _merge(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    from medtune.merge import merge_adapter

    cfg = recipe.merge
    inputs = {"adapter": tree_digests(cfg.adapter), "model": model_identity(cfg.model) if cfg.model else None}
    return cfg.model_dump(mode="json"), inputs, lambda: merge_adapter(cfg)


def write_samples(model_dir: Path, cfg, out: Path, seed: int | None = None) -> dict:
    """Answer ``cfg.prompts`` with the model in ``model_dir``; write ``out/samples.jsonl``.

    Decoding fields the recipe leaves unset take the model's own defaults
    (:func:`medtune.generation.model_settings`); each row records the settings used and the
    answer's quality flags (stopped, loop, language match; :mod:`medtune.eval.quality`).

    Returns:
        ``{"samples", "file", "quality", "decoding"}``.
    """
    from medtune.eval.quality import answer_quality, quality_summary
    from medtune.generation import chat_reply
    from medtune.models import load_chat_model

    model, tokenizer = load_chat_model(str(model_dir))
    settings = cfg.generation if cfg.generation.seed is not None or seed is None else cfg.generation.model_copy(update={"seed": seed})
    rows = []
    for prompt in cfg.prompts:
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": prompt}]
        t0 = time.time()
        reply = chat_reply(model, tokenizer, messages, settings)
        rows.append({"prompt": prompt, "answer": reply.text, **answer_quality(prompt, reply.text, reply.stopped),
                     "new_tokens": reply.new_tokens, "seconds": round(time.time() - t0, 1), "decoding": reply.settings})
        flags = ", ".join(f"{k}={rows[-1][k]}" for k in ("stopped", "loop", "language_match"))
        console.print(f"[bold]Q:[/] {prompt}\n[bold]A:[/] {reply.text}\n[dim]({flags})[/]\n")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    quality = {k: v["rate"] for k, v in quality_summary(rows).items()}
    decoding = {k: v for k, v in rows[0]["decoding"].items() if k != "max_new_tokens"} if rows else {}
    console.print(f"samples: stops {quality['stops']:.2f}, loops {quality['loops']:.2f}, "
                  f"language match {quality['language_match']:.2f}; decoding {decoding}")
    return {"samples": len(rows), "file": str(out / "samples.jsonl"), "quality": quality,
            "decoding": rows[0]["decoding"] if rows else None}


def _samples(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    model_dir = recipe.stage_dir("merge")
    cfg = recipe.samples
    return cfg.model_dump(mode="json"), {"model": tree_digests(model_dir)}, lambda: write_samples(model_dir, cfg, out, recipe.seed)


def export_merged(cfg, base_given: bool) -> dict:
    """Export ``cfg.model``; with ``cfg.adapter``, merge it first (the merge stage's parity check) into
    ``<output_dir>/merged-hf`` and export that. ``base_given``: ``cfg.model`` was named by the user
    (else the adapter's recorded base is used).

    Raises:
        ModelError: llama-cpp-python is not installed (install hint; checked before merging).
    """
    from medtune.config import MergeConfig
    from medtune.export.stage import export_model
    from medtune.llamacpp import import_llama_cpp
    from medtune.merge import merge_adapter

    import_llama_cpp()  # a missing medtune[gguf] extra: the install hint before the merge, not after it
    if cfg.adapter is not None:
        merged = merge_adapter(MergeConfig(model=cfg.model if base_given else None, adapter=cfg.adapter,
                                           output_dir=cfg.output_dir / "merged-hf"))
        cfg = cfg.model_copy(update={"model": merged["output_dir"], "adapter": None})
    return export_model(cfg)


def _export(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    cfg = recipe.export
    model = Path(cfg.model)
    inputs = {"model": tree_digests(model) if model.exists() else model_identity(cfg.model),
              "adapter": tree_digests(cfg.adapter) if cfg.adapter else None}
    return cfg.model_dump(mode="json", exclude={"push_to_hub"}), inputs, lambda: export_merged(cfg, True)


def _eval(recipe: Recipe, out: Path) -> tuple[dict, dict, callable]:
    from medtune.eval.stage import run_eval_stage

    cfg = recipe.eval
    files = {str(f): tree_digests(f) for f in cfg.mcq_files}
    inputs = {"base": model_identity(recipe.model), "finetuned": tree_digests(recipe.stage_dir("merge"))
              or tree_digests(recipe.stage_dir("train")), "mcq_files": files,
              "fact_file": tree_digests(cfg.fact_file) if cfg.fact_file else None,
              **{k: tree_digests(getattr(cfg, k)) for k in ("fact_entities", "fact_unanswerable") if getattr(cfg, k)},
              "train": recipe.train.model_dump(mode="json") if recipe.train else None,
              "rag_index": tree_digests(Path(cfg.rag_index) / "passages.jsonl") if cfg.rag_index else None,
              "safety_file": tree_digests(cfg.safety_file) if cfg.safety_file else None,
              "rubric_file": tree_digests(cfg.rubric_file) if cfg.rubric_file else None,
              "lm_eval": {t: tree_digests(Path(t)) for t in [*cfg.lm_eval_tasks, *map(str, cfg.lm_eval_data.values())] if Path(t).is_file()}}
    aligned = [recipe.output_dir / "align-merged", recipe.stage_dir("align")] if recipe.align is not None else None
    if aligned:
        inputs["aligned"] = tree_digests(aligned[0]) or tree_digests(aligned[1])
    return cfg.model_dump(mode="json"), inputs, lambda: run_eval_stage(
        cfg, recipe.model, [recipe.stage_dir("merge"), recipe.stage_dir("train")], resolve(recipe, create=("train",)).train,
        recipe.seed, out, f"medtune: base vs fine-tuned{' vs aligned' if aligned else ''} ({recipe.output_dir})", aligned)


STAGES = {"data": _data, "rag": _index, "pretrain": _chain_stage("pretrain"), "train": _train, "merge": _merge,
          "align": _chain_stage("align"), "samples": _samples, "export": _export, "eval": _eval}


def run_recipe(recipe: Recipe, force: bool = False, only: list[str] | None = None) -> dict:
    """Run the recipe's stages in order; skip those whose config and inputs are unchanged.

    Args:
        recipe: the validated recipe.
        force: redo every stage even when up to date.
        only: restrict to these stage names.

    Returns:
        ``{stage: {"status": "ran"|"skipped", "dir", "wall_s", "summary"}}``.

    Raises:
        ConfigError: a name in ``only`` that is not a stage, or a stage the recipe does not have.
    """
    results, t_all = {}, time.time()
    recipe = resolve(recipe)
    for name in only or ():
        if name not in STAGES or getattr(recipe, name) is None:
            have = [n for n in STAGES if getattr(recipe, n) is not None]
            why = "is not a stage" if name not in STAGES else "is not in this recipe"
            raise ConfigError(f"--only {name}: {why}; this recipe's stages: {', '.join(have)}")
    for name, build in STAGES.items():
        if getattr(recipe, name) is None or (only and name not in only):
            continue
        out = recipe.output_dir / STAGE_DIRS[name]
        config, inputs, run = build(recipe, out)
        fp = fingerprint(config, inputs)
        if not force and is_up_to_date(out, fp):
            console.print(f"[dim]{name}: up to date ({out}), skipped; --force redoes it[/]")
            results[name] = {"status": "skipped", "dir": str(out), "wall_s": 0.0}
            continue
        console.rule(f"[bold]{name}")
        started = time.time()
        try:
            summary = run()
        except TrainingPreempted as e:  # stopped by a signal, checkpoint saved: no manifest, so a rerun redoes it
            e.stage = name
            raise
        out.mkdir(parents=True, exist_ok=True)
        manifest = write_manifest(out, name, config, inputs, fp, recipe.seed, started,
                                  {k: v for k, v in summary.items() if k != "losses"})
        results[name] = {"status": "ran", "dir": str(out), "wall_s": manifest["wall_s"], "summary": summary}
    _print_summary(results, time.time() - t_all)
    return results


def _print_summary(results: dict, seconds: float) -> None:
    table = Table(title=f"medtune run: {seconds:.0f} s")
    for col in ("stage", "status", "time (s)", "output"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, r["status"], f"{r['wall_s']:.0f}", r["dir"])
    console.print(table)
