"""LoRA step time on CPU: medtune's real SFT path vs plain transformers Trainer + peft, and packing gain.

One small random-weight Llama (4 layers, hidden 256) with the smollm2-135m-instruct pack's
tokenizer (49,152 vocabulary), saved once; one synthetic Alpaca file written by this script
(answer lengths log-normal, ~30 to ~600 tokens). Three runs, same seed, batch 4, r=8:

1. ``baseline``: transformers ``Trainer`` + ``peft`` on the tokenized examples medtune
   builds (same input_ids and labels), padded to the longest in the batch, model's own loss.
2. ``medtune``: ``medtune.train.sft.build_trainer`` (what ``run_sft`` / ``medtune train`` run)
   with ``packing=false``, so its batches are the baseline's batches: step-time ratio
   (target <= 1.05) and first loss (must be equal: same weights, same first batch).
3. ``medtune packed``: the defaults (packing on): non-padding tokens/s vs run 2.

Step times: ``time.perf_counter`` between consecutive optimizer steps, median after warm-up. The
baseline runs before and after medtune's run and the ratio uses the mean of its two medians,
because the first run in a process measured ~8% slower on CPU (allocator warm-up).

Run: ``python bench/train_step.py`` (about 2 minutes on 2 CPU cores); ``--json`` for raw numbers.
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
from train_gpu import counting, pad_collator, step_timer  # noqa: E402

QUESTIONS = ["What should a patient with high blood pressure change in daily life?",
             "How is type 2 diabetes usually first treated?", "What does an asthma reliever inhaler do?",
             "When should chest pain send someone to the emergency department?"]
SENTENCES = ["Lowering salt intake helps bring blood pressure down over several weeks.",
             "Regular walking for thirty minutes on most days improves blood sugar control.",
             "A reliever inhaler relaxes the muscles around the airways within minutes.",
             "Metformin is usually started at a low dose and taken with meals to limit stomach upset.",
             "Chest pain that lasts more than a few minutes or spreads to the arm needs urgent care.",
             "Home readings should be taken at the same time each day, seated, after five minutes of rest.",
             "Patients should bring a list of all their medicines to every appointment."]


def write_data(path: Path, n: int, seed: int) -> None:
    """``n`` Alpaca records whose answers hold a log-normal number of sentences (median 6, 1 to 40)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            k = max(1, min(40, round(rng.lognormvariate(1.8, 0.7))))
            answer = " ".join(rng.choice(SENTENCES) for _ in range(k))
            f.write(json.dumps({"instruction": rng.choice(QUESTIONS), "output": answer}) + "\n")


def save_model(path: Path, vocab_size: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)


def baseline(cfg, train_ds, out: Path):
    """Plain Trainer + peft, same LoRA settings and seed as ``cfg``, padding collator."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.per_device_train_batch_size,
                             max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
                             warmup_steps=cfg.warmup_ratio, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True, remove_unused_columns=False)
    return Trainer(model=model, args=args, train_dataset=train_ds, data_collator=pad_collator)


def measure(trainer, warmup: int) -> dict:
    """Train, then the median step seconds and non-padding tokens/s over the steps after ``warmup``."""
    log, timer = [], step_timer()
    trainer.data_collator = counting(trainer.data_collator, log)
    trainer.add_callback(timer)
    trainer.train()
    seconds = timer.step_seconds()[warmup - 1:]
    batches = log[warmup: warmup + len(seconds)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_s": round(statistics.median(seconds), 4),
            "tokens_per_s": round(statistics.median(b[0] / s for b, s in zip(batches, seconds)), 1),
            "padding_share": round(1 - sum(b[0] for b in batches) / sum(b[1] for b in batches), 3),
            "first_losses": losses[:3], "timed_steps": len(seconds)}


def main(argv=None) -> dict:
    from medtune.config import TrainConfig
    from medtune.models import load_tokenizer
    from medtune.train.sft import build_trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--fused-loss", choices=["default", "on", "off"], default="default",
                   help="medtune's train.fused_loss for its two runs (default: the config default: off on CPU)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="medtune-step-"))
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    save_model(work / "model", len(tokenizer))
    tokenizer.save_pretrained(work / "model")
    write_data(work / "train.jsonl", 200, seed=0)
    cfg = TrainConfig(model=str(work / "model"), train_file=work / "train.jsonl", output_dir=work / "medtune",
                      seed=1, packing=False, max_steps=args.warmup + args.steps, per_device_train_batch_size=4,
                      save_steps=10**6, lr_scheduler_type="constant", warmup_ratio=0.0, lora_dropout=0.0,
                      **({} if args.fused_loss == "default" else {"fused_loss": args.fused_loss == "on"}))
    results = {}
    med, _, _ = build_trainer(cfg)  # built first (its tokenized data feed the baseline), trained second
    results["baseline"] = measure(baseline(cfg, med.train_dataset, work / "baseline"), args.warmup)
    results["medtune"] = measure(med, args.warmup)
    again = measure(baseline(cfg, med.train_dataset, work / "baseline2"), args.warmup)
    results["baseline"]["step_s_runs"] = [results["baseline"]["step_s"], again["step_s"]]
    results["baseline"]["step_s"] = round((results["baseline"]["step_s"] + again["step_s"]) / 2, 4)
    packed, _, _ = build_trainer(cfg.model_copy(update={"packing": True, "output_dir": work / "packed"}))
    results["medtune_packed"] = measure(packed, args.warmup)
    results["step_time_ratio"] = round(results["medtune"]["step_s"] / results["baseline"]["step_s"], 3)
    results["first_loss_diff"] = abs(results["medtune"]["first_losses"][0] - results["baseline"]["first_losses"][0])
    results["packing_tokens_per_s_ratio"] = round(results["medtune_packed"]["tokens_per_s"] / results["medtune"]["tokens_per_s"], 2)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
