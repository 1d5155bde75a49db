"""Fact-recall evaluation speed by batch size, interleaved, with the greedy answers compared across arms.

Runs ``medtune.eval.fact.run_fact`` on the quickstart's 18 questions (greedy, 40 new tokens, as the
quickstart's eval stage) for each model and each ``--batch-sizes`` arm, the arms taking turns and the
order reversed every round. Per run: wall and CPU seconds (``time.process_time``: with one thread it is
the work done, whatever else runs), forward passes (a hook on the model), new tokens generated, the load
average at start. The answers of every arm must equal those of the first arm (greedy: batching must
not change an answer); the script says which differ.

Run (the figures in docs/benchmarks.md; say whether the machine was idle):

    PYTHONPATH=. python bench/eval_fact.py --models base=qwen2.5-coder-0.5b-instruct finetuned=runs/quickstart/merged \\
        --batch-sizes 4 18 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(backend, data: Path, batch_size: int, max_new_tokens: int, max_items: int) -> dict:
    """One fact-recall run; figures and the answers by question id."""
    from medtune.config import GenerationSettings
    from medtune.eval.config import FactConfig
    from medtune.eval.fact import run_fact

    calls = []
    hook = backend.model.register_forward_hook(lambda *a: calls.append(1))
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        run_fact(FactConfig(data=data, model=backend.name, batch_size=batch_size, max_items=max_items, output_dir=Path(out),
                            generation=GenerationSettings(max_new_tokens=max_new_tokens)), backend=backend)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows = [json.loads(line) for line in (Path(out) / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    hook.remove()
    return {"batch_size": batch_size, "wall_s": wall, "cpu_s": cpu, "forward_passes": len(calls), "loadavg_start": load,
            "answers": {r["id"]: r["answer"] for r in rows}, "hit_any": sum(r["hit_any"] for r in rows)}


def bench_model(name: str, spec: str, args) -> dict:
    """Every arm on one model, interleaved; medians and the answer check."""
    import torch

    from medtune.eval.backends import load_backend

    backend = load_backend(f"{name}={spec}")
    runs = []
    for rnd in range(args.rounds):
        for bs in (args.batch_sizes if rnd % 2 == 0 else args.batch_sizes[::-1]):
            r = one_run(backend, args.data, bs, args.max_new_tokens, args.max_items)
            runs.append({**r, "round": rnd})
            print(f"{name} round {rnd} batch {bs}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                  f"{r['forward_passes']} forward passes, load {r['loadavg_start']}", flush=True)
    first = runs[0]["answers"]
    arms = {}
    for bs in args.batch_sizes:
        rs = [r for r in runs if r["batch_size"] == bs]
        differ = sorted({q for r in rs for q in r["answers"] if r["answers"][q] != first[q]})
        arms[bs] = {"wall_s": statistics.median(r["wall_s"] for r in rs), "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                    "forward_passes": rs[0]["forward_passes"], "hit_any": rs[0]["hit_any"], "answers_differ": differ}
    by = {(r["round"], r["batch_size"]): r for r in runs}
    base = args.batch_sizes[0]
    for bs in args.batch_sizes:
        arms[bs]["speedup_wall_per_round"] = [by[k, base]["wall_s"] / by[k, bs]["wall_s"] for k in range(args.rounds)]
        arms[bs]["speedup_cpu_per_round"] = [by[k, base]["cpu_s"] / by[k, bs]["cpu_s"] for k in range(args.rounds)]
    del backend
    return {"model": spec, "threads": torch.get_num_threads(), "arms": arms, "runs": runs}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["base=qwen2.5-coder-0.5b-instruct"], metavar="NAME=SPEC")
    p.add_argument("--data", type=Path, default=ROOT / "examples" / "eval" / "quickstart_facts.jsonl")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 18], help="the first is the reference arm")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--max-items", type=int, default=18)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "eval_fact.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    models = {}
    for item in args.models:
        name, _, spec = item.partition("=")
        models[name] = bench_model(name, spec, args)
    print("\n| model | threads | batch size | forward passes | wall s (median) | CPU s (median) | speed-up wall per round | "
          "speed-up CPU per round | answers differing from the first arm | questions with >= 1 hit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in models.items():
        for bs, a in m["arms"].items():
            print(f"| {name} | {m['threads']} | {bs} | {a['forward_passes']} | {a['wall_s']:.1f} | {a['cpu_s']:.1f} | "
                  f"{', '.join(f'{x:.2f}' for x in a['speedup_wall_per_round'])} | "
                  f"{', '.join(f'{x:.2f}' for x in a['speedup_cpu_per_round'])} | {len(a['answers_differ'])} | {a['hit_any']} |")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "models": models, "loadavg_end": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
