"""``medtune eval lm-eval``: lm-evaluation-harness tasks on any model medtune loads, results beside its own.

The model is loaded the medtune way (:func:`medtune.eval.backends.load_backend`: pack, model
directory, merged output, base + adapter) and handed to the harness as an already built
``HFLM(pretrained=model, tokenizer=tokenizer)``, so it is the same weights, tokenizer and chat
template that ``eval mcq``, chat and serving use; ``batch_size`` is medtune's. The harness
(EleutherAI, https://github.com/EleutherAI/lm-evaluation-harness; extra ``medtune[lm-eval]``)
builds the prompts, scores them and computes each metric's standard error.

Offline by default: the hub is switched off while the harness runs, so a task whose dataset is
neither in the local datasets cache nor on disk fails with a message naming the dataset. Data
on disk comes in two ways: a task YAML file given to ``--tasks`` (``dataset_path: json`` with
``data_files``, read relative to the YAML), or ``--data TASK=FILE`` which points a harness task
at a local copy of its dataset (same columns).

Writes, per task, ``<output_dir>/<task>/results.json`` (task ``lm_eval``: every metric with the
harness's stderr and a normal 95% interval) and ``predictions.jsonl`` (one row per document,
with ``correct`` where the main metric is 0/1), so the report shows them beside medtune's MCQ
and pairs base and fine-tuned on the same documents. The harness's request cache
(``lm_cache-<run key>``) lets a killed run resume without scoring a request twice.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import time
from pathlib import Path

from rich.console import Console

from medtune.errors import EvalError
from medtune.eval.backends import Backend, load_backend
from medtune.eval.config import LmEvalConfig
from medtune.eval.results import elapsed, finish, run_key
from medtune.manifest import tree_digests

console = Console(stderr=True)
INSTALL_HINT = "pip install 'medtune[lm-eval]'"
# The harness's medical tasks (lm-eval 0.4.13), for the docs and for the hint on an unknown name.
MEDICAL_TASKS = ("medqa_4options", "medmcqa", "pubmedqa", "multimedqa", "kormedmcqa", "kormedmcqa_doctor",
                 "kormedmcqa_nurse", "kormedmcqa_pharm", "kormedmcqa_dentist", "kmmlu_health", "headqa_en", "headqa_es",
                 "careqa_en", "mmlu_anatomy", "mmlu_clinical_knowledge", "mmlu_college_biology", "mmlu_college_medicine",
                 "mmlu_medical_genetics", "mmlu_nutrition", "mmlu_professional_medicine", "mmlu_virology", "cmmlu_anatomy",
                 "cmmlu_clinical_knowledge", "cmmlu_college_medical_statistics", "cmmlu_college_medicine", "cmmlu_genetics",
                 "cmmlu_nutrition", "cmmlu_traditional_chinese_medicine", "cmmlu_virology", "med_concepts_qa",
                 "med_prescriptions", "meddialog", "mediqa_qa2019", "medtext")
BOUNDED = ("acc", "acc_norm", "exact_match", "f1", "mcc")  # metrics in [0, 1]: their intervals are clipped
PRIMARY = ("acc", "exact_match", "acc_norm", "f1")
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("test_split", "validation_split", "training_split", "fewshot_split")


def import_harness():
    """``(lm_eval module, TaskManager, HFLM)``.

    Raises:
        EvalError: lm-eval is not installed (the message gives the pip command).
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise EvalError(f"medtune eval lm-eval needs lm-evaluation-harness ({e.name or e}): {INSTALL_HINT}") from None
    return lm_eval, TaskManager, HFLM


@contextlib.contextmanager
def hub_offline(enabled: bool):
    """Switch the Hugging Face hub off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, also in the
    already imported ``datasets`` and ``huggingface_hub``) for the duration; restored afterwards."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    flags = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = flags
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# ----------------------------------------------------------------------------- tasks


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None, include_defaults: bool):
    """The harness's task index (built once per process: indexing its ~10k task YAMLs takes tens of seconds
    on a small CPU); without ``include_defaults`` only ``include_path`` is indexed (local task files only)."""
    _, TaskManager, _ = import_harness()
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def manager_for(cfg: LmEvalConfig):
    """The smallest task index that knows every task of ``cfg``: none of the harness's own when the tasks
    are YAML files or all live in ``include_path`` (and no ``data`` points a harness task elsewhere)."""
    include = str(cfg.include_path) if cfg.include_path else None
    names = [t for t in cfg.tasks if Path(t).suffix.lower() not in (".yaml", ".yml")]
    if not names or (include and not cfg.data and all(t in task_manager(include, False).task_index for t in names)):
        return task_manager(include, False)
    return task_manager(include, True)


def local_task_config(path: Path) -> dict:
    """A task YAML file as a config dict (``!function`` resolved, ``include`` merged), with relative
    ``data_files`` made absolute against the YAML's folder.

    Raises:
        EvalError: the file is missing, or is not a single-task config.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    if not path.is_file():
        raise EvalError(f"{path}: no such task file")
    cfg = load_yaml(path, resolve_func=True)
    if "task" not in cfg or not isinstance(cfg["task"], str):
        raise EvalError(f"{path}: a task YAML needs `task: NAME` (groups: put the folder in --include-path)")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, (str, list, dict)):
        cfg["dataset_kwargs"]["data_files"] = _absolute(files, path.parent)
    return cfg


def _absolute(files, base: Path):
    if isinstance(files, dict):
        return {k: _absolute(v, base) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, base) for v in files]
    return str((base / files).resolve()) if not Path(files).is_absolute() and (base / files).exists() else files


def local_data_config(manager, task: str, file: Path) -> dict:
    """The config of harness task ``task`` pointed at ``file``: the file is its evaluation split, and its
    few-shot examples come from the same split (the harness then leaves each question out of its own shots).

    Raises:
        EvalError: unknown task, a group (give each task its own file), a missing file or an unknown type.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise EvalError(f"--data {task}={file}: {task!r} is not a harness task with a YAML config")
    if entry.kind.name != "TASK":
        children = entry.cfg.get("task") if isinstance(entry.cfg, dict) else None
        raise EvalError(f"--data {task}={file}: {task!r} is a {entry.kind.name.lower()}; give a file per task: {children}")
    builder = LOCAL_BUILDERS.get(Path(file).suffix.lower())
    if builder is None or not Path(file).is_file():
        raise EvalError(f"--data {task}={file}: " + ("no such file" if builder else f"use one of {', '.join(LOCAL_BUILDERS)}"))
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    split = cfg.get("test_split") or cfg.get("validation_split") or "test"
    # one split for everything: few-shot examples then come from the same split, which the harness
    # knows to leave the question itself out of
    return {**cfg, **{k: split for k in SPLITS}, "dataset_path": builder, "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(Path(file).resolve())}}}


def task_specs(cfg: LmEvalConfig, manager) -> list[str | dict]:
    """What the harness gets for each of ``cfg.tasks``: a registered name, or a config dict for a YAML file
    or a task with ``--data``.

    Raises:
        EvalError: an unknown task name (with the closest names), or ``data`` for a task not in ``tasks``.
    """
    stray = sorted(set(cfg.data) - set(cfg.tasks))
    if stray:
        raise EvalError(f"--data names {stray}, which are not in --tasks {cfg.tasks}")
    specs = []
    for t in cfg.tasks:
        if Path(t).suffix.lower() in (".yaml", ".yml"):
            specs.append(local_task_config(Path(t)))
        elif t in cfg.data:
            specs.append(local_data_config(manager, t, cfg.data[t]))
        elif t in manager.task_index:
            specs.append(t)
        else:
            close = difflib.get_close_matches(t, manager.all_tasks, n=5, cutoff=0.6)
            raise EvalError(f"unknown lm-eval task {t!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                            + f" (medical tasks: {', '.join(MEDICAL_TASKS[:8])} ...; a local task: a .yaml file)")
    return specs


def dataset_error(exc: BaseException) -> EvalError | None:
    """A clear error for a task whose dataset could not be loaded, found by walking the traceback to the
    harness task that was downloading it; None when the failure is not a dataset load."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if hasattr(obj, "DATASET_PATH") and hasattr(obj, "config"):
            found = obj
        tb = tb.tb_next
    if found is None:
        return None
    task, path, name = getattr(found.config, "task", "?"), found.DATASET_PATH, found.DATASET_NAME
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if path in ("json", "csv", "parquet"):
        files = (getattr(found.config, "dataset_kwargs", None) or {}).get("data_files")
        return EvalError(f"lm-eval task {task!r}: its local data {files} cannot be read ({reason})")
    return EvalError(f"lm-eval task {task!r}: its dataset {path}" + (f" (config {name})" if name else "")
                     + f" is not on this machine and medtune runs the harness offline ({reason}). Give a local copy "
                     f"with the dataset's columns: --data {task}=FILE.jsonl; or load it once where the hub is reachable "
                     "(it is then cached in HF_DATASETS_CACHE); or pass --no-offline to let the harness download it")


# ----------------------------------------------------------------------------- results


def metric_table(entry: dict) -> dict[str, dict]:
    """``{metric: {"value", "stderr", "ci95"}}`` from one harness results entry (``"acc,none": 0.4``,
    ``"acc_stderr,none": 0.05`` ...); a filter other than ``none`` is named in brackets. The interval is
    value +- 1.96 stderr (clipped to [0, 1] for bounded metrics); None without a stderr."""
    out = {}
    for key, value in entry.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        se = entry.get(f"{metric}_stderr,{filt}")
        se = float(se) if isinstance(se, (int, float)) else None
        lo, hi = (value - 1.96 * se, value + 1.96 * se) if se is not None else (None, None)
        if se is not None and metric in BOUNDED:
            lo, hi = max(0.0, lo), min(1.0, hi)
        name = metric if filt == "none" else f"{metric} [{filt}]"
        out[name] = {"value": round(float(value), 4), "stderr": round(se, 4) if se is not None else None,
                     "ci95": [round(lo, 4), round(hi, 4)] if se is not None else None}
    return out


def primary_metric(metrics: dict[str, dict]) -> str | None:
    """The metric the report leads with: the first of acc, exact_match, acc_norm, f1 (any filter), else the first."""
    for want in PRIMARY:
        for name in metrics:
            if name == want or name.startswith(want + " ["):
                return name
    return next(iter(metrics), None)


def sample_rows(samples: list[dict], primary: str | None) -> list[dict]:
    """One row per document from the harness's logged samples: ``id``, ``target``, ``prediction`` (the
    chosen option index for multiple-choice, the filtered reply otherwise), every metric value and
    ``correct`` when the main metric is 0/1. Only the main metric's filter is kept."""
    metric, _, filt = (primary or "").partition(" [")
    filt = filt.rstrip("]") or "none"
    rows = []
    for s in samples:
        if s.get("filter", "none") != filt:
            continue
        resps = s.get("filtered_resps") or []
        loglik = resps and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps)
        pred = max(range(len(resps)), key=lambda i: resps[i][0]) if loglik else (resps[0] if resps else None)
        row = {"id": str(s["doc_id"]), "target": s.get("target"), "prediction": pred,
               **{m: s[m] for m in s.get("metrics", []) if isinstance(s.get(m), (int, float, bool))}}
        if isinstance(row.get(metric), (int, float, bool)) and float(row[metric]) in (0.0, 1.0):
            row["correct"] = float(row[metric]) == 1.0
        rows.append(row)
    return rows


def dataset_of(config: dict) -> str:
    """Where a task's documents came from: ``hub id (config)`` or the local files."""
    if config.get("dataset_path") in ("json", "csv", "parquet"):
        return f"local {config.get('dataset_path')}: {(config.get('dataset_kwargs') or {}).get('data_files')}"
    return str(config.get("dataset_path")) + (f" ({config['dataset_name']})" if config.get("dataset_name") else "")


# ----------------------------------------------------------------------------- run


def _evaluate(harness, manager, lm, specs: list, cfg: LmEvalConfig, cache: Path) -> dict:
    """One ``simple_evaluate`` call with medtune's settings; dataset failures become clear errors."""
    with hub_offline(cfg.offline):
        try:
            return harness.simple_evaluate(
                model=lm, tasks=specs, task_manager=manager, num_fewshot=cfg.num_fewshot, limit=cfg.max_items,
                apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=cfg.apply_chat_template,
                system_instruction=cfg.system, log_samples=True, bootstrap_iters=cfg.bootstrap_iters,
                gen_kwargs={"max_gen_toks": cfg.max_new_tokens} if cfg.max_new_tokens else None,
                use_cache=str(cache), random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                fewshot_random_seed=cfg.seed)
        except (AssertionError, ValueError) as e:  # the harness checks its settings with asserts
            raise dataset_error(e) or EvalError(f"lm-evaluation-harness refused the run: {e}"
                                                + (" (set --max-new-tokens)" if "max tokens" in str(e) else "")) from None
        except Exception as e:  # noqa: BLE001 -- only a dataset load is turned into an EvalError
            err = dataset_error(e)
            if err is None:
                raise
            raise err from None


def _task_result(name: str, res: dict, backend: Backend, cfg: LmEvalConfig, version: str) -> tuple[dict, list[dict]]:
    """``(results.json dict, predictions rows)`` of one harness task or group."""
    metrics = metric_table(res["results"].get(name) or res.get("groups", {}).get(name, {}))
    primary = primary_metric(metrics)
    rows = sample_rows(res.get("samples", {}).get(name, []), primary)
    config = res.get("configs", {}).get(name, {})
    subtasks = res.get("group_subtasks", {}).get(name, [])
    n = res.get("n-samples", {}).get(name) or {  # a group: the sum over its tasks
        k: sum(res.get("n-samples", {}).get(t, {}).get(k, 0) for t in subtasks) for k in ("effective", "original")}
    head = metrics.get(primary) or {"value": None, "stderr": None, "ci95": None}
    result = {"model": backend.name, "model_identity": backend.identity, "data": name, "harness_task": name,
              "dataset": dataset_of(config) if config else "group of " + ", ".join(subtasks),
              "n": n.get("effective", len(rows)), "n_documents": n.get("original"),
              "num_fewshot": res.get("n-shot", {}).get(name), "apply_chat_template": cfg.apply_chat_template,
              "metric": primary, "value": head["value"], "stderr": head["stderr"], "ci95": head["ci95"],
              "higher_is_better": res.get("higher_is_better", {}).get(name, {}).get((primary or "").split(" [")[0], True),
              "metrics": metrics, "task_version": res.get("versions", {}).get(name), "harness_version": version,
              "limit": cfg.max_items, "seed": cfg.seed, "predictions_file": "predictions.jsonl"}
    return result, rows


def run_lm_eval(cfg: LmEvalConfig, backend: Backend | None = None) -> dict:
    """Run harness tasks on one model; write each task's results, predictions and manifest.

    Args:
        cfg: the config.
        backend: an already loaded local model (the eval stage reuses it); loaded from ``cfg.model`` if None.

    Returns:
        ``{"model", "tasks": {task: results dict}}``; each results dict has ``metric``, ``value``,
        ``stderr``, ``ci95`` (the main metric) and ``metrics`` (all of them).

    Raises:
        EvalError: lm-eval missing, an endpoint model, an unknown task, or a dataset not on this machine.
        medtune.errors.ModelError: the model cannot be loaded.
    """
    harness, _, HFLM = import_harness()
    started, out = time.time(), Path(cfg.output_dir)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-request warnings drown the progress bars
    manager = manager_for(cfg)
    specs = task_specs(cfg, manager)
    backend = backend or load_backend(cfg.model, cfg.adapter)
    if not backend.is_local:
        raise EvalError(f"{backend.name}: medtune eval lm-eval scores a local model (pack, directory, merged output, "
                        "base + adapter); for an endpoint use the harness's own local-chat-completions model")
    version = getattr(harness, "__version__", None) or _version("lm_eval")
    config = {**cfg.model_dump(mode="json", exclude={"output_dir"}), "harness_version": version}
    inputs = {"model": backend.identity, "data": {t: tree_digests(Path(f)) for t, f in cfg.data.items()},
              "task_files": {t: tree_digests(Path(t)) for t in cfg.tasks if Path(t).suffix.lower() in (".yaml", ".yml")}}
    key = run_key(config, inputs)
    out.mkdir(parents=True, exist_ok=True)
    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=cfg.batch_size)
    res = _evaluate(harness, manager, lm, specs, cfg, out / f"lm_cache-{key[:12]}")
    tasks = {}
    for name in [*res["results"], *(g for g in res.get("groups", {}) if g not in res["results"])]:
        result, rows = _task_result(name, res, backend, cfg, version)
        (out / name).mkdir(parents=True, exist_ok=True)
        tasks[name] = finish(out / name, "lm_eval", config, inputs, result, cfg.seed, started, None, rows,
                             {"documents": result["n"], "wall_s": elapsed(started)})
        ci = result["ci95"]
        console.print(f"lm-eval {backend.name} {name}: {result['metric']} {result['value']}"
                      + (f" (stderr {result['stderr']}, 95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "") + f", n={result['n']}")
    console.print(f"lm-eval {backend.name}: {len(tasks)} task(s) in {elapsed(started)} s -> {out}")
    return {"model": backend.name, "tasks": tasks}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
