"""Interleaved A/B of training settings on medtune's real SFT path: step time, CPU time, peak RSS, first losses.

Each arm is a set of ``TrainConfig`` overrides (``--arm NAME:FIELD=VALUE,FIELD=VALUE``) on the same model,
data and seed; every arm runs ``--steps`` optimizer steps in its own process (``build_trainer`` +
``trainer.train()``), and the arms take turns, the order reversed every round (A B, B A, A B ...), so a
load that drifts over the run weighs on every arm alike. Per run: wall and CPU seconds of each step
(``time.perf_counter`` / ``time.process_time`` between ``on_step_begin`` and ``on_step_end``; the first
step, which allocates and builds oneDNN primitives, is left out), non-padding tokens, the logged losses,
the process's peak RSS (``os.wait4``), torch's thread count and the load average at start.

On a shared machine, compare arms by the ratio within each round (adjacent runs) and by **CPU seconds
per token on one thread** (``num_threads=1`` in both arms): one thread never waits at a barrier, so
its CPU time is the work done, whatever else runs (cache and memory-bandwidth contention aside).

Run (the figures in docs/benchmarks.md):

    PYTHONPATH=. python bench/train_ab.py --arm master:bf16_frozen_base=false,num_threads=1 \\
        --arm frozen:bf16_frozen_base=true,num_threads=1 --steps 6 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = {"method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear",
        "learning_rate": 3e-4, "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "per_device_train_batch_size": 1,
        "max_seq_length": 512, "bf16": True, "save_steps": 10**6, "seed": 42, "logging_steps": 1}


def parse_arm(value: str) -> tuple[str, dict]:
    """``NAME:FIELD=VALUE,...`` -> ``(name, overrides)``; values parsed as JSON where they parse (true, 1, null)."""
    name, _, rest = value.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return name, overrides


def arm_main(spec_path: Path) -> None:
    """Child process: build the trainer with the arm's overrides, train, write the figures."""
    import torch
    from transformers import TrainerCallback

    from medtune.config import TrainConfig
    from medtune.train.sft import build_trainer

    spec = json.loads(spec_path.read_text())
    cfg = TrainConfig(**{**BASE, **spec["overrides"], "model": spec["model"], "train_file": Path(spec["train"]),
                         "output_dir": Path(spec["out"]), "max_steps": spec["steps"]})
    from medtune.threads import use_free_cores

    use_free_cores(cfg.num_threads)
    trainer, _, callback = build_trainer(cfg)
    steps = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            steps.append((time.perf_counter() - self.t, time.process_time() - self.c))

    trainer.add_callback(Timer())
    trainer.train()
    tokens = [h["num_tokens"] for h in callback.history if "num_tokens" in h]
    per_step = [b - a for a, b in zip([0] + tokens, tokens)]
    result = {"step_wall_s": [s[0] for s in steps], "step_cpu_s": [s[1] for s in steps], "step_tokens": per_step,
              "losses": [h["loss"] for h in callback.history if "loss" in h], "threads": torch.get_num_threads(),
              "speed": trainer.medtune_speed}
    Path(spec["result"]).write_text(json.dumps(result))


def run_arm(name: str, overrides: dict, args, workdir: Path, rnd: int) -> dict:
    """One arm's run in its own process; figures plus peak RSS (``os.wait4``) and the load average at start."""
    out = workdir / f"r{rnd}-{name}"
    spec = {"model": args.model, "train": str(args.train), "out": str(out), "steps": args.steps,
            "overrides": overrides, "result": str(out) + ".json"}
    spec_path = Path(str(out) + ".spec.json")
    spec_path.write_text(json.dumps(spec))
    load = [round(x, 2) for x in os.getloadavg()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with open(str(out) + ".log", "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "_arm", str(spec_path)], stdout=log, stderr=log, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"arm {name} failed; see {out}.log")
    r = json.loads(Path(spec["result"]).read_text())
    timed = slice(1, None)  # the first step allocates and creates oneDNN primitives
    tokens = sum(r["step_tokens"][timed])
    return {**r, "arm": name, "round": rnd, "loadavg_start": load, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "tokens_per_s": tokens / sum(r["step_wall_s"][timed]), "cpu_s_per_1k_tokens": 1e3 * sum(r["step_cpu_s"][timed]) / tokens,
            "median_step_wall_s": statistics.median(r["step_wall_s"][timed])}


def summarize(runs: list[dict], names: list[str]) -> dict:
    """Per arm medians; per round ratios of each arm to the first arm (tokens/s and CPU s per token)."""
    by = {(r["round"], r["arm"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    out = {}
    for name in names:
        rs = [by[k, name] for k in rounds]
        out[name] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                     "cpu_s_per_1k_tokens": statistics.median(r["cpu_s_per_1k_tokens"] for r in rs),
                     "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in rs),
                     "first_losses": rs[0]["losses"][:3], "threads": rs[0]["threads"],
                     "speed_vs_first": [by[k, name]["tokens_per_s"] / by[k, names[0]]["tokens_per_s"] for k in rounds],
                     "cpu_vs_first": [by[k, name]["cpu_s_per_1k_tokens"] / by[k, names[0]]["cpu_s_per_1k_tokens"] for k in rounds]}
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", action="append", type=parse_arm, required=True, metavar="NAME:FIELD=VALUE,...")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--train", type=Path, default=ROOT / "examples" / "medical_qa.jsonl")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every arm once, order reversed every round")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "train_ab.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from medtune.models import resolve_model

    args.model = str(Path(resolve_model(args.model)).resolve())
    args.train = args.train.resolve()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="train_ab_"))
    workdir.mkdir(parents=True, exist_ok=True)
    names, runs = [n for n, _ in args.arm], []
    for rnd in range(args.rounds):
        for name, overrides in (args.arm if rnd % 2 == 0 else args.arm[::-1]):
            r = run_arm(name, overrides, args, workdir, rnd)
            runs.append(r)
            print(f"round {rnd} {name}: {r['tokens_per_s']:.1f} tokens/s, {r['cpu_s_per_1k_tokens']:.2f} CPU s per 1k tokens, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['threads']} threads, load {r['loadavg_start']}, "
                  f"losses {[round(x, 4) for x in r['losses'][:3]]}", flush=True)
    summary = summarize(runs, names)
    print("\n| arm | threads | tokens/s (median) | CPU s / 1k tokens | peak RSS GiB | tokens/s vs first arm per round | CPU vs first arm per round | first losses |")
    print("|---|---|---|---|---|---|---|---|")
    for name, a in summary.items():
        print(f"| {name} | {a['threads']} | {a['tokens_per_s']:.1f} | {a['cpu_s_per_1k_tokens']:.2f} | {a['peak_rss_gib']:.2f} | "
              f"{', '.join(f'{x:.3f}' for x in a['speed_vs_first'])} | {', '.join(f'{x:.3f}' for x in a['cpu_vs_first'])} | "
              f"{', '.join(f'{x:.4f}' for x in a['first_losses'])} |")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "runs": runs, "loadavg_end": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["_arm"]:
        sys.path.insert(0, str(ROOT))
        arm_main(Path(sys.argv[2]))
    else:
        sys.path.insert(0, str(ROOT))
        main()
