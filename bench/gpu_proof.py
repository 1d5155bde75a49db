"""GPU proof of medtune's training paths in one run: LoRA and QLoRA steps of an 8B-shape model, each
speed setting on and off, 2 DPO and 2 GRPO steps, merge parity; one JSON and a docs-ready table.

Planned for one air-gapped H100 in <= 8 minutes (``bench/gpu_proof.sh`` is the command; it installs
the wheels that travel with it, see docs/benchmarks.md). A random-weight model in the shape of
Llama-3.1-8B (real dimensions and vocabulary; weight values do not change speed or memory) is
saved once and loaded through :func:`medtune.models.load_model`, as ``medtune train`` loads it.
Phases, each timed; a phase that would start after ``--budget-s`` is skipped and reported:

1. ``lora``: medtune's SFT trainer (:func:`medtune.train.sft.make_trainer`) on synthetic examples
   (64-2,048 tokens, log-normal, 30% prompt), gradient checkpointing on, arms: ``default`` (packing,
   varlen attention, Liger, fused loss as medtune picks them) and one arm per setting switched off
   (``packing=off``, ``attn=sdpa``, ``liger=off``, ``fused_loss=off``). Liger patches the model
   class process-wide, so the ``liger=off`` arm runs first. Per arm: non-padding tokens/s
   (median of timed steps), peak GPU memory (``max_memory_allocated``), MFU (useful FLOPs
   ``4·N·T + 6·L·d·Σs²`` over the measured bf16 matmul peak; ``bench/train_gpu.py``).
2. ``qlora``: the default arm on the 4-bit NF4 base (needs bitsandbytes; skipped with the reason
   when it is missing).
3. ``dpo`` and ``grpo``: 2 steps each through the shared harness on the same base (GRPO: 2
   completions of 16 tokens per prompt), losses/rewards and seconds.
4. ``merge``: a tiny model's adapter merged by :func:`medtune.merge.merge_adapter`: max |dlogit|.

``--cpu``: the same phases on tiny shapes in fp32 (a dry run that checks the plan, for CI's slow
tier); settings that need CUDA (varlen, Liger) are reported as not applicable.

Run: ``bash bench/gpu_proof.sh`` (GPU) or ``bash bench/gpu_proof.sh --cpu``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_gpu import (SHAPES, count_params, counting, device_name, measured_peak_flops, save_random_model,  # noqa: E402
                       step_timer, synthetic_examples, useful_flops)

ROOT = Path(__file__).resolve().parents[1]
LORA_ARMS = [("liger=off", {"liger_kernels": False}), ("default", {}), ("packing=off", {"packing": False}),
             ("attn=sdpa", {"attn_implementation": "sdpa"}), ("fused_loss=off", {"fused_loss": False})]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny shapes, fp32, CPU: a dry run of the plan")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4, help="packed rows (or examples, packing off) per step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per arm")
    p.add_argument("--budget-s", type=float, default=450, help="skip phases that would start after this many seconds")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "gpu_proof.json")
    p.add_argument("--table", type=Path, default=ROOT / "runs" / "bench" / "gpu_proof.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cpu:
        args.shape, args.max_seq_length, args.batch_size, args.warmup, args.steps = "tiny", 256, 2, 1, 2
    return args


def train_config(model_dir: Path, out: Path, args, **kw):
    from medtune.config import TrainConfig

    cuda = torch.cuda.is_available()
    return TrainConfig(**{**dict(model=str(model_dir), output_dir=out, seed=args.seed, lora_r=16, lora_alpha=32, lora_dropout=0.0,
                                 max_seq_length=args.max_seq_length, per_device_train_batch_size=args.batch_size,
                                 gradient_checkpointing=True, bf16=cuda, max_steps=args.warmup + args.steps,
                                 learning_rate=2e-4, lr_scheduler_type="constant", warmup_ratio=0.0, save_steps=10**6,
                                 logging_steps=1), **kw})


def load_base(model_dir: Path, method: str):
    from medtune.models import load_model
    from medtune.train.harness import quantization_config
    from medtune.config import TrainConfig

    torch.manual_seed(0)
    return load_model(str(model_dir), quantization_config=quantization_config(TrainConfig(method=method)))


def sft_arm(name: str, net, model_dir: Path, data: list[dict], args, peak: float, **settings) -> dict:
    """Train one SFT arm on ``net`` (LoRA injected, then unloaded again) and measure it."""
    from datasets import Dataset

    from train_gpu import stub_tokenizer
    from medtune.train.sft import make_trainer

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = train_config(model_dir, Path(tempfile.mkdtemp(prefix="proof-")), args, **settings)
    trainer, _ = make_trainer(cfg, net, stub_tokenizer(), Dataset.from_list(data))
    log, timer = [], step_timer()
    trainer.data_collator = counting(trainer.data_collator, log)
    trainer.add_callback(timer)
    trainer.train()
    seconds = timer.step_seconds()[args.warmup - 1:]
    batches = log[args.warmup: args.warmup + len(seconds)]
    n_params = count_params(net.config)
    flops = [useful_flops(net.config, n_params, b[2]) for b in batches]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"arm": name, "method": cfg.method, "settings": trainer.medtune_speed, "timed_steps": len(seconds),
              "tokens_per_s": round(statistics.median(b[0] / s for b, s in zip(batches, seconds)), 1),
              "step_s": round(statistics.median(seconds), 4),
              "mfu": round(statistics.median(f / s for f, s in zip(flops, seconds)) / peak, 4),
              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
              "first_loss": losses[0], "last_loss": losses[-1]}
    trainer.model.unload()  # peft: remove the LoRA layers, the base stays for the next arm
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    return result


def chat_tokenizer():
    """A ~300-token byte-level BPE tokenizer with a ChatML template (DPO/GRPO need text and a template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    text = ["Call emergency services if chest pain lasts.", "Rest and drink water.", "What is hypertension?"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    return fast


def align_phase(objective: str, net, model_dir: Path, args) -> dict:
    """2 steps of ``objective`` (dpo or grpo) through the shared harness on ``net``."""
    from datasets import Dataset

    from medtune.train import harness
    from medtune.train.grpo import grpo_config
    from medtune.train.preference import method_config, trainer_for

    prompts = ["I have chest pain.", "What is hypertension?", "I feel dizzy.", "Is this dose safe?"]
    cfg = train_config(model_dir, Path(tempfile.mkdtemp(prefix=f"proof-{objective}-")), args, objective=objective, max_steps=2,
                       per_device_train_batch_size=4, max_seq_length=128, num_generations=2, max_completion_length=16)
    if objective == "dpo":
        rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": "Call emergency services."}],
                 "rejected": [{"role": "assistant", "content": "Rest and drink water."}]} for p in prompts]
        cls, targs, extra = trainer_for("dpo"), method_config(cfg, False), {}
    else:
        rows = [{"prompt": [{"role": "user", "content": p}]} for p in prompts]
        from trl import GRPOTrainer
        cls, targs = GRPOTrainer, grpo_config(cfg)
        extra = {"reward_funcs": [lambda prompts, completions, **_: [float(len(c[0]["content"]) % 7) for c in completions]]}
    t0 = time.time()
    trainer, cb = harness.make_trainer(cfg, net, chat_tokenizer(), cls, targs, Dataset.from_list(rows), **extra)
    trainer.train()
    logs = [h for h in cb.history if "loss" in h]
    out = {"phase": objective, "steps": len(logs), "seconds": round(time.time() - t0, 1), "losses": [h["loss"] for h in logs],
           "reward": [h.get("reward") for h in logs] if objective == "grpo" else None,
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}
    trainer.model.unload()
    del trainer
    gc.collect()
    return out


def merge_phase(workdir: Path) -> dict:
    """Merge a small random model's LoRA adapter (non-zero B) and report medtune's parity check."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from medtune.config import MergeConfig
    from medtune.merge import merge_adapter

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                        num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, pad_token_id=0))
    base.save_pretrained(workdir / "small")
    chat_tokenizer().save_pretrained(workdir / "small")
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(workdir / "adapter")
    chat_tokenizer().save_pretrained(workdir / "adapter")
    r = merge_adapter(MergeConfig(model=str(workdir / "small"), adapter=workdir / "adapter", output_dir=workdir / "merged"))
    return {"phase": "merge", "max_abs_logit_diff": r["max_abs_logit_diff"], "tolerance": r["tolerance"]}


def run_phases(args, model_dir: Path, workdir: Path, t0: float) -> tuple[list, list, list]:
    import importlib.util

    arms, phases, skipped = [], [], []
    data = synthetic_examples(args.batch_size * 6 * (args.warmup + args.steps), SHAPES[args.shape]["vocab_size"],
                              args.max_seq_length, args.seed)
    peak = measured_peak_flops()

    def budget(what: str) -> bool:
        if time.time() - t0 > args.budget_s:
            skipped.append({"what": what, "why": f"time budget of {args.budget_s:g} s spent"})
            return False
        return True

    net = load_base(model_dir, "lora")
    for name, settings in LORA_ARMS:
        if not torch.cuda.is_available() and name in ("liger=off", "attn=sdpa"):
            skipped.append({"what": f"lora {name}", "why": "same as default without CUDA (Liger and varlen need CUDA)"})
            continue
        if budget(f"lora {name}"):
            arms.append(sft_arm(name, net, model_dir, data, args, peak, **settings))
    for objective in ("dpo", "grpo"):
        if budget(objective):
            phases.append(align_phase(objective, net, model_dir, args))
    del net
    gc.collect()
    if importlib.util.find_spec("bitsandbytes") is None:
        skipped.append({"what": "qlora", "why": "bitsandbytes is not installed (its 41 MiB wheel does not fit the 64 MiB "
                                               "that travel with pyarrow and pandas; see docs/benchmarks.md)"})
    elif budget("qlora"):
        arms.append(sft_arm("default", load_base(model_dir, "qlora"), model_dir, data, args, peak, method="qlora"))
    if budget("merge"):
        phases.append(merge_phase(workdir))
    return arms, phases, skipped


def markdown(result: dict) -> str:
    """The result as a docs section: command, device, one row per arm, the phases, what was skipped."""
    lines = [f"### GPU proof: {result['shape']} on {result['device']} ({result['date']})", "",
             f"Command: `{result['command']}`; wall {result['seconds']} s; peak matmul {result['peak_tflops']} TFLOP/s.", "",
             "| method | arm | attention | packing | Liger | fused loss | tokens/s | MFU | peak GiB | step s | loss first -> last |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        s = a["settings"]
        lines.append(f"| {a['method']} | {a['arm']} | {s['attn_implementation']} | {s['packing']} | {s['liger_kernels']} "
                     f"| {s['fused_loss']} | {a['tokens_per_s']:,.0f} | {a['mfu'] * 100:.1f}% | {a['peak_gib']} | {a['step_s']} "
                     f"| {a['first_loss']:.3f} -> {a['last_loss']:.3f} |")
    lines.append("")
    for p in result["phases"]:
        body = {k: v for k, v in p.items() if k != "phase"}
        lines.append(f"- {p['phase']}: {json.dumps(body)}")
    lines += [f"- skipped {s['what']}: {s['why']}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="medtune-proof-"))
    model_dir = save_random_model(args.shape, args.max_seq_length, workdir, args.seed)
    arms, phases, skipped = run_phases(args, model_dir, workdir, t0)
    result = {"shape": args.shape, "device": device_name(), "cuda": torch.cuda.is_available(),
              "date": datetime.date.today().isoformat(), "peak_tflops": round(measured_peak_flops() / 1e12, 2),
              "command": "bash bench/gpu_proof.sh " + " ".join(sys.argv[1:] if argv is None else argv),
              "seconds": round(time.time() - t0, 1), "arms": arms, "phases": phases, "skipped": skipped,
              "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "trl", "accelerate")}}
    for path, text in ((args.json, json.dumps(result, indent=2, default=str)), (args.table, markdown(result))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(markdown(result))
    print(f"gpu proof: {len(arms)} arms, {len(phases)} phases, {len(skipped)} skipped in {result['seconds']} s; "
          f"JSON {args.json}; table {args.table}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
