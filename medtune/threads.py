"""How many CPU threads torch (and llama.cpp) compute with: the cores that are free when the process starts.

torch starts one OpenMP thread per logical CPU. On a machine where other jobs keep some cores busy,
that is far slower than using fewer threads, not a little: every parallel region ends at a barrier,
and a thread that shares its core with another job is descheduled for a whole time slice while its
peers wait for it (issue 32: 2 threads beside one busy core trained at a sixth of their idle speed,
1 thread would lose only half). So medtune counts the cores that are free at start, once per process,
and computes on that many threads:

1. ``num_threads`` from the stage's config (``train.num_threads``, ``serve.num_threads``), if set;
2. else ``$MEDTUNE_THREADS``;
3. else ``$OMP_NUM_THREADS`` (what launchers such as torchrun set for each of several processes);
4. else the free cores: the CPUs this process may run on (``os.sched_getaffinity``, capped by the
   cgroup's ``cpu.max`` quota and by the physical cores among them: SMT siblings count once), minus the cores other processes kept busy over a short sample of
   ``/proc/stat`` (this process's own CPU time taken out), divided among the local processes of a
   distributed launch (``LOCAL_WORLD_SIZE``). A core counts as free when it was at least 75% idle.

The choice is logged (``threads: 1 of 2 CPUs ...``) and kept for the process; a later explicit
``num_threads`` still wins.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from medtune.errors import ConfigError

ENV = "MEDTUNE_THREADS"
SAMPLE_S = 0.3  # /proc/stat sample: long enough for 30 scheduler ticks at 100 Hz, short enough to go unnoticed
FREE_IF_IDLE = 0.75  # a core with at least this share idle counts as free

_chosen: dict = {}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (``sched_getaffinity``), sorted; all CPUs where that is unknown."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """The cgroup v2 CPU quota in cores (``"quota period"``), or None when unlimited or unknown."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def physical_cores(cpus: list[int], root: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among ``cpus`` (distinct package and core ids; SMT siblings count once), or
    ``len(cpus)`` where the topology is unreadable. Compute-bound threads gain nothing from a sibling."""
    cores = set()
    for cpu in cpus:
        topo = root / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def read_cpu_times(path: Path = Path("/proc/stat")) -> dict[int, tuple[int, int]]:
    """``{cpu: (busy, total)}`` jiffies per CPU from ``/proc/stat`` (``cpuN`` lines); empty when unreadable.

    busy = user + nice + system + irq + softirq + steal (time the CPU was not ours to use); total adds
    idle and iowait. Guest time is already inside user (proc(5)).
    """
    out = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in (fields + ["0"] * 8)[:8])
        busy = user + nice + system + irq + softirq + steal
        out[int(name[3:])] = (busy, busy + idle + iowait)
    return out


def busy_cores(before: dict, after: dict, cpus: list[int], own_cpu_s: float, hz: float) -> float:
    """Cores kept busy by other processes between two :func:`read_cpu_times` readings.

    Args:
        before, after: the readings.
        cpus: the CPUs to count (this process's affinity).
        own_cpu_s: CPU seconds this process used in between (subtracted).
        hz: jiffies per second (``SC_CLK_TCK``).

    Returns:
        Busy cores (0 .. ``len(cpus)``); 0.0 when the readings hold none of ``cpus``.
    """
    busy, total = 0.0, 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            busy += after[cpu][0] - before[cpu][0]
            total += after[cpu][1] - before[cpu][1]
    if total <= 0:
        return 0.0
    counted = sum(1 for c in cpus if c in before and c in after)
    wall_jiffies = total / counted  # elapsed jiffies per CPU
    return min(float(counted), max(0.0, (busy - own_cpu_s * hz) / wall_jiffies))


def free_cores(sample_s: float = SAMPLE_S, read=read_cpu_times, sleep=time.sleep) -> dict:
    """Count the cores free for this process now (see the module doc).

    Args:
        sample_s: how long to watch ``/proc/stat``.
        read, sleep: the ``/proc/stat`` reader and the wait (tests pass fakes).

    Returns:
        ``{"threads": free cores (>= 1), "cpus": usable CPUs, "busy": busy cores seen, "limit": cgroup quota or None}``.
    """
    cpus = usable_cpus()
    limit = cgroup_cpu_limit()
    usable = min(physical_cores(cpus), max(1, math.floor(limit)) if limit else len(cpus))
    own0, before = time.process_time(), read()
    sleep(sample_s)
    after, own = read(), time.process_time() - own0
    busy = busy_cores(before, after, cpus, own, os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    free = min(usable, math.floor(len(cpus) - busy + (1 - FREE_IF_IDLE)))
    return {"threads": max(1, free // local), "cpus": len(cpus), "busy": round(busy, 2), "limit": limit}


def _env_threads(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"${name}={value!r}: must be a whole number of threads >= 1 (unset it to use the free cores)")
    return int(value)


def choose_threads(requested: int | None = None, sample=free_cores) -> tuple[int, str]:
    """The thread count and why: ``requested``, ``$MEDTUNE_THREADS``, ``$OMP_NUM_THREADS`` or the free cores.

    Raises:
        ConfigError: ``$MEDTUNE_THREADS`` or ``$OMP_NUM_THREADS`` is not a positive whole number.
    """
    if requested:
        return requested, "num_threads"
    for name in (ENV, "OMP_NUM_THREADS"):
        n = _env_threads(name)
        if n:
            return n, f"${name}"
    s = sample()
    busy = f", {s['busy']:.1f} busy with other processes" if s["busy"] >= 0.05 else ", idle"
    quota = f", cgroup quota {s['limit']:g}" if s["limit"] else ""
    return s["threads"], f"free cores of {s['cpus']} CPUs{busy}{quota}"


def use_free_cores(requested: int | None = None, log=None) -> int:
    """Set torch's intra-op threads to :func:`choose_threads` once per process; log the choice.

    Args:
        requested: a stage's ``num_threads`` (wins over an earlier automatic choice).
        log: ``print``-like function for the one line (default: stderr).

    Returns:
        The thread count now in use.

    Raises:
        ConfigError: as :func:`choose_threads`.
    """
    if _chosen and (not requested or requested == _chosen["threads"]):
        return _chosen["threads"]
    import torch

    n, why = choose_threads(requested)
    torch.set_num_threads(n)
    _chosen.update(threads=n, why=why)
    line = f"threads: {n} ({why}; ${ENV} or num_threads overrides)"
    if log is not None:
        log(line)
    else:
        import sys

        print(line, file=sys.stderr, flush=True)
    return n


def chosen_threads() -> int:
    """The thread count chosen by :func:`use_free_cores` (choosing it now if nothing has)."""
    return _chosen["threads"] if _chosen else use_free_cores()
