"""Acceptance soak of gateway mode (issue 26): the upstream is killed and restarted once mid-run.

    PYTHONPATH=. python bench/soak_gateway.py --requests 600 --concurrency 16        # tiny random model
    PYTHONPATH=. python bench/soak_gateway.py --model qwen2.5-coder-0.5b-instruct --requests 600

Starts ``medtune serve`` on the model in a child process (the upstream) and ``medtune serve
--upstream`` in this process (the gateway, with an API key), then sends ``--requests`` chat
completions at ``--concurrency`` through the gateway: 5% malformed bodies, 5% streams the client
drops after the first event, 1% bodies over the limit, the rest valid (half streamed). After
``--kill-at`` answers the upstream is killed (SIGKILL) and, ``--down-s`` seconds later, started
again. It stops by itself after the last request and reports the statuses (``200+error``: a
stream that ended with an error event), the gateway's ``/health`` latency and the status of one
request after the restart. Exit status 1 when any 5xx other than 502/503/504 was answered, a
request failed at the client (connection error, timeout), or the gateway did not answer after the
restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from medtune.config import ServeConfig  # noqa: E402
from soak_serve import MALFORMED, plan  # noqa: E402

KEY = "soak-key"


async def one(http: httpx.AsyncClient, kind: str, i: int, model: str, limit: int, max_tokens: int) -> str:
    """One request; returns its status, with ``+error`` for a stream that ended with an error event."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Question {i}: what helps with high blood pressure?"}]}
    if kind == "malformed":
        raw = random.Random(i).choice(MALFORMED).replace(b'"M"', json.dumps(model).encode())
        return str((await http.post("/v1/chat/completions", content=raw)).status_code)
    if kind == "oversize":
        body["messages"][0]["content"] = "x" * (limit + 1)
    if kind in ("plain", "oversize"):
        return str((await http.post("/v1/chat/completions", json=body)).status_code)
    error = False
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        async for line in r.aiter_lines():
            error |= line.startswith('data: {"error"')
            if kind == "cancel":
                break  # leaving the block closes the connection mid-stream
    return f"{r.status_code}{'+error' * error}"


async def chaos(upstream, kill_at: int, down_s: float, answered: list, log: dict) -> None:
    """Kill the upstream after ``kill_at`` answers, start it again ``down_s`` s later."""
    while len(answered) < kill_at:
        await asyncio.sleep(0.02)
    upstream.kill()
    log["killed_after"], t = len(answered), time.perf_counter()
    await asyncio.sleep(down_s)
    await asyncio.to_thread(upstream.start)
    log["down_s"] = round(time.perf_counter() - t, 1)
    log["restarted_after"] = len(answered)


async def soak(url: str, upstream, model: str, n: int, concurrency: int, limit: int, max_tokens: int,
               kill_at: int, down_s: float, seed: int = 0) -> dict:
    """Run the soak against the gateway at ``url``; returns the report (see the module docstring)."""
    health: list[float] = []
    answered: list[str] = []
    events: dict = {}
    done = asyncio.Event()

    async def poll():
        async with httpx.AsyncClient(base_url=url, timeout=30) as h:
            while not done.is_set():
                start = time.perf_counter()
                ok = (await h.get("/health")).status_code == 200
                health.append(time.perf_counter() - start if ok else float("inf"))
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        sem = asyncio.Semaphore(concurrency)

        async def limited(i, kind):
            async with sem:
                try:
                    status = await one(http, kind, i, model, limit, max_tokens)
                except httpx.HTTPError as e:
                    status = f"client {type(e).__name__}"
                answered.append(status)
                return status

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(poll()), asyncio.create_task(chaos(upstream, kill_at, down_s, answered, events))]
        statuses = await asyncio.gather(*(limited(i, k) for i, k in enumerate(plan(n, seed))))
        done.set()
        await asyncio.gather(*tasks)
        after = await one(http, "plain", n, model, limit, max_tokens)  # the restarted upstream answers again
    health.sort()
    bad_5xx = [s for s in statuses if s[:1] == "5" and s[:3] not in ("502", "503", "504")]
    return {"requests": n, "concurrency": concurrency, "seconds": round(time.perf_counter() - t0, 1),
            "statuses": dict(sorted(Counter(statuses).items())), "5xx_not_502_503_504": len(bad_5xx),
            "client_errors": sum(s.startswith("client") for s in statuses), **events, "after_restart": after,
            "health_polls": len(health), "health_p50_s": round(statistics.median(health), 4),
            "health_p99_s": round(health[min(len(health) - 1, int(len(health) * 0.99))], 4)}


def upstream_process(model: str, max_tokens: int):
    """``medtune serve`` on ``model`` as a child process on a free port (not yet started)."""
    from servekit import Process, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "medtune", "serve", "--model", model, "--port", str(port),
           "--set", f"serve.generation.max_new_tokens={max_tokens}"]
    return Process(cmd, port, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def run(model: str, n: int, concurrency: int, max_tokens: int, kill_at: int, down_s: float,
        limit: int = 64 * 1024, seed: int = 0) -> dict:
    """Start the upstream and the gateway, soak, stop both; returns the report."""
    from servekit import running_gateway

    upstream = upstream_process(model, max_tokens).start()
    try:
        cfg = ServeConfig(upstream=upstream.url + "/v1", api_key=KEY, max_body_bytes=limit, access_log=False)
        with running_gateway(cfg) as gw:
            return asyncio.run(soak(gw.url, upstream, model, n, concurrency, limit, max_tokens, kill_at, down_s, seed))
    finally:
        upstream.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model of the upstream (default: a tiny random 2-layer model)")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--kill-at", type=int, default=200, help="answers before the upstream is killed")
    ap.add_argument("--down-s", type=float, default=2.0, help="seconds the upstream stays down before its restart")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.model is None:
        from serve import tiny_model_dir
        args.model = str(tiny_model_dir())
    report = run(args.model, args.requests, args.concurrency, args.max_tokens, args.kill_at, args.down_s, seed=args.seed)
    print(json.dumps(report, indent=2))
    ok = report["5xx_not_502_503_504"] == 0 and report["client_errors"] == 0 and report["after_restart"] == "200"
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
