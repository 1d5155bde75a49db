"""Added latency of gateway mode (``medtune serve --upstream``) over calling the upstream directly (issue 26).

    PYTHONPATH=. python bench/gateway.py                       # c = 1, 8, 32; with and without --index
    PYTHONPATH=. python bench/gateway.py --requests 100 --concurrency 1 8

The upstream is the stdlib OpenAI-compatible server of ``tests/fake_openai.py`` in a child process,
streaming an 8-word answer with ``--chunk-delay-ms`` between words after ``--latency-ms`` (so its
own time is fixed and small). The gateway is ``python -m medtune serve --upstream`` in a second
child process (default safety layer: rules + e5 classifier; with ``--index``, hybrid retrieval over
examples/sources/guidelines, built once into a temporary directory). The client (this process)
sends streamed chat completions of 20 ordinary zh/ko/en questions (each made unique with its
request number, so no cache helps) at each concurrency, first
directly to the upstream, then through the gateway (three gateways: screen off, to measure the
plumbing alone; screen on; screen on with ``--index``), and reports p50/p99 of time to first token
(TTFT: the first non-empty content chunk) and of total time, and the gateway's overhead (p50 and
p99 differences). The screen's and retrieval's own latency (p50 of :func:`medtune.turn.prepare_turn`
in this process, one message at a time) are reported beside it, and the gateway process's CPU time
per request (user + system, from /proc: little affected by other jobs, unlike wall time). The
target is overhead p50 <= 10 ms plus the screen's latency (plus retrieval's with --index).
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


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in ms (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


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
            async with sem:  # a new text each time: no cache (the e5 query cache) helps
                return await one(http, model, f"{PROMPTS[i % len(PROMPTS)]} ({concurrency}-{i})")  # new per row too

        results = await asyncio.gather(*(limited(i) for i in range(n)))
    ttft, total = [r[0] * 1000 for r in results], [r[1] * 1000 for r in results]
    return {"ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99), "total_p50": pct(total, 0.5),
            "total_p99": pct(total, 0.99)}


def start_upstream(latency_ms: float, chunk_delay_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), str(latency_ms / 1000),
                             str(chunk_delay_ms / 1000)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def start_gateway(upstream: str, index: Path | None, screen: bool):
    from servekit import Process, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "medtune", "serve", "--upstream", upstream, "--port", str(port),
           "--no-access-log", *(["--index", str(index)] if index else []),
           *([] if screen else ["--set", "serve.safety.enabled=false"])]
    return Process(cmd, port, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300).start()


def pipeline_latency(index: Path | None, screen: bool, gap_s: float = 0.0) -> float:
    """p50 (ms) of the turn pipeline alone (screen, and retrieval with ``index``) on the prompts.

    ``gap_s``: idle seconds before each call. At c=1 the gateway screens a message each time an
    upstream answer has ended, after a gap; on this 2-core VM the encoder's second OpenMP thread is
    slow to wake after ~50 ms idle (docs/benchmarks.md), so the screen's own latency is measured both
    back to back (``gap_s=0``) and with the gap the c=1 requests leave.
    """
    from medtune.config import RagSettings, SafetyConfig
    from medtune.turn import prepare_turn

    rag = RagSettings(index=index) if index else None
    safety = SafetyConfig(enabled=screen)
    for p in PROMPTS[:4]:
        prepare_turn([{"role": "user", "content": p}], safety, rag=rag)  # warm-up (loads encoder, index)
    times = []
    for i, p in enumerate(PROMPTS * 3):
        time.sleep(gap_s)
        start = time.perf_counter()
        # new text per row (index or not, screen or not): the screen remembers recent messages
        prepare_turn([{"role": "user", "content": f"{p} (x{gap_s}-{i}-{bool(index)}-{screen})"}], safety, rag=rag)
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
    index_dir = None if args.no_index else build_index()
    variants = [(False, None), (True, None)] + ([(True, index_dir)] if index_dir else [])
    try:
        for screen, index in variants:
            own = pipeline_latency(index, screen)
            gap = (args.latency_ms + 8 * args.chunk_delay_ms) / 1000  # an upstream answer's length
            spaced = pipeline_latency(index, screen, gap)
            gateway = start_gateway(url, index, screen)
            try:
                for c in args.concurrency:
                    direct = asyncio.run(measure(url, "fake-model", args.requests, c))
                    cpu0 = cpu_ms(gateway.proc.pid)
                    via = asyncio.run(measure(gateway.url + "/v1", "fake-model", args.requests, c))
                    cpu = (cpu_ms(gateway.proc.pid) - cpu0) / (args.requests + 4)  # + the warm-up requests
                    row = {"screen": screen, "index": bool(index), "concurrency": c, "load": os.getloadavg()[0],
                           "pipeline_p50_ms": round(own, 1), "pipeline_spaced_p50_ms": round(spaced, 1), "gateway_cpu_ms_per_request": round(cpu, 1),
                           **{f"direct_{k}": round(v, 1) for k, v in direct.items()},
                           **{f"gateway_{k}": round(v, 1) for k, v in via.items()},
                           **{f"overhead_{k}": round(via[k] - direct[k], 1) for k in direct}}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                gateway.kill()
    finally:
        upstream.kill()
    print("| screen | index | c | load | pipeline p50 alone (back to back / spaced) | gateway CPU / request | TTFT p50 direct / gateway / overhead | TTFT p99 overhead "
          "| total p50 direct / gateway / overhead | total p99 overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['screen'] else 'off'} | {'yes' if r['index'] else 'no'} | {r['concurrency']} "
              f"| {r['load']:.0f} | {r['pipeline_p50_ms']} / {r['pipeline_spaced_p50_ms']} ms | {r['gateway_cpu_ms_per_request']} ms "
              f"| {r['direct_ttft_p50']} / {r['gateway_ttft_p50']} / **{r['overhead_ttft_p50']}** ms "
              f"| {r['overhead_ttft_p99']} ms | {r['direct_total_p50']} / {r['gateway_total_p50']} / "
              f"{r['overhead_total_p50']} ms | {r['overhead_total_p99']} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
