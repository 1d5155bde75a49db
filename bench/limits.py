"""The machine's own limits and each benchmark's share of them: matmul GFLOP/s, memory bandwidth, rooflines.

Measured with torch on 1 and 2 intra-op threads (or ``--threads``):

- **compute**: ``torch.mm`` of two square ``n x n`` matrices, fp32 and bf16 (bf16 goes to oneDNN, which
  uses AMX-BF16 where the CPU has it), ``2 n^3`` FLOP per product; the best of ``--rounds`` timed
  windows (the least disturbed one on a shared machine) and their median.
- **memory bandwidth**: STREAM's copy (``a = b``: 2 x 8 bytes per element moved, counted as STREAM
  counts them) and triad (``a = b + s * c``: 3 x 8 bytes) kernels (McCalpin, "Memory Bandwidth and
  Machine Balance in Current High Performance Computers", IEEE TCCA Newsletter 1995), written as
  ``Tensor.copy_`` and ``torch.add(b, c, alpha=s, out=a)`` on fp64 tensors of ``--mem-mib`` MiB each,
  best and median of ``--rounds``. Use arrays larger than the last-level cache to measure DRAM.

Derived rooflines for a model (``--model``: an offline pack name, a model directory or a config.json):

- **training step** (LoRA on a frozen base): per trained token ``2 P`` FLOP forward and ``2 P`` for the
  activation gradients (frozen weights need no weight gradient), ``P`` = the decoder's linear weights,
  plus the LM head on the positions that have a target (``--answer-share``), attention scores and
  values over the row (``--seq-len``, causal: half the square) and the LoRA factors (their weight
  gradients included). Achieved GFLOP/s = FLOP per token x tokens/s; its share of the bf16 matmul limit
  is the CPU's model FLOP utilisation (MFU, PaLM, Chowdhery et al. 2022, appendix B).
- **decoding** (one sequence, batch 1): every weight is read once per new token, the token embedding
  excepted (one row); bytes per token = linear + LM head weights x bytes per weight (fp32 4, bf16 2), or
  for a ``.gguf`` file the sizes of its tensors as stored (quantized blocks), token embedding excluded.
  Achieved GB/s = bytes per token x tokens/s; its share of the copy bandwidth is the decode efficiency.

Measured figures to put against the limits: ``--train LABEL=TOKENS_PER_S[:THREADS]`` and
``--decode LABEL=WEIGHTS:TOKENS_PER_S[:THREADS]`` (WEIGHTS: fp32, bf16 or a .gguf path; THREADS
default 1 for decoding, 2 for training). Output: JSON (``--json``) and a markdown table on stdout.

Run (the figures in docs/benchmarks.md; state the load, ``uptime``, beside them):

    PYTHONPATH=. python bench/limits.py --json runs/bench/limits.json \\
        --train medtune=108.1 --decode transformers-fp32=fp32:6.0 --decode llamacpp-q4_k_m=q4.gguf:13.0

Quick (tiny sizes, seconds; checks the harness, the numbers mean nothing): ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _timed_rate(fn, work: float, rounds: int, min_s: float) -> dict:
    """Best and median of ``rounds`` windows of at least ``min_s`` seconds each: ``work`` units per call / second.

    Also per CPU second (``time.process_time``, all threads of the process): on one thread that is the
    rate while the thread runs, which a shared machine slows only through cache and memory contention,
    not through descheduling (``cpu_best``); on several threads it also counts spin-waiting.
    """
    fn()  # warm-up: first-call allocation, oneDNN primitive creation
    rates, cpu_rates = [], []
    for _ in range(rounds):
        calls, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        rates.append(calls * work / dt)
        cpu_rates.append(calls * work / max(time.process_time() - c0, 1e-9))
    return {"best": max(rates), "median": statistics.median(rates), "rounds": rates, "cpu_best": max(cpu_rates)}


def matmul_gflops(dtype: torch.dtype, threads: int, n: int, rounds: int, min_s: float) -> dict:
    """GFLOP/s of ``torch.mm`` on ``(n, n) x (n, n)`` matrices of ``dtype`` on ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return _timed_rate(lambda: torch.mm(a, b, out=out), 2 * n**3 / 1e9, rounds, min_s)


def bandwidth_gbs(threads: int, mib: int, rounds: int, min_s: float) -> dict:
    """STREAM copy and triad GB/s (1e9 bytes) on fp64 arrays of ``mib`` MiB each, ``threads`` threads."""
    torch.set_num_threads(threads)
    n = mib * 2**20 // 8
    a, b, c = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    copy = _timed_rate(lambda: a.copy_(b), 2 * 8 * n / 1e9, rounds, min_s)
    triad = _timed_rate(lambda: torch.add(b, c, alpha=3.0, out=a), 3 * 8 * n / 1e9, rounds, min_s)
    return {"copy": copy, "triad": triad}


def measure(threads: list[int], n: int, mib: int, rounds: int, min_s: float) -> dict:
    """Compute and bandwidth limits per thread count: ``{"threads": {t: {"fp32", "bf16", "copy", "triad"}}}``."""
    out = {}
    for t in threads:
        bw = bandwidth_gbs(t, mib, rounds, min_s)
        out[str(t)] = {"fp32_gflops": matmul_gflops(torch.float32, t, n, rounds, min_s),
                       "bf16_gflops": matmul_gflops(torch.bfloat16, t, n, rounds, min_s),
                       "copy_gbs": bw["copy"], "triad_gbs": bw["triad"]}
    return {"threads": out, "matmul_n": n, "mem_mib": mib, "rounds": rounds, "min_s": min_s}


# ----------------------------------------------------------------------------- model counts


def load_config(model: str) -> dict:
    """The ``config.json`` of an offline pack name, a model directory or the file itself."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        from medtune.models import resolve_model

        path = Path(resolve_model(model)) / "config.json"
    return json.loads(path.read_text())


def model_counts(cfg: dict) -> dict:
    """Weights of a decoder-only transformer (Llama/Qwen2 layout) from its config, in parameters.

    Returns:
        ``{"layers", "hidden", "linear_per_layer", "linear", "lm_head", "embedding", "heads", "head_dim"}``;
        ``linear`` = all layers' q, k, v, o, gate, up, down weights (biases ignored: under 0.1%).
    """
    d, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or d // heads
    kv = cfg.get("num_key_value_heads") or heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * ff
    vocab = cfg["vocab_size"]
    return {"layers": layers, "hidden": d, "linear_per_layer": per_layer, "linear": per_layer * layers,
            "lm_head": d * vocab, "embedding": d * vocab, "heads": heads, "head_dim": head_dim,
            "intermediate": ff, "kv_heads": kv}


def lora_params_per_token_flops(counts: dict, lora_r: int) -> float:
    """FLOP per token of rank-``lora_r`` LoRA on every linear layer: forward, input gradient, weight gradients."""
    d, ff, hd = counts["hidden"], counts["intermediate"], counts["head_dim"]
    shapes = [(d, counts["heads"] * hd), (d, counts["kv_heads"] * hd), (d, counts["kv_heads"] * hd),
              (counts["heads"] * hd, d), (d, ff), (d, ff), (ff, d)]
    per_layer = sum(lora_r * (i + o) for i, o in shapes)  # A: in x r, B: r x out
    return 6 * per_layer * counts["layers"]  # 2 forward + 2 input grad + 2 weight grad


def train_flops_per_token(counts: dict, seq_len: int, answer_share: float, lora_r: int, causal: bool = True) -> dict:
    """FLOP per trained token of a LoRA step on a frozen base (see module doc); components and total.

    Args:
        counts: :func:`model_counts`.
        seq_len: tokens per row.
        answer_share: LM-head rows per token.
        lora_r: LoRA rank (every linear layer).
        causal: count the causal half of the attention square (the work a causal kernel does); False
            counts the whole square, as ``torch.utils.flop_counter`` does for every attention product.
    """
    linear = 4 * counts["linear"]
    head = 4 * counts["lm_head"] * answer_share
    # scores (q k^T) and values (p v): 2 * 2 * heads * head_dim per (query, key) pair, causal: seq_len / 2 keys
    # per query on average; forward 1x, backward 2x (gradients of both operands).
    keys = seq_len / 2 if causal else seq_len
    attention = 3 * 4 * counts["heads"] * counts["head_dim"] * keys * counts["layers"]
    lora = lora_params_per_token_flops(counts, lora_r)
    return {"linear": linear, "lm_head": head, "attention": attention, "lora": lora,
            "total": linear + head + attention + lora}


def gguf_bytes_per_token(path: Path) -> dict:
    """Bytes of a GGUF file's tensors as stored, and what one decoded token reads (all but the token embedding)."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    total = sum(int(t.n_bytes) for t in tensors)
    embed = sum(int(t.n_bytes) for t in tensors if t.name == "token_embd.weight")
    tied = not any(t.name == "output.weight" for t in tensors)  # tied: the LM head reads token_embd in full
    return {"file_tensor_bytes": total, "bytes_per_token": total if tied else total - embed}


def decode_bytes_per_token(counts: dict, weights: str) -> float:
    """Weight bytes read per decoded token for ``weights`` = fp32, bf16, or a .gguf path."""
    if weights in ("fp32", "bf16"):
        return (counts["linear"] + counts["lm_head"]) * (4 if weights == "fp32" else 2)
    return float(gguf_bytes_per_token(Path(weights))["bytes_per_token"])


# ----------------------------------------------------------------------------- shares


def _limit(limits: dict, threads: int, key: str) -> float | None:
    row = limits["threads"].get(str(threads))
    return row[key]["best"] if row else None


def shares(limits: dict, counts: dict, flops: dict, train: list[tuple], decode: list[tuple]) -> list[dict]:
    """Each measured figure against its limit: rows of ``{kind, label, threads, tokens_per_s, achieved, limit,
    share, ceiling_tokens_per_s}`` (GFLOP/s for training, GB/s for decoding)."""
    rows = []
    for label, tps, threads in train:
        peak = _limit(limits, threads, "bf16_gflops")
        achieved = flops["total"] * tps / 1e9
        rows.append({"kind": "train (bf16 GFLOP/s)", "label": label, "threads": threads, "tokens_per_s": tps,
                     "achieved": achieved, "limit": peak, "share": achieved / peak if peak else None,
                     "ceiling_tokens_per_s": peak * 1e9 / flops["total"] if peak else None})
    for label, weights, tps, threads in decode:
        bw = _limit(limits, threads, "copy_gbs")
        per_token = decode_bytes_per_token(counts, weights)
        achieved = per_token * tps / 1e9
        rows.append({"kind": "decode (GB/s)", "label": label, "threads": threads, "tokens_per_s": tps,
                     "bytes_per_token": per_token, "achieved": achieved, "limit": bw,
                     "share": achieved / bw if bw else None, "ceiling_tokens_per_s": bw * 1e9 / per_token if bw else None})
    return rows


def limits_table(limits: dict) -> str:
    """Markdown table of the measured limits: best window per wall second (median in brackets) and per CPU second."""
    lines = ["| threads | fp32 matmul GFLOP/s | bf16 matmul GFLOP/s | copy GB/s | triad GB/s |", "|---|---|---|---|---|"]
    for t, row in limits["threads"].items():
        cells = [f"{row[k]['best']:.1f} ({row[k]['median']:.1f}); per CPU s {row[k]['cpu_best']:.1f}"
                 for k in ("fp32_gflops", "bf16_gflops", "copy_gbs", "triad_gbs")]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shares_table(rows: list[dict]) -> str:
    """Markdown table of :func:`shares` rows."""
    lines = ["| what | label | threads | tokens/s | achieved | limit | share | ceiling tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['kind']} | {r['label']} | {r['threads']} | {r['tokens_per_s']:.1f} | {r['achieved']:.1f} | "
                     f"{fmt(r['limit'], '.1f')} | {fmt(r['share'], '.1%')} | {fmt(r['ceiling_tokens_per_s'], '.0f')} |")
    return "\n".join(lines)


def _parse_train(value: str) -> tuple:
    label, _, rest = value.partition("=")
    tps, _, threads = rest.partition(":")
    return label, float(tps), int(threads or 2)


def _parse_decode(value: str) -> tuple:
    label, _, rest = value.partition("=")
    weights, tps, *threads = rest.split(":")
    if weights not in ("fp32", "bf16") and not Path(weights).is_file():
        raise SystemExit(f"--decode {value}: weights must be fp32, bf16 or an existing .gguf file")
    return label, weights, float(tps), int(threads[0]) if threads else 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to measure")
    p.add_argument("--matmul-n", type=int, default=2048, help="square matrix size for the matmul limit")
    p.add_argument("--mem-mib", type=int, default=1024, help="MiB per array for copy/triad (3 arrays)")
    p.add_argument("--rounds", type=int, default=5, help="timed windows per measurement (best and median reported)")
    p.add_argument("--min-s", type=float, default=1.0, help="seconds per timed window")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="pack name, model dir or config.json")
    p.add_argument("--seq-len", type=int, default=512, help="packed row length of the training step (tokens)")
    p.add_argument("--answer-share", type=float, default=0.75,
                   help="LM-head rows per trained token (answer positions rounded up to 128 rows: the quickstart's "
                        "~321 answer tokens per 512-token row give 384 rows, 0.75)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--train", action="append", default=[], type=_parse_train, metavar="LABEL=TOKENS_PER_S[:THREADS]")
    p.add_argument("--decode", action="append", default=[], type=_parse_decode,
                   metavar="LABEL=WEIGHTS:TOKENS_PER_S[:THREADS]")
    p.add_argument("--json", type=Path, default=None, help="write everything here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one short round: checks the harness only")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.matmul_n, args.mem_mib, args.rounds, args.min_s = 64, 4, 1, 0.01
    saved = torch.get_num_threads()
    limits = measure(args.threads, args.matmul_n, args.mem_mib, args.rounds, args.min_s)
    torch.set_num_threads(saved)
    counts = model_counts(load_config(args.model))
    flops = train_flops_per_token(counts, args.seq_len, args.answer_share, args.lora_r)
    rows = shares(limits, counts, flops, args.train, args.decode)
    load = os.getloadavg()
    report = {"limits": limits, "model": args.model, "counts": counts, "train_flops_per_token": flops,
              "decode_bytes_per_token": {w: decode_bytes_per_token(counts, w) for w in ("fp32", "bf16")},
              "shares": rows, "loadavg": load, "cpus": os.cpu_count(), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "quick": args.quick}
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
          + ("  (machine loaded: limits are lower bounds)" if load[0] > 0.5 else ""))
    print(limits_table(limits))
    print(f"\n{args.model}: {flops['total'] / 1e9:.3f} GFLOP per trained token (linear {flops['linear'] / 1e9:.3f}, "
          f"LM head {flops['lm_head'] / 1e9:.3f}, attention {flops['attention'] / 1e9:.3f}, LoRA {flops['lora'] / 1e9:.3f}); "
          f"decode reads {report['decode_bytes_per_token']['fp32'] / 1e9:.2f} GB/token fp32, "
          f"{report['decode_bytes_per_token']['bf16'] / 1e9:.2f} bf16")
    if rows:
        print("\n" + shares_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
