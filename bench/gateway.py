"""Added latency of gateway mode (``medtune serve --upstream``) over calling the upstream directly (issue 26).

    PYTHONPATH=. python bench/gateway.py                       # c = 1, 8, 32; with and without --index
    PYTHONPATH=. python bench/gateway.py --requests 100 --concurrency 1 8

The upstream is the stdlib OpenAI-compatible server of ``tests/fake_openai.py`` in a child process,
streaming an 8-word answer with ``--chunk-delay-ms`` between words after ``--latency-ms`` (so its
own time is fixed and small). The gateway is ``python -m medtune serve --upstream`` in a second
child process (default safety layer: rules + e5 classifier; with ``--index``, hybrid retrieval over
examples/sources/guidelines, built once into a temporary directory). The client (this process)
sends streamed chat completions of 20 ordinary zh/ko/en questions at each concurrency, first
directly to the upstream, then through the gateway, and reports p50/p99 of time to first token
(TTFT: the first non-empty content chunk) and of total time, and the gateway's overhead (p50 and
p99 differences). The screen's and retrieval's own latency (p50 of :func:`medtune.turn.prepare_turn`
in this process, one message at a time) are reported beside it: the target is overhead p50 <= 10 ms
plus the screen's latency (plus retrieval's with --index).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = [
    "What is hypertension?", "How should metformin be taken?", "What are the symptoms of asthma?",
    "How much salt should an adult eat per day?", "What is a normal resting heart rate?",
    "What does HbA1c measure?", "高血压患者应该注意什么？", "糖尿病的诊断标准是什么？", "感冒和流感有什么区别？",
    "孕妇可以喝咖啡吗？", "고혈압 환자는 무엇을 해야 하나요?", "당뇨병의 초기 증상은 무엇인가요?",
    "천식 흡입기는 어떻게 사용하나요?", "콜레스테롤 수치를 낮추는 방법은?", "How can I sleep better at night?",
    "Is it safe to take paracetamol and ibuprofen together?", "What is a healthy BMI?", "How do statins work?",
    "What vaccines do adults need?", "How long does a cold last?",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def one(http: httpx.AsyncClient, model: str, prompt: str) -> tuple[float, float]:
    """(TTFT, total) in seconds of one streamed completion."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    start, ttft = time.perf_counter(), None
    async with http.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                ttft = time.perf_counter() - start
    return ttft if ttft is not None else float("nan"), time.perf_counter() - start


async def measure(base_url: str, model: str, n: int, concurrency: int) -> dict:
    """p50/p99 TTFT and total (ms) of ``n`` streamed requests at ``concurrency``."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:
        await asyncio.gather(*(one(http, model, p) for p in PROMPTS[:4]))  # warm-up

        async def limited(i):
            async with sem:
                return await one(http, model, PROMPTS[i % len(PROMPTS)])

        results = await asyncio.gather(*(limited(i) for i in range(n)))
    ttft, total = [r[0] * 1000 for r in results], [r[1] * 1000 for r in results]
    return {"ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99), "total_p50": pct(total, 0.5),
            "total_p99": pct(total, 0.99)}


def start_upstream(latency_ms: float, chunk_delay_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), str(latency_ms / 1000),
                             str(chunk_delay_ms / 1000)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def start_gateway(upstream: str, index: Path | None):
    from servekit import Process, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "medtune", "serve", "--upstream", upstream, "--port", str(port),
           "--no-access-log", *(["--index", str(index)] if index else [])]
    return Process(cmd, port, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300).start()


def pipeline_latency(index: Path | None) -> float:
    """p50 (ms) of the turn pipeline alone (screen, and retrieval with ``index``) on the prompts."""
    from medtune.config import RagSettings, SafetyConfig
    from medtune.turn import prepare_turn

    rag = RagSettings(index=index) if index else None
    for p in PROMPTS[:4]:
        prepare_turn([{"role": "user", "content": p}], SafetyConfig(), rag=rag)  # warm-up (loads encoder, index)
    times = []
    for p in PROMPTS * 3:
        start = time.perf_counter()
        prepare_turn([{"role": "user", "content": p}], SafetyConfig(), rag=rag)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def build_index() -> Path:
    out = Path(tempfile.mkdtemp(prefix="medtune-bench-index-")) / "index"
    subprocess.run([sys.executable, "-m", "medtune", "index", "build", "--source",
                    str(ROOT / "examples" / "sources" / "guidelines"), "--index-dir", str(out)],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level and target")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--latency-ms", type=float, default=20.0, help="upstream delay before its first chunk")
    ap.add_argument("--chunk-delay-ms", type=float, default=5.0, help="upstream delay between chunks")
    ap.add_argument("--no-index", action="store_true", help="skip the runs with --index")
    args = ap.parse_args()
    upstream, url = start_upstream(args.latency_ms, args.chunk_delay_ms)
    rows = []
    try:
        for index in [None] + ([build_index()] if not args.no_index else []):
            own = pipeline_latency(index)
            gateway = start_gateway(url, index)
            try:
                for c in args.concurrency:
                    direct = asyncio.run(measure(url, "fake-model", args.requests, c))
                    via = asyncio.run(measure(gateway.url + "/v1", "fake-model", args.requests, c))
                    row = {"index": bool(index), "concurrency": c, "pipeline_p50_ms": round(own, 1),
                           **{f"direct_{k}": round(v, 1) for k, v in direct.items()},
                           **{f"gateway_{k}": round(v, 1) for k, v in via.items()},
                           **{f"overhead_{k}": round(via[k] - direct[k], 1) for k in direct}}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                gateway.kill()
    finally:
        upstream.kill()
    print("| index | c | screen(+retrieval) p50 | TTFT p50 direct / gateway / overhead | TTFT p99 overhead "
          "| total p50 direct / gateway / overhead | total p99 overhead |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'yes' if r['index'] else 'no'} | {r['concurrency']} | {r['pipeline_p50_ms']} ms "
              f"| {r['direct_ttft_p50']} / {r['gateway_ttft_p50']} / **{r['overhead_ttft_p50']}** ms "
              f"| {r['overhead_ttft_p99']} ms | {r['direct_total_p50']} / {r['gateway_total_p50']} / "
              f"{r['overhead_total_p50']} ms | {r['overhead_total_p99']} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
