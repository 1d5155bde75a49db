"""Studio jobs: the CLI's own commands run as background processes, with their state on disk.

A job is one stage command on one saved recipe: ``data`` (``medtune data build``), ``index``
(``medtune index build``), ``train`` (``medtune train``; resumed with ``--resume``) or ``eval``
(``medtune run --only eval``). It lives in
``<workdir>/jobs/<id>/``:

- ``job.json``: kind, the recipe snapshot, the stage's output dir and the attempts (pid, command,
  start time, whether a stop was asked);
- ``recipe.yaml``: the recipe as it was when the job started (later edits do not change a resume);
- ``attempt-<n>.log``: the command's output; ``attempt-<n>.status.json``: how it ended, written by
  :mod:`medtune.studio.supervise`.

Nothing is kept in the page or the studio process, so the page can be closed and reopened, and the
studio restarted, while a job runs. A train job's curves come from the trainer's live log
``<output_dir>/train_log.jsonl`` (:data:`medtune.train.harness.LIVE_LOG`).

Stopping sends SIGTERM to the job's process group. ``medtune train`` answers it by finishing the
step under way, saving a complete checkpoint and exiting with :data:`EXIT_PREEMPTED`; a resumed
attempt (``--resume``) continues from that checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from medtune.errors import ConfigError
from medtune.recipe import load_recipe, resolve

JOBS = "jobs"
EXIT_PREEMPTED = 75  # medtune train's status after a clean stop on SIGTERM (EX_TEMPFAIL: try again later)
COMMANDS = {"data": ("data", "build", "{recipe}"), "index": ("index", "build", "{recipe}"),
            "train": ("train", "{recipe}"), "eval": ("run", "{recipe}", "--only", "eval")}
SECTIONS = {"data": "data", "index": "rag", "eval": "eval"}  # the recipe section a job needs (train: created)
_CHILDREN: dict[int, subprocess.Popen] = {}  # supervisors started by this process (polled, so none stays a zombie)


def jobs_root(workdir: Path) -> Path:
    """``<workdir>/jobs``: one folder per job."""
    return Path(workdir) / JOBS


def stage_dir(kind: str, recipe_path: Path) -> Path:
    """Where the job's stage writes, from the resolved recipe (data dir, adapter dir, eval dir)."""
    r = resolve(load_recipe(recipe_path), create=("train",) if kind == "train" else ())
    section = SECTIONS.get(kind)
    if section and getattr(r, section) is None:
        raise ConfigError(f"{recipe_path}: no `{section}:` section, which the {kind} job needs; add it in the "
                          "Recipe tab (choose the section, tick 'section in the recipe', save)")
    return {"data": lambda: Path(r.data.output_dir), "index": lambda: Path(r.rag.index_dir),
            "eval": lambda: r.stage_dir("eval"), "train": lambda: Path(r.train.output_dir)}[kind]()


def _write(job: dict) -> None:
    path = Path(job["dir"]) / "job.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_job(job_dir: Path) -> dict:
    """The job record in ``job_dir`` (``job.json``)."""
    return json.loads((Path(job_dir) / "job.json").read_text(encoding="utf-8"))


def start_job(workdir: Path, kind: str, recipe: Path, cwd: Path | None = None) -> dict:
    """Start ``kind`` (data, train or eval) on a copy of ``recipe``; returns the job record.

    Raises:
        ConfigError: unknown kind, or a recipe without the stage's section (checked before starting).
    """
    if kind not in COMMANDS:
        raise ConfigError(f"unknown job kind {kind!r}; one of {', '.join(COMMANDS)}")
    out = stage_dir(kind, recipe)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job_dir = jobs_root(workdir) / f"{stamp}-{kind}-{Path(recipe).stem}"
    k = 1
    while job_dir.exists():
        k += 1
        job_dir = jobs_root(workdir) / f"{stamp}-{kind}-{Path(recipe).stem}-{k}"
    job_dir.mkdir(parents=True)
    shutil.copyfile(recipe, job_dir / "recipe.yaml")
    job = {"id": job_dir.name, "dir": str(job_dir), "kind": kind, "recipe": str(job_dir / "recipe.yaml"),
           "origin": str(recipe), "output_dir": str(out), "cwd": str(cwd or Path.cwd()), "created": time.time(),
           "attempts": []}
    return _launch(job, [])


def _launch(job: dict, extra: list[str]) -> dict:
    n = len(job["attempts"]) + 1
    job_dir = Path(job["dir"])
    args = [a.format(recipe=job["recipe"]) for a in COMMANDS[job["kind"]]] + extra
    command = [sys.executable, "-m", "medtune", *args]
    log = job_dir / f"attempt-{n}.log"
    status = job_dir / f"attempt-{n}.status.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "110"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "medtune.studio.supervise", str(status), "--", *command],
                                cwd=job["cwd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    job["attempts"].append({"n": n, "pid": proc.pid, "started": time.time(), "command": command,
                            "log": str(log), "status": str(status)})
    _write(job)
    return job


def _alive(pid: int) -> bool:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")  # a reused pid belongs to another program
    return not cmdline.exists() or b"medtune.studio.supervise" in cmdline.read_bytes()


def attempt_state(attempt: dict) -> tuple[str, int | None]:
    """``(state, returncode)`` of one attempt: running, done, stopped, failed, or lost (ended unrecorded)."""
    status = Path(attempt["status"])
    if not status.is_file():
        return ("running" if _alive(attempt["pid"]) else "lost"), None
    rc = json.loads(status.read_text(encoding="utf-8"))["returncode"]
    if rc == 0:
        return "done", rc
    if rc == EXIT_PREEMPTED or attempt.get("stop_requested"):
        return "stopped", rc
    return "failed", rc


def stop_job(job: dict) -> dict:
    """Send SIGTERM to the running attempt's process group (``medtune train`` then saves a checkpoint and exits).

    Raises:
        ConfigError: the job is not running.
    """
    attempt = job["attempts"][-1]
    if attempt_state(attempt)[0] != "running":
        raise ConfigError(f"job {job['id']} is not running")
    attempt["stop_requested"] = time.time()
    _write(job)
    os.killpg(attempt["pid"], signal.SIGTERM)
    return job


def resume_job(job: dict) -> dict:
    """Start a new attempt of a stopped, failed or lost train job with ``--resume`` (from its last complete checkpoint).

    Raises:
        ConfigError: not a train job, or it is still running or already done.
    """
    state = attempt_state(job["attempts"][-1])[0]
    if job["kind"] != "train" or state not in ("stopped", "failed", "lost"):
        raise ConfigError(f"job {job['id']} ({job['kind']}, {state}) cannot be resumed; only a stopped or failed "
                          "train job can")
    return _launch(job, ["--resume"])


def list_jobs(workdir: Path) -> list[dict]:
    """Every job in the work dir, newest first."""
    root = jobs_root(workdir)
    jobs = [read_job(d) for d in root.iterdir() if (d / "job.json").is_file()] if root.is_dir() else []
    return sorted(jobs, key=lambda j: j["created"], reverse=True)


def find_job(workdir: Path, job_id: str) -> dict:
    """The job ``job_id`` of this work dir.

    Raises:
        ConfigError: no such job (an id is a plain folder name; anything else is not found).
    """
    path = jobs_root(workdir) / str(job_id)
    if not job_id or path.parent != jobs_root(workdir) or not (path / "job.json").is_file():
        raise ConfigError(f"no job {job_id!r} in {jobs_root(workdir)}")
    return read_job(path)


def live_log(output_dir: Path) -> list[dict]:
    """The trainer's live log rows; after a ``begin`` at step s (a resume, or a fresh start at 0), earlier
    rows past step s are dropped (they belong to steps done again). A partly written last line is skipped."""
    from medtune.train.harness import LIVE_LOG  # here: the trainer's imports (torch, trl) only when a run is shown

    path = Path(output_dir) / LIVE_LOG
    rows: list[dict] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("event") == "begin":
                rows = [r for r in rows if r.get("step", 0) <= row.get("step", 0)]
            rows.append(row)
    return rows


def progress(rows: list[dict]) -> dict:
    """``{"step", "max_steps", "loss", "eta_s"}`` from live-log rows; ETA from the pace since the last (re)start."""
    begins = [k for k, r in enumerate(rows) if r.get("event") == "begin"]
    if not begins:
        return {"step": 0, "max_steps": None, "loss": None, "eta_s": None}
    since = [r for r in rows[begins[-1]:] if "loss" in r]
    last = rows[-1]
    out = {"step": last["step"], "max_steps": last["max_steps"], "loss": since[-1]["loss"] if since else None, "eta_s": None}
    if len(since) >= 2 and since[-1]["step"] > since[0]["step"]:
        pace = (since[-1]["time"] - since[0]["time"]) / (since[-1]["step"] - since[0]["step"])
        out["eta_s"] = round(pace * max(last["max_steps"] - last["step"], 0))
    return out


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (``checkpoint-N`` holding ``trainer_state.json``), or None."""
    done = [p for p in Path(output_dir).glob("checkpoint-*")
            if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def summary(job: dict) -> dict:
    """One row of the jobs table: id, kind, recipe, state, step, ETA, attempts, checkpoint, started."""
    state, rc = attempt_state(job["attempts"][-1])
    row = {"id": job["id"], "kind": job["kind"], "recipe": Path(job["origin"]).name, "state": state,
           "returncode": rc, "attempts": len(job["attempts"]), "step": "", "eta": "", "checkpoint": "",
           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created"]))}
    if job["kind"] == "train":
        p = progress(live_log(Path(job["output_dir"])))
        row["step"] = f"{p['step']}/{p['max_steps']}" if p["max_steps"] else ""
        row["eta"] = f"{p['eta_s']} s" if state == "running" and p["eta_s"] is not None else ""
        ckpt = latest_checkpoint(Path(job["output_dir"]))
        row["checkpoint"] = ckpt.name if ckpt else ""
    return row


def log_tail(job: dict, chars: int = 6000) -> str:
    """The last ``chars`` characters of the newest attempt's output."""
    path = Path(job["attempts"][-1]["log"])
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - chars, 0))
        return f.read().decode("utf-8", errors="replace")
