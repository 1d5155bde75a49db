"""Per-item results files (resumable), ``results.json`` and the evaluation manifest.

Every evaluation appends one JSON line per finished item to ``predictions.jsonl`` (flushed
at once), tagged with a run key: the sha256 of the config, model identity and data digest.
A killed run restarted with the same inputs reuses those lines and computes only the rest;
a different run in the same directory is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from medtune.errors import EvalError
from medtune.manifest import fingerprint, package_versions, write_manifest
from medtune.io import Reject, write_rejects


def load_done(path: Path, run_key: str, overwrite: bool = False) -> dict[str, dict]:
    """Rows already computed for ``run_key`` in ``path`` (keyed by item id).

    Raises:
        EvalError: ``path`` holds rows of a different run and ``overwrite`` is False.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    done, other = {}, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: recomputed
            continue
        if row.get("run_key") == run_key:
            done[str(row["id"])] = row
        else:
            other += 1
    if other and not overwrite:
        raise EvalError(f"{path} holds {other} results of a different run (model, data or settings changed); "
                        "use another --output-dir or pass --overwrite")
    if other:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()), encoding="utf-8")
    return done


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows as JSON lines and flush them to disk (so a kill loses at most one batch)."""
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()


def run_key(config: dict, inputs: dict) -> str:
    """The resume key of a run: :func:`medtune.manifest.fingerprint` of config + inputs."""
    return fingerprint(config, inputs)


def finish(out: Path, task: str, config: dict, inputs: dict, results: dict, seed: int, started: float,
           rejects: list[Reject] | None = None, rows: list[dict] | None = None, summary: dict | None = None) -> dict:
    """Write ``predictions.jsonl`` (ordered), ``rejects.jsonl``, ``results.json`` and ``manifest.json``.

    ``results.json`` holds only what the evaluation measured (no times), so two runs of the
    same model, data and seed give byte-identical files; the manifest adds provenance
    (model identity and hashes, data digests, prompt templates, judge, package versions,
    seed, wall time).

    Returns:
        The results dict (with ``task`` and ``manifest`` keys added).
    """
    out = Path(out)
    if rows is not None:
        (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    if rejects:
        write_rejects(rejects, out / "rejects.jsonl")
    results = {"task": task, **results, "packages": {k: v for k, v in package_versions().items() if k != "python"}}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    write_manifest(out, f"eval-{task}", config, inputs, run_key(config, inputs), seed, started, summary or {})
    return {**results, "manifest": str(out / "manifest.json")}


def elapsed(started: float) -> float:
    """Seconds since ``started`` (rounded to 0.1)."""
    return round(time.time() - started, 1)
