"""Questions/s of MCQ scoring: log-likelihood (one batched forward pass) vs generate-then-parse.

    PYTHONPATH=. python bench/eval_mcq.py                                  # tiny random model (CI-size)
    PYTHONPATH=. python bench/eval_mcq.py --model smollm2-135m-instruct    # a real offline pack

Scores ``examples/eval/mcq_mixed.jsonl`` (30 zh/ko/en questions) with each mode and batch size,
and prints one markdown table row per setting (questions/s, forward passes, accuracy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from medtune.config import GenerationSettings
from medtune.eval.backends import load_backend
from medtune.eval.config import McqConfig
from medtune.eval.mcq import run_mcq


def tiny_model_dir() -> str:
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.conftest import build_model, build_tokenizer

    tok = build_tokenizer()
    path = Path(tempfile.mkdtemp()) / "tiny"
    model = build_model("qwen2", len(tok))
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Model spec (default: a tiny random 2-layer model).")
    ap.add_argument("--data", default="examples/eval/mcq_mixed.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="generate mode reply length.")
    ap.add_argument("--max-items", type=int, default=None, help="Score only the first N questions.")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    spec = args.model or tiny_model_dir()
    backend = load_backend(f"bench={spec}")
    calls = []
    backend.model.register_forward_hook(lambda *a: calls.append(1))
    print(f"model: {args.model or 'tiny random qwen2 (2 layers, hidden 64)'}; torch threads {torch.get_num_threads()}\n")
    print("| mode | batch size | questions | forward passes | seconds | questions/s | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for mode, bs in [("loglik", 1), ("loglik", 8), ("generate", 1), ("generate", 8)]:
        calls.clear()
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = run_mcq(McqConfig(data=Path(args.data), model="bench", mode=mode, batch_size=bs, output_dir=Path(out), max_items=args.max_items,
                                  generation=GenerationSettings(max_new_tokens=args.max_new_tokens)), backend=backend)
            dt = time.perf_counter() - t0
        print(f"| {mode} | {bs} | {r['n']} | {len(calls)} | {dt:.2f} | {r['n'] / dt:.1f} | {r['accuracy']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
