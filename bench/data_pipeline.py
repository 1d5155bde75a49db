"""Data-pipeline benchmark: synthetic QA records through PHI scrubbing, exact + near dedup and decontamination.

    python bench/data_pipeline.py --records 100000
    python bench/data_pipeline.py --teacher --concurrency 32 --latency 0.2 --requests 960

Reports records/s, peak RSS (GiB), and near-dup recall on planted near-duplicates (each a copy
of a kept record with 2 characters substituted); ``--teacher`` measures teacher-client
throughput against a local OpenAI-compatible server (tests/fake_openai.py) with fixed latency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medtune.data.filters import Decontaminator, ExactDedup, NearDedup, PHIScrubber, run_filters  # noqa: E402
from medtune.data.records import Record  # noqa: E402

_R = random.Random(1234)
HAN = "".join(chr(0x4E00 + i) for i in _R.sample(range(6000), 1500))          # 1,500 common-range Han characters
HANGUL = "".join(chr(0xAC00 + i) for i in _R.sample(range(11172), 1200))      # 1,200 Hangul syllables
WORDS = ["".join(_R.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_R.randint(3, 9))) for _ in range(5000)]


def synth_text(rng: random.Random, lang: str, n: int) -> str:
    """About ``n`` characters of random text drawn from a realistic-size vocabulary of ``lang``'s script."""
    if lang == "zh":
        return "".join(rng.choice(HAN) for _ in range(n)) + "。"
    if lang == "ko":
        return " ".join("".join(rng.choice(HANGUL) for _ in range(rng.randint(2, 4))) for _ in range(n // 3)) + "."
    return " ".join(rng.choice(WORDS) for _ in range(n // 7)) + "."


def make_records(n: int, near_share: float, seed: int) -> tuple[list[Record], set[str]]:
    """``n`` records of which ``near_share`` are planted near-duplicates (ids returned) and 2% carry PHI."""
    rng, recs, planted = random.Random(seed), [], set()
    for i in range(n):
        if recs and rng.random() < near_share:
            src = rng.choice(recs[: max(1, len(recs) // 2)])
            a = list(src.messages[1]["content"])
            for _ in range(2):
                a[rng.randrange(len(a))] = rng.choice(HAN + "abc")
            q, ans = src.messages[0]["content"], "".join(a)
            planted.add(f"r{i}")
        else:
            lang = rng.choice(["zh", "ko", "en"])
            q, ans = synth_text(rng, lang, 30), synth_text(rng, lang, 180)
            if rng.random() < 0.02:
                ans += f" 电话13{rng.randint(100000000, 999999999)}，邮箱p{i}@example.com"
        recs.append(Record(id=f"r{i}", kind="qa", messages=[{"role": "user", "content": q}, {"role": "assistant", "content": ans}],
                           meta={"source_file": "synthetic"}))
    return recs, planted


def bench_filters(n: int, seed: int, threshold: float = 0.7, num_perm: int = 64) -> dict:
    recs, planted = make_records(n, 0.05, seed)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Path(tmp) / "bench.jsonl"
        bench.write_text("\n".join(json.dumps({"question": r.messages[1]["content"][:60]}, ensure_ascii=False)
                                   for r in recs[10:1010:10]), encoding="utf-8")  # 100 contaminated answers
        t0, c0 = time.perf_counter(), time.process_time()
        phi = PHIScrubber()
        steps = [("phi", phi), ("exact", ExactDedup()), ("near", NearDedup(threshold, 5, num_perm)),
                 ("decontam", Decontaminator([bench]))]
        tallies: dict = {}
        kept = {r.id for r in run_filters(recs, steps, tallies)}
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    caught = len([p for p in planted if p not in kept])
    near_ids = {r["where"] for r in tallies["near"].rejects}
    false_pos = len(near_ids - planted)
    return {"records": n, "near_dup_threshold": threshold, "num_perm": num_perm, "wall_s": round(wall, 2), "records_per_s": round(n / wall), "cpu_s": round(cpu, 2),
            "records_per_cpu_s": round(n / cpu), "load_avg_1min": os.getloadavg()[0],
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "planted_near_dups": len(planted), "near_dup_recall": round(caught / max(1, len(planted)), 3),
            "near_dup_false_positives": false_pos,
            "dropped": {k: dict(t.dropped) for k, t in tallies.items()}, "phi": dict(phi.counts)}


def bench_teacher(concurrency: int, latency: float, requests: int) -> dict:
    """LLMClient-client requests/s against tests/fake_openai.py run in its own process (no GIL sharing),
    timed after one warm-up call (the one-time ``import openai`` and first connection)."""
    import subprocess

    from medtune.llm import LLMClient, LLMConfig

    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, str(root / "tests" / "fake_openai.py"), str(latency)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        base_url = server.stdout.readline().strip()
        t = LLMClient(LLMConfig(base_url=base_url, model="m", concurrency=concurrency))
        t.complete_many([[{"role": "user", "content": "warm-up"}]])  # imports openai (~0.6 s), first connection
        msgs = [[{"role": "user", "content": f"question {i}"}] for i in range(requests)]
        t0 = time.perf_counter()
        out = t.complete_many(msgs)
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait()
    ideal = concurrency / latency
    return {"requests": requests, "concurrency": concurrency, "latency_s": latency, "wall_s": round(wall, 2),
            "req_per_s": round(requests / wall, 1), "ideal_req_per_s": ideal,
            "efficiency": round(requests / wall / ideal, 3), "errors": sum(not hasattr(o, "text") for o in out),
            "load_avg_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.7, help="near-dup Jaccard threshold")
    ap.add_argument("--num-perm", type=int, default=64)
    ap.add_argument("--teacher", action="store_true", help="measure teacher-client throughput instead")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    ap.add_argument("--requests", type=int, default=960)
    a = ap.parse_args()
    res = bench_teacher(a.concurrency, a.latency, a.requests) if a.teacher else bench_filters(a.records, a.seed, a.threshold, a.num_perm)
    print(json.dumps(res, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
