"""Decode tokens/s by backend and thread count, and each arm's share of the memory-bandwidth roofline.

Arms (one sequence, greedy, the same chat prompt):

- ``hf-fp32``, ``hf-bf16``: transformers ``generate`` with the weights in float32 / bfloat16 (dynamic KV cache);
- ``hf-fp32-static``: float32 with ``cache_implementation="static"`` (a preallocated KV cache; no compile);
- ``llamacpp:<file.gguf>``: llama.cpp through llama-cpp-python (``--gguf``; e.g. q8_0 and q4_k_m exports).

Each arm runs at each ``--threads`` count (torch intra-op threads / llama.cpp ``n_threads``), the arms and
thread counts interleaved and the order reversed every round. Decode speed excludes the prompt: the
same prompt is generated once to 1 token and once to ``--tokens`` tokens (end-of-turn suppressed, so
every run decodes exactly that many), and tokens/s = (tokens - 1) / (difference of the two wall times).
Bytes per token come from ``bench/limits.py`` (all weights but the token embedding, as stored), so
achieved GB/s = bytes per token x tokens/s; with ``--limits runs/bench/limits.json`` (written by
``bench/limits.py``) each arm also gets its share of the copy bandwidth at the same thread count.
The transformers arms' first ``--compare`` tokens are compared with ``hf-fp32``'s (greedy equality).

Run (the figures in docs/benchmarks.md; say whether the machine was idle):

    PYTHONPATH=. python bench/decode.py --threads 1 2 --gguf runs/bench-gguf/model-q8_0.gguf runs/bench-gguf/model-q4_k_m.gguf \\
        --limits runs/bench/limits.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import limits as limits_mod  # noqa: E402

PROMPT = [{"role": "user", "content": "Explain in detail how high blood pressure is diagnosed and treated in adults."}]


def hf_arm(model, tokenizer, ids, tokens: int, threads: int, static: bool) -> tuple[float, list[int]]:
    """Wall and CPU seconds to decode ``tokens`` - 1 tokens after the first (prefill excluded), and the tokens."""
    import torch

    torch.set_num_threads(threads)
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
              suppress_tokens=[tokenizer.eos_token_id], **({"cache_implementation": "static"} if static else {}))
    times, cpus, out = [], [], None
    for n in (2, 1, tokens):  # the first run warms up (allocations, oneDNN primitives) and is not used
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **kw)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return times[2] - times[1], cpus[2] - cpus[1], out[0, ids.shape[1]:].tolist()


def llamacpp_arm(path: Path, prompt_ids: list[int], tokens: int, threads: int) -> tuple[float, list[int]]:
    """As :func:`hf_arm` for llama.cpp on ``threads`` threads (a ``Llama`` per call; the weights are mmapped)."""
    from medtune.llamacpp import import_llama_cpp

    llm = import_llama_cpp().Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    eos, times, cpus, out = llm.token_eos(), [], [], []
    for n in (2, 1, tokens):  # the first run warms up and is not used
        llm.reset()
        out = []
        t0, c0 = time.perf_counter(), time.process_time()
        for tok in llm.generate(prompt_ids, temp=0.0, logits_processor=[lambda ids, scores: _no_eos(scores, eos)]):
            out.append(tok)
            if len(out) >= n:
                break
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    del llm
    return times[2] - times[1], cpus[2] - cpus[1], out


def _no_eos(scores, eos: int):
    scores[eos] = -float("inf")
    return scores


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="pack name or model dir (transformers arms)")
    p.add_argument("--arms", nargs="*", default=["hf-fp32", "hf-bf16", "hf-fp32-static"], help="transformers arms (none: --arms)")
    p.add_argument("--gguf", nargs="*", type=Path, default=[], help="GGUF files: one llama.cpp arm each")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=48, help="decoded tokens per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compare", type=int, default=24, help="leading greedy tokens compared with hf-fp32")
    p.add_argument("--limits", type=Path, default=None, help="bench/limits.py JSON: shares of the copy bandwidth")
    p.add_argument("--json", type=Path, default=Path("runs/bench/decode.json"))
    return p.parse_args(argv)


def load_arms(args) -> dict:
    """``{arm: (kind, object, bytes per token)}`` for the requested arms."""
    import torch

    from medtune.generation import render_prompt
    from medtune.models import load_model, load_tokenizer

    counts = limits_mod.model_counts(limits_mod.load_config(args.model))
    tok = load_tokenizer(args.model)
    ids = render_prompt(tok, PROMPT)
    arms = {}
    fp32 = load_model(args.model, dtype=torch.float32).eval() if any(a.startswith("hf-") for a in args.arms) else None
    for arm in args.arms:
        model = fp32 if arm != "hf-bf16" else load_model(args.model, dtype=torch.bfloat16).eval()
        arms[arm] = ("hf", (model, tok, ids, arm.endswith("static")),
                     limits_mod.decode_bytes_per_token(counts, "bf16" if arm == "hf-bf16" else "fp32"))
    for path in args.gguf:
        arms[f"llamacpp:{path.name}"] = ("llamacpp", (path, ids[0].tolist()), float(limits_mod.decode_bytes_per_token(counts, str(path))))
    return arms


def main(argv=None) -> dict:
    args = parse_args(argv)
    arms = load_arms(args)
    limits = json.loads(args.limits.read_text())["limits"] if args.limits else None
    order = [(a, t) for a in arms for t in args.threads]
    runs = []
    for rnd in range(args.rounds):
        for arm, threads in (order if rnd % 2 == 0 else order[::-1]):
            kind, obj, per_token = arms[arm]
            load = [round(x, 2) for x in os.getloadavg()]
            seconds, cpu, toks = (hf_arm(*obj[:3], args.tokens, threads, obj[3]) if kind == "hf"
                                  else llamacpp_arm(*obj, args.tokens, threads))
            tps = (args.tokens - 1) / seconds
            runs.append({"arm": arm, "threads": threads, "round": rnd, "tokens_per_s": tps, "tokens": toks, "loadavg_start": load,
                         "tokens_per_cpu_s": (args.tokens - 1) / max(cpu, 1e-9)})
            print(f"round {rnd} {arm} x{threads}: {tps:.2f} tokens/s ({per_token * tps / 1e9:.2f} GB/s), load {load}", flush=True)
    rows = []
    reference = next((r["tokens"] for r in runs if r["arm"] == "hf-fp32"), None)
    for arm, threads in order:
        rs = [r for r in runs if r["arm"] == arm and r["threads"] == threads]
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        per_cpu = max(r["tokens_per_cpu_s"] for r in rs)
        per_token = arms[arm][2]
        bw = limits["threads"].get(str(threads), {}).get("copy_gbs", {}).get("best") if limits else None
        same = None
        if reference is not None and arm.startswith("hf-"):
            pairs = list(zip(reference[:args.compare], rs[0]["tokens"]))
            same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
        bw_cpu = limits["threads"].get(str(threads), {}).get("copy_gbs", {}).get("cpu_best") if limits else None
        rows.append({"arm": arm, "threads": threads, "tokens_per_s": tps, "bytes_per_token": per_token,
                     "gbs": per_token * tps / 1e9, "share": per_token * tps / 1e9 / bw if bw else None,
                     "tokens_per_cpu_s": per_cpu, "gb_per_cpu_s": per_token * per_cpu / 1e9,
                     "share_per_cpu_s": per_token * per_cpu / 1e9 / bw_cpu if bw_cpu and threads == 1 else None,
                     "same_leading_tokens_as_fp32": same})
    print("\n| arm | threads | decode tokens/s (median) | GB per token | achieved GB/s | share of copy bandwidth | "
          "tokens per CPU s (best) | GB per CPU s | share per CPU s (1 thread) | greedy tokens equal to hf-fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{r['share']:.0%}" if r["share"] is not None else "-"
        same = f"{r['same_leading_tokens_as_fp32']}/{min(args.compare, args.tokens)}" if r["same_leading_tokens_as_fp32"] is not None else "-"
        cpu_share = f"{r['share_per_cpu_s']:.0%}" if r["share_per_cpu_s"] is not None else "-"
        print(f"| {r['arm']} | {r['threads']} | {r['tokens_per_s']:.2f} | {r['bytes_per_token'] / 1e9:.3f} | {r['gbs']:.2f} | {share} | "
              f"{r['tokens_per_cpu_s']:.2f} | {r['gb_per_cpu_s']:.2f} | {cpu_share} | {same} |")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "runs": runs, "loadavg_end": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent))
    main()
