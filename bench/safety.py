"""Red-flag detection benchmark: latency per message and extra memory of the safety layer on CPU.

    PYTHONPATH=. python bench/safety.py              # 300 training messages (a seeded sample of the 80/20 split's 20%)
    PYTHONPATH=. python bench/safety.py --n 100 --rules-only
    PYTHONPATH=. python bench/safety.py --n 100 --chars 1000 8000   # long messages (issue 27)

With ``--chars N``, each timed message is one of those records placed at a random point inside
ordinary training messages of its language joined to N characters (whole-message screening reads
all of it: the rules and the n-gram head every sentence window, the encoder a bounded few).

Times :func:`medtune.safety.screen` (rules on the last user turn + classifier on the recent user
turns) once per conversation, after one warm-up call, and reports median / p95 wall time, CPU time
per message, the one-off load time of the encoder, and RSS before and after (extra MiB = what the
encoder and weights add to a process that already runs medtune). The machine load average is
printed too: on a shared machine wall time includes waiting for a core; CPU time does not.
Targets (issue 12): median <= 30 ms, p95 <= 100 ms, <= 300 MiB extra; (issue 27) median <= 30 ms
for messages of <= 1,000 characters, p95 <= 150 ms for 8,000 characters.
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
    ap.add_argument("--chars", type=int, nargs="*", default=[0],
                    help="message lengths to time (0: the records as they are; N: each record inside N characters)")
    args = ap.parse_args()
    all_records = load_records()
    val = split(all_records)[1]  # sorted by (lang, type, category): draw a seeded sample across all of them
    records = [val[i] for i in random.Random(0).sample(range(len(val)), min(args.n, len(val)))]
    cfg = SafetyConfig(classifier=not args.rules_only)
    print("| detector | chars | messages | median ms | p95 ms | CPU ms/msg | first call s | extra RSS MiB | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n_chars in args.chars:
        timed = records if not n_chars else [padded(r, all_records, n_chars, i) for i, r in enumerate(records)]
        time_screen(timed, cfg, args.rules_only, n_chars)


def padded(rec: dict, records: list[dict], n_chars: int, seed: int) -> dict:
    """``rec`` (its last user turn) at a random point among ordinary messages of its language, ~``n_chars`` long."""
    rng = random.Random(seed)
    pool = [r["text"] for r in records if r["lang"] == rec["lang"] and r.get("type") == "benign" and "text" in r]
    own = conversation(rec)[-1]["content"]
    parts: list[str] = []
    while sum(map(len, parts)) + len(own) < n_chars:
        parts.append(rng.choice(pool))
    parts.insert(rng.randint(0, len(parts)), own)
    return dict(rec, text=" ".join(parts)) if "messages" not in rec else \
        dict(rec, messages=rec["messages"][:-1] + [{"role": "user", "content": " ".join(parts)}])


def time_screen(records: list[dict], cfg: SafetyConfig, rules_only: bool, n_chars: int) -> None:
    """Time :func:`screen` once per record after a warm-up call and print one table row."""
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
    print(f"| {'rules' if rules_only else 'rules + classifier'} | {n_chars or 'as written'} | {len(records)} | {statistics.median(wall):.1f} "
          f"| {p95:.1f} | {cpu_ms:.1f} | {load_s:.2f} | {extra:.0f} (after load {rss1 - rss0:.0f}) "
          f"| {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores |")


if __name__ == "__main__":
    main()
