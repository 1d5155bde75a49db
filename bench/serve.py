"""Serving benchmark: latency and throughput of `medtune serve` on 127.0.0.1 vs calling generate directly.

    PYTHONPATH=. python bench/serve.py                     # tiny random 2-layer model (seconds)
    PYTHONPATH=. python bench/serve.py --model smollm2-135m-instruct --requests 16 --max-tokens 32
    PYTHONPATH=. python bench/serve.py --llamacpp --model qwen2.5-coder-0.5b-instruct --gguf-dir runs/bench-gguf

``--llamacpp``: the llama.cpp arm instead. The model is exported once (``medtune export``, q8_0 and
q4_k_m, kept in ``--gguf-dir``) and the same guarded prompts are answered one at a time (greedy,
``--max-tokens``) by transformers (float32) and by llama.cpp at each level: decode tokens/s
(generated tokens / wall time of the answers) and p50 latency per answer, and the speed-up.

Reports p50/p95 latency and requests/s at concurrency 1, 4 and 16 (non-streaming requests with
the same prompt, greedy, fixed max_tokens), the server overhead at concurrency 1 relative to
`chat_once` on the same guarded messages, and the throughput gain of concurrency 16 over 1
(dynamic batching). Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from medtune.config import GenerationSettings, SafetyConfig, ServeConfig  # noqa: E402
from medtune.generation import chat_once  # noqa: E402
from medtune.safety import guard  # noqa: E402

PROMPT = [{"role": "user", "content": "What lifestyle changes help with high blood pressure?"}]


def tiny_model_dir() -> str:
    from conftest import build_model, build_tokenizer

    path = Path(tempfile.mkdtemp(prefix="medtune-bench-"))
    tok = build_tokenizer()
    model = build_model("qwen2", len(tok))
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def load(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> tuple[list[float], float]:
    """Send ``n`` requests with at most ``concurrency`` in flight; returns (latencies in s, wall seconds)."""
    sem, latencies = asyncio.Semaphore(concurrency), []
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        async def one():
            async with sem:
                t = time.perf_counter()
                r = await http.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
    return latencies, time.perf_counter() - start


LLAMA_PROMPTS = ["What lifestyle changes help with high blood pressure?", "高血压患者在生活方式上应该注意什么？",
                 "천식 환자가 흡입기를 사용할 때 주의할 점은 무엇인가요?", "How should metformin be taken?"]


def _answer(model, tokenizer, messages: list[dict], settings: GenerationSettings) -> tuple[float, int]:
    """Seconds and generated tokens for one greedy answer (transformers or llama.cpp)."""
    import torch

    from medtune.generation import generate_kwargs, render_prompt

    ids = render_prompt(tokenizer, messages)
    t = time.perf_counter()
    if getattr(model, "backend", None) == "llamacpp":
        n = len(list(model.stream_tokens(ids[0].tolist(), settings)))
    else:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **generate_kwargs(model, tokenizer, settings))
        n = out.shape[1] - ids.shape[1]
    return time.perf_counter() - t, n


def llamacpp_arm(model: str, gguf_dir: Path, rounds: int, max_tokens: int) -> None:
    """transformers vs llama.cpp q8_0 / q4_k_m on the same prompts; prints a markdown table."""
    from medtune.config import ExportConfig
    from medtune.export.stage import export_model
    from medtune.models import load_chat_model

    files = {q: next(iter(gguf_dir.glob(f"*-{q}.gguf")), None) for q in ("q8_0", "q4_k_m")}
    if not all(files.values()):
        summary = export_model(ExportConfig(model=model, output_dir=gguf_dir, quant=["q8_0", "q4_k_m"]))
        files = {q: Path(summary["files"][q]) for q in ("q8_0", "q4_k_m")}
    import os

    import torch

    from medtune.llamacpp import threads

    torch.set_num_threads(threads())  # the same CPU threads for both backends
    settings = GenerationSettings(max_new_tokens=max_tokens)
    arms = {"transformers fp32": (model, "transformers"), **{f"llama.cpp {q}": (str(p), "llamacpp") for q, p in files.items()}}
    rows = {}
    for name, (spec, backend) in arms.items():
        m, tok = load_chat_model(spec, backend=backend)
        prompts = [guard([{"role": "user", "content": p}], SafetyConfig()).messages for p in LLAMA_PROMPTS]
        _answer(m, tok, prompts[0], settings)  # warm-up
        runs = [_answer(m, tok, msgs, settings) for _ in range(rounds) for msgs in prompts]
        rows[name] = (sum(n for _, n in runs) / sum(s for s, _ in runs), statistics.median(s for s, _ in runs))
        del m, tok
    base = rows["transformers fp32"][0]
    print(f"\nmodel: {model}; {len(LLAMA_PROMPTS)} prompts x {rounds} rounds, greedy, max_tokens {max_tokens}, one at a time, "
          f"{threads()} CPU thread(s) for both backends (MEDTUNE_LLAMA_THREADS; {os.cpu_count()} logical CPUs)\n")
    print("| arm | decode tokens/s | p50 latency per answer (s) | speed-up |\n|---|---|---|---|")
    for name, (tps, p50) in rows.items():
        print(f"| {name} | {tps:.1f} | {p50:.2f} | {tps / base:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir or pack (default: tiny random model)")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--llamacpp", action="store_true", help="transformers vs llama.cpp q8_0/q4_k_m instead")
    ap.add_argument("--gguf-dir", type=Path, default=Path("runs/bench-gguf"), help="where the exported GGUF files are kept")
    ap.add_argument("--rounds", type=int, default=2, help="--llamacpp: rounds over the prompts")
    args = ap.parse_args()
    if args.llamacpp:
        llamacpp_arm(args.model or "qwen2.5-coder-0.5b-instruct", args.gguf_dir, args.rounds, args.max_tokens)
        return
    from servekit import running_server

    model = args.model or tiny_model_dir()
    cfg = ServeConfig(model=model, max_batch_size=args.max_batch_size,
                      generation=GenerationSettings(max_new_tokens=args.max_tokens))
    with running_server(cfg) as server:
        eng = server.engine
        messages = guard(PROMPT, SafetyConfig()).messages
        settings = GenerationSettings(max_new_tokens=args.max_tokens)
        chat_once(eng.model, eng.tokenizer, messages, settings)  # warm-up
        direct = []
        for _ in range(args.requests):
            t = time.perf_counter()
            chat_once(eng.model, eng.tokenizer, messages, settings)
            direct.append(time.perf_counter() - t)
        asyncio.run(load(server.url, model, 4, 1, args.max_tokens))  # warm-up
        rows = {}
        for c in (1, 4, 16):
            lat, wall = asyncio.run(load(server.url, model, args.requests, c, args.max_tokens))
            rows[c] = (pct(lat, 0.5), pct(lat, 0.95), args.requests / wall)
    d50 = statistics.median(direct)
    print(f"\nmodel: {'tiny random qwen2 (2 layers, hidden 64)' if args.model is None else args.model}; "
          f"{args.requests} requests per level, max_tokens {args.max_tokens}, greedy, non-streaming\n")
    print("| concurrency | p50 latency (ms) | p95 latency (ms) | requests/s |\n|---|---|---|---|")
    print(f"| direct `chat_once` (1) | {d50 * 1000:.1f} | {pct(direct, 0.95) * 1000:.1f} | {1 / statistics.mean(direct):.2f} |")
    for c, (p50, p95, rps) in rows.items():
        print(f"| {c} | {p50 * 1000:.1f} | {p95 * 1000:.1f} | {rps:.2f} |")
    print(f"\nserver overhead at concurrency 1 (p50 vs direct p50): {(rows[1][0] - d50) / d50 * 100:+.1f}%")
    print(f"throughput gain, concurrency 16 vs 1: {rows[16][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    main()
