"""Stage manifests: what a stage read, wrote and ran with, so runs are reproducible and skippable.

``manifest.json`` in each stage directory holds the stage config, input and output file
digests, package versions, git commit, seed and wall time. A stage whose fingerprint (config
+ input digests) is unchanged and whose outputs are intact is skipped on re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

BIG_FILE = 64 * 2**20  # bytes; larger files are identified by size and mtime instead of sha256
PACKAGES = ("medtune", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers")


def file_digest(path: Path) -> str:
    """sha256 of a file, or ``size:<bytes>:mtime:<ns>`` for files over 64 MiB (fast re-runs)."""
    st = path.stat()
    if st.st_size > BIG_FILE:
        return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_digests(path: Path) -> dict[str, str]:
    """Digests of a file, or of every file under a directory (relative names; checkpoints, their staging
    directory and ``preempted.json`` skipped)."""
    path = Path(path)
    if path.is_file():
        return {path.name: file_digest(path)}
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): file_digest(p) for p in sorted(path.rglob("*"))
            if p.is_file() and not p.relative_to(path).parts[0].startswith(("checkpoint-", ".staging", ".manifest.json"))
            and p.name not in ("manifest.json", "preempted.json")}


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine results."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The current git commit of the working directory, if any (``+dirty`` when modified)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) if sha else None


def fingerprint(config: dict, inputs: dict) -> str:
    """sha256 over the stage config and its input digests (the skip key)."""
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_up_to_date(stage_dir: Path, fp: str) -> bool:
    """True when ``stage_dir/manifest.json`` has fingerprint ``fp`` and its outputs are unchanged."""
    path = Path(stage_dir) / "manifest.json"
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return manifest.get("fingerprint") == fp and manifest.get("outputs") == tree_digests(stage_dir)


def write_manifest(stage_dir: Path, stage: str, config: dict, inputs: dict, fp: str, seed: int,
                   started: float, summary: dict | None = None) -> dict:
    """Write ``stage_dir/manifest.json`` atomically (a temporary file renamed over it) and return it.

    A kill while writing leaves the previous manifest (or none), never a truncated one, so a
    stage is never taken for up to date on the strength of half a file.
    """
    manifest = {
        "stage": stage, "fingerprint": fp, "config": config, "inputs": inputs,
        "outputs": tree_digests(stage_dir), "seed": seed, "packages": package_versions(),
        "git_commit": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1), "summary": summary or {},
    }
    path = Path(stage_dir) / "manifest.json"
    tmp = path.with_name(f".manifest.json.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return manifest
