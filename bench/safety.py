"""Red-flag detection benchmark: latency per message and extra memory of the safety layer on CPU.

    PYTHONPATH=. python bench/safety.py              # 300 training messages (a seeded sample of the 80/20 split's 20%)
    PYTHONPATH=. python bench/safety.py --n 100 --rules-only

Times :func:`medtune.safety.screen` (rules on the last user turn + classifier on the recent user
turns) once per conversation, after one warm-up call, and reports median / p95 wall time, CPU time
per message, the one-off load time of the encoder, and RSS before and after (extra MiB = what the
encoder and weights add to a process that already runs medtune). The machine load average is
printed too: on a shared machine wall time includes waiting for a core; CPU time does not.
Targets (issue 12): median <= 30 ms, p95 <= 100 ms, <= 300 MiB extra.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import time

from medtune.config import SafetyConfig
from medtune.safety import conversation, screen
from medtune.safety.fit import split
from medtune.safety.labelled import load_records


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="conversations to time")
    ap.add_argument("--rules-only", action="store_true", help="time the rules alone")
    args = ap.parse_args()
    val = split(load_records())[1]  # sorted by (lang, type, category): draw a seeded sample across all of them
    records = [val[i] for i in random.Random(0).sample(range(len(val)), min(args.n, len(val)))]
    cfg = SafetyConfig(classifier=not args.rules_only)
    rss0, t0 = rss_mib(), time.perf_counter()
    screen(conversation(records[0]), records[0]["lang"], cfg)  # loads the encoder and weights
    load_s, rss1 = time.perf_counter() - t0, rss_mib()
    wall, c0 = [], cpu_s()
    for rec in records:
        t = time.perf_counter()
        screen(conversation(rec), rec["lang"], cfg)
        wall.append((time.perf_counter() - t) * 1000)
    cpu_ms = (cpu_s() - c0) * 1000 / len(records)
    wall.sort()
    p95 = wall[min(len(wall) - 1, int(0.95 * len(wall)))]
    extra = rss_mib() - rss0
    print("| detector | messages | median ms | p95 ms | CPU ms/msg | first call s | extra RSS MiB | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {'rules' if args.rules_only else 'rules + classifier'} | {len(records)} | {statistics.median(wall):.1f} "
          f"| {p95:.1f} | {cpu_ms:.1f} | {load_s:.2f} | {extra:.0f} (after load {rss1 - rss0:.0f}) "
          f"| {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores |")


if __name__ == "__main__":
    main()
