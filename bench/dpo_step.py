"""DPO LoRA step time on CPU: medtune's path vs a plain trl ``DPOTrainer`` + peft, same model, same pairs.

Model: the random-weight Llama of ``bench/train_step.py`` (4 layers, hidden 256) with the
smollm2-135m-instruct pack's tokenizer and chat template, saved once. Pairs: ``--pairs`` real
safety pairs made by the ``safety-pairs`` generator from ``medtune/safety/data/train_en.jsonl``
(urgent-care vs calm answers), read by :func:`medtune.preference_data.read_preferences`.

Arms, same seed, batch, LoRA (r=8, no dropout), beta, max_length and precision:

1. ``medtune``: :func:`medtune.train.preference.build_preference_trainer` with ``objective=dpo``
   (what ``medtune train --objective dpo`` and the recipe's ``align`` stage run: its logging
   callback, checkpoint settings and summary included).
2. ``trl``: ``trl.DPOTrainer(model, DPOConfig(...), peft_config=LoraConfig(...))`` on the same rows,
   with gradient checkpointing and bf16 set as medtune sets them (trl's DPO defaults turn both on).

The arms alternate ``--rounds`` times (trl, medtune, trl, medtune, ...) in one process, so
machine load drifts hit both; step time = median seconds between consecutive optimizer steps
after ``--warmup``; the ratio is medtune's mean-of-round medians over trl's (target <= 1.05).
First losses must be equal (same weights, same first batch).

Run: ``python bench/dpo_step.py`` (about 3 minutes on 2 CPU cores); ``--json out.json`` for raw numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_gpu import step_timer  # noqa: E402
from train_step import save_model  # noqa: E402

SAFETY = Path(__file__).resolve().parents[1] / "medtune" / "data" / "safety" / "train_en.jsonl"


def write_pairs(path: Path, n: int) -> None:
    """``n`` safety pairs from the shipped English training labels (the data stage's generator)."""
    from medtune.config import SafetyConfig
    from medtune.data.generators import safety_pairs
    from medtune.data.readers import read_labelled
    from medtune.data.records import Tally

    tally, rng = Tally("bench"), random.Random(0)
    records = [r for _, r in zip(range(n), read_labelled(SAFETY, tally))]
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            for pair in safety_pairs(r, SafetyConfig(), rng, tally):
                f.write(json.dumps(pair, ensure_ascii=False) + "\n")


def plain_trl(cfg, rows: list[dict], out: Path):
    """trl's DPOTrainer + peft as its docs show it, with the settings ``cfg`` fixes for medtune."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=cfg.per_device_train_batch_size,
                     max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, lr_scheduler_type="constant",
                     beta=cfg.beta, max_length=cfg.max_seq_length, gradient_checkpointing=False, bf16=False,
                     use_cpu=True, seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, save_strategy="no",
                     report_to="none", disable_tqdm=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=lora)


def measure(trainer, warmup: int) -> dict:
    """Train; median step seconds after ``warmup`` and the first logged losses."""
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    seconds = timer.step_seconds()[warmup - 1:]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_s": round(statistics.median(seconds), 4), "first_losses": [round(x, 5) for x in losses[:2]],
            "timed_steps": len(seconds)}


def main(argv=None) -> dict:
    from medtune.config import TrainConfig
    from medtune.models import load_tokenizer
    from medtune.preference_data import read_preferences
    from medtune.train.preference import build_preference_trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="times each arm runs, alternating")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="medtune-dpo-step-"))
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    save_model(work / "model", len(tokenizer))
    tokenizer.save_pretrained(work / "model")
    write_pairs(work / "pairs.jsonl", args.pairs)
    rows, _ = read_preferences(work / "pairs.jsonl")
    cfg = TrainConfig(model=str(work / "model"), train_file=work / "pairs.jsonl", objective="dpo", seed=1, beta=0.1,
                      max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch, max_seq_length=512,
                      save_steps=10**6, lr_scheduler_type="constant", warmup_ratio=0.0, lora_dropout=0.0,
                      learning_rate=5e-5, validation_split_percentage=0, output_dir=work / "medtune")
    runs: dict[str, list[dict]] = {"trl": [], "medtune": []}
    for k in range(args.rounds):
        runs["trl"].append(measure(plain_trl(cfg, rows, work / f"trl{k}"), args.warmup))
        trainer, _, _ = build_preference_trainer(cfg.model_copy(update={"output_dir": work / f"medtune{k}"}))
        runs["medtune"].append(measure(trainer, args.warmup))
    step = {arm: round(statistics.mean(r["step_s"] for r in rs), 4) for arm, rs in runs.items()}
    results = {"runs": runs, "step_s": step, "step_time_ratio": round(step["medtune"] / step["trl"], 3),
               "first_loss_diff": abs(runs["medtune"][0]["first_losses"][0] - runs["trl"][0]["first_losses"][0]),
               "settings": {"pairs": len(rows), "batch": args.batch, "timed_steps": args.steps, "warmup": args.warmup,
                            "rounds": args.rounds, "threads": torch.get_num_threads(), "torch": torch.__version__}}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
