"""Bounded soak of `medtune serve` on 127.0.0.1 with hostile traffic mixed in (issue 11).

    PYTHONPATH=. python bench/soak_serve.py --requests 600 --concurrency 16      # tiny random model
    PYTHONPATH=. python bench/soak_serve.py --model smollm2-135m-instruct --requests 2000 --concurrency 32

Sends ``--requests`` chat completions at ``--concurrency``: 5% malformed bodies (bad JSON, bad
fields, lone surrogates, out-of-range seeds), 5% streams the client drops after the first chunk,
1% bodies over the server's ``max_body_bytes``, the rest valid (half streaming). Meanwhile it polls
``/health`` every 50 ms. It stops by itself after the last request and reports: 5xx count, other
statuses, ``/health`` p50/p99/max latency, and the process RSS growth from after a 20-request
warm-up to the end (server and client share the process, so this is an upper bound for the server).
Exit status 1 when 5xx > 0, ``/health`` p99 >= 1 s or RSS growth >= 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medtune.config import GenerationSettings, ServeConfig  # noqa: E402

MALFORMED = [
    b"{not json", b"[]", b'{"model": 1}', b'{"model": "M", "messages": []}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}',
    b'{"model": "M", "messages": [{"role": "doctor", "content": "hi"}]}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000000}',
    b'{"model": "M", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b"\xff\xfe\x00garbage",
]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plan(n: int, seed: int) -> list[str]:
    """Kinds of the n requests: 5% malformed, 5% cancelled streams, 1% oversize, the rest valid."""
    kinds = ["malformed"] * round(n * 0.05) + ["cancel"] * round(n * 0.05) + ["oversize"] * max(1, round(n * 0.01))
    kinds += ["stream" if i % 2 else "plain" for i in range(n - len(kinds))]
    random.Random(seed).shuffle(kinds)
    return kinds


async def one(http: httpx.AsyncClient, kind: str, i: int, model: str, limit: int, max_tokens: int) -> int:
    body = {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"Question {i}: what helps with high blood pressure?"}]}
    if kind == "malformed":
        raw = random.Random(i).choice(MALFORMED).replace(b'"M"', json.dumps(model).encode())
        return (await http.post("/v1/chat/completions", content=raw)).status_code
    if kind == "oversize":
        body["messages"][0]["content"] = "x" * (limit + 1)
        return (await http.post("/v1/chat/completions", json=body)).status_code
    if kind == "plain":
        return (await http.post("/v1/chat/completions", json=body)).status_code
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        async for _ in r.aiter_lines():
            if kind == "cancel":
                break  # leaving the block closes the connection mid-stream
    return r.status_code


async def soak(url: str, model: str, n: int, concurrency: int, limit: int, max_tokens: int, seed: int) -> dict:
    headers = {"Authorization": "Bearer soak-key"}
    health: list[float] = []
    done = asyncio.Event()

    async def poll():
        async with httpx.AsyncClient(base_url=url, timeout=30) as h:
            while not done.is_set():
                start = time.perf_counter()
                await h.get("/health")
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        await asyncio.gather(*(one(http, "plain", i, model, limit, max_tokens) for i in range(20)))  # warm-up
        rss0, t0 = rss_mib(), time.perf_counter()
        sem = asyncio.Semaphore(concurrency)

        async def limited(i, kind):
            async with sem:
                try:
                    return await one(http, kind, i, model, limit, max_tokens)
                except httpx.HTTPError as e:
                    return f"client {type(e).__name__}"

        poller = asyncio.create_task(poll())
        statuses = await asyncio.gather(*(limited(i, k) for i, k in enumerate(plan(n, seed))))
        done.set()
        await poller
    seconds = time.perf_counter() - t0
    health.sort()
    return {"requests": n, "concurrency": concurrency, "seconds": round(seconds, 1),
            "statuses": dict(Counter(str(s) for s in statuses)),
            "5xx": sum(isinstance(s, int) and s >= 500 for s in statuses),
            "health_polls": len(health), "health_p50_s": round(statistics.median(health), 4),
            "health_p99_s": round(health[min(len(health) - 1, int(len(health) * 0.99))], 4),
            "health_max_s": round(health[-1], 4),
            "rss_start_mib": round(rss0, 1), "rss_end_mib": round(rss_mib(), 1),
            "rss_growth_pct": round(100 * (rss_mib() - rss0) / rss0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model to serve (default: a tiny random 2-layer model)")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from servekit import running_server

    if args.model is None:
        from serve import tiny_model_dir
        args.model = tiny_model_dir()
    cfg = ServeConfig(model=args.model, api_key="soak-key", max_body_bytes=args.max_body_bytes,
                      generation=GenerationSettings(max_new_tokens=args.max_tokens))
    with running_server(cfg) as server:
        report = asyncio.run(soak(server.url, str(cfg.model), args.requests, args.concurrency, args.max_body_bytes,
                                  args.max_tokens, args.seed))
    print(json.dumps(report, indent=2))
    ok = report["5xx"] == 0 and report["health_p99_s"] < 1.0 and report["rss_growth_pct"] < 10
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
