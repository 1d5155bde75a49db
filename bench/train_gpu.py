"""Side-by-side SFT throughput and memory: plain transformers Trainer + peft vs medtune, one process.

A random-weight model in the shape of Qwen2.5-7B or Llama-3.1-8B (real vocabulary size; the
values of the weights do not change speed or memory) is saved once and loaded by each arm.
Synthetic examples have lengths drawn log-normally between 64 and 2,048 tokens (median ~400);
the first ~30% of each is prompt (label -100), the rest answer. Arms, per method (LoRA bf16
and/or QLoRA NF4), same data, seed, LoRA r=16 on all linear layers, gradient checkpointing:

1. ``baseline``: ``transformers.Trainer`` + ``peft`` (+ bitsandbytes NF4 with
   ``prepare_model_for_kbit_training`` for QLoRA), each batch padded to its longest example,
   the model's own cross-entropy on full logits.
2. ``medtune``: ``medtune.train.sft.make_trainer`` with medtune's defaults (padding-free
   packing into rows of ``max_seq_length``, trl's fused chunked loss, Liger kernels and
   FlashAttention-2 when installed), i.e. what ``medtune train`` builds.

Per arm: non-padding tokens/s (median over timed steps after warm-up; step times from CUDA
events between consecutive optimizer steps, ``time.perf_counter`` on CPU),
``torch.cuda.max_memory_allocated``/``max_memory_reserved`` after load and at peak, and MFU:
useful FLOPs per step ``4·N·T + 6·L·d·Σ s_i²`` (N: parameters outside the input embedding,
T: real tokens, forward + input-gradient backward of frozen weights; causal attention for
each real sequence of length s_i, forward + backward; gradient-checkpointing recompute not
counted; Chowdhery et al. 2022, PaLM, appendix B) over the measured dense matmul peak of this
device (bf16 on GPU, fp32 on CPU). Writes JSON and appends a table to docs/benchmarks.md.

Run (GPU): ``python bench/train_gpu.py --shape llama-3.1-8b --method qlora lora``
Run (CPU smoke, tiny model, seconds): ``python bench/train_gpu.py --cpu``
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # published config.json dimensions
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=5e5),
    "tiny": dict(model_type="llama", vocab_size=8192, hidden_size=128, intermediate_size=256,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--method", nargs="+", choices=["lora", "qlora"], default=["qlora", "lora"])
    p.add_argument("--cpu", action="store_true", help="tiny model, short sequences, fp32 on CPU (tests the harness)")
    p.add_argument("--batch-size", type=int, default=4, help="per step: examples (baseline) or packed rows (medtune)")
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "train_gpu.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md", help="markdown file the table is appended to")
    p.add_argument("--workdir", type=Path, default=None, help="where the random model is saved (default: a temp dir)")
    args = p.parse_args(argv)
    if args.cpu:
        args.shape, args.method = "tiny", ["lora"]
        args.max_seq_length, args.warmup, args.steps = min(args.max_seq_length, 256), min(args.warmup, 2), min(args.steps, 4)
    return args


def synthetic_examples(n: int, vocab: int, max_len: int, seed: int) -> list[dict]:
    """``n`` examples with log-normal lengths in ``[max_len/32, max_len]``, median ``max_len/5`` (64-2,048, ~400).

    Returns:
        ``[{"input_ids": [...], "labels": [...]}]``; the first 30% of each example has label -100.
    """
    g = torch.Generator().manual_seed(seed)
    lo, median = max(8, max_len // 32), max_len / 5
    lengths = (torch.randn(n, generator=g) * 0.6 + torch.log(torch.tensor(median))).exp().round().clamp(lo, max_len).long()
    out = []
    for s in lengths.tolist():
        ids = torch.randint(3, vocab, (s,), generator=g).tolist()
        cut = max(1, int(0.3 * s))
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def save_random_model(shape: str, max_len: int, workdir: Path, seed: int) -> Path:
    """Build ``shape`` with random weights (bf16 on GPU, fp32 on CPU), save it and a stub tokenizer; return the dir."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = dict(SHAPES[shape])
    config = AutoConfig.for_model(dims.pop("model_type"), **dims, max_position_embeddings=max(max_len, 4096),
                                  tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    cuda = torch.cuda.is_available()
    torch.manual_seed(seed)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    path = workdir / f"random-{shape}"
    model.save_pretrained(path)
    stub_tokenizer().save_pretrained(path)
    del model
    return path


def stub_tokenizer():
    """A three-token tokenizer (pad, eos, unk): the data is already token ids; trainers only need the pad id."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def pad_collator(features: list[dict]) -> dict:
    """Right-pad a batch to its longest example: ``input_ids``/``labels``/``attention_mask``, ``(batch, longest)``."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), longest, dtype=torch.long)
    labels = torch.full((len(features), longest), -100, dtype=torch.long)
    mask = torch.zeros(len(features), longest, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def counting(collate, log: list):
    """Wrap a collator so each batch's ``(real tokens, computed tokens, [real sequence lengths])`` is appended to ``log``."""

    def wrapped(features):
        batch = collate(features)
        if "attention_mask" in batch:  # padded
            lens = batch["attention_mask"].sum(-1).tolist()
        else:  # padding-free: one row, sequences start where position_ids restart at 0
            starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["position_ids"].size(1)]
            lens = [b - a for a, b in zip(starts, starts[1:])]
        log.append((sum(lens), batch["input_ids"].numel(), lens))
        return batch

    return wrapped


def step_timer():
    """A TrainerCallback that marks the end of every optimizer step (CUDA events on GPU, perf_counter on CPU)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self.marks.append(event)
            else:
                self.marks.append(time.perf_counter())

        def step_seconds(self) -> list[float]:
            """Seconds of steps 2..n (each from the previous step's end to its own end)."""
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return StepTimer()


def memory_gib() -> dict:
    """``{"allocated", "reserved"}``: CUDA max allocated / reserved so far in GiB (None on CPU)."""
    if not torch.cuda.is_available():
        return {"allocated": None, "reserved": None}
    return {"allocated": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def measured_peak_flops() -> float:
    """Dense matmul FLOP/s measured here: bf16 8192³ on CUDA, fp32 1024³ on CPU (best of several runs)."""
    cuda = torch.cuda.is_available()
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
    b = torch.randn_like(a)
    best = float("inf")
    for _ in range(10 if cuda else 5):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(), a @ b, end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def useful_flops(config, n_params: int, seq_lens: list[int]) -> float:
    """LoRA step FLOPs on real tokens: ``4·N·T`` (frozen weights: forward + input grads) + ``6·L·d·Σ s²`` (causal attention)."""
    d = config.num_attention_heads * getattr(config, "head_dim", None) if getattr(config, "head_dim", None) else config.hidden_size
    return 4 * n_params * sum(seq_lens) + 6 * config.num_hidden_layers * d * sum(s * s for s in seq_lens)


def bnb_config():
    """The QLoRA quantization both arms use: NF4, double quantization, bf16 compute (QLoRA paper, Dettmers et al. 2023)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def baseline_trainer(model_dir: Path, method: str, data: list[dict], args, out: Path):
    """Plain transformers Trainer + peft (+ NF4 + prepare_model_for_kbit_training), padding to the longest."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    cuda, ckpt = torch.cuda.is_available(), {"use_reentrant": False}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 quantization_config=bnb_config() if method == "qlora" else None,
                                                 device_map={"": 0} if cuda else None)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=ckpt)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        learning_rate=2e-4, lr_scheduler_type="constant", bf16=cuda, gradient_checkpointing=True,
        gradient_checkpointing_kwargs=ckpt, logging_steps=1, save_strategy="no", report_to="none", use_cpu=not cuda,
        seed=args.seed, data_seed=args.seed, disable_tqdm=True, remove_unused_columns=False)
    return Trainer(model=model, args=targs, train_dataset=Dataset.from_list(data), data_collator=pad_collator)


def medtune_trainer(model_dir: Path, method: str, data: list[dict], args, out: Path):
    """medtune's trainer as ``medtune train`` builds it (its defaults), on the same pre-tokenized data."""
    from datasets import Dataset

    from medtune.config import TrainConfig
    from medtune.models import load_model
    from medtune.train.harness import quantization_config
    from medtune.train.sft import make_trainer

    cuda = torch.cuda.is_available()
    cfg = TrainConfig(model=str(model_dir), output_dir=out, seed=args.seed, method=method, lora_r=16, lora_alpha=32,
                      max_seq_length=args.max_seq_length, per_device_train_batch_size=args.batch_size,
                      gradient_checkpointing=True, bf16=cuda, max_steps=args.warmup + args.steps, learning_rate=2e-4,
                      lr_scheduler_type="constant", warmup_ratio=0.0, save_steps=10**6, logging_steps=1)
    torch.manual_seed(args.seed)
    net = load_model(str(model_dir), quantization_config=quantization_config(cfg))
    trainer, _ = make_trainer(cfg, net, stub_tokenizer(), Dataset.from_list(data))
    return trainer


def count_params(config) -> int:
    """Parameters outside the input embedding (the ones a token's matmuls touch)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def run_arm(arm: str, method: str, model_dir: Path, data: list[dict], args, peak: float) -> dict:
    """Train one arm for ``warmup + steps`` steps and measure it; frees its memory before returning."""
    from transformers import AutoConfig

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    build = baseline_trainer if arm == "baseline" else medtune_trainer
    trainer = build(model_dir, method, data, args, Path(tempfile.mkdtemp(prefix=f"bench-{arm}-")))
    log, timer = [], step_timer()
    trainer.data_collator = counting(trainer.data_collator, log)
    trainer.add_callback(timer)
    after_load = memory_gib()
    trainer.train()
    at_peak = memory_gib()
    seconds = timer.step_seconds()[args.warmup - 1:]  # steps warmup+1 .. warmup+steps
    batches = log[args.warmup: args.warmup + len(seconds)]
    config = AutoConfig.from_pretrained(model_dir)
    n_params = count_params(config)
    flops = [useful_flops(config, n_params, b[2]) for b in batches]
    settings = getattr(trainer, "medtune_speed", None) or {
        "attn_implementation": trainer.model.config._attn_implementation, "padding": "longest in batch", "loss": "full logits"}
    result = {
        "arm": arm, "method": method, "timed_steps": len(seconds),
        "tokens_per_s": round(statistics.median(b[0] / s for b, s in zip(batches, seconds)), 1),
        "step_s": round(statistics.median(seconds), 4),
        "real_tokens": sum(b[0] for b in batches), "computed_tokens": sum(b[1] for b in batches),
        "flops_per_token": round(sum(flops) / sum(b[0] for b in batches)),
        "mfu": round(statistics.median(f / s for f, s in zip(flops, seconds)) / peak, 4),
        "mem_after_load_gib": after_load, "mem_peak_gib": at_peak,
        "first_loss": next(h["loss"] for h in trainer.state.log_history if "loss" in h), "settings": settings,
    }
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    return result


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def markdown_table(result: dict) -> str:
    """The result as a markdown section: command, device, shape, then one row per arm."""

    def gib(m):
        return "-" if m["allocated"] is None else f"{m['allocated']} / {m['reserved']}"

    lines = [f"### {result['shape']} on {result['device']} ({result['date']})", "",
             f"Command: `{result['command']}`  ", f"Measured peak: {result['peak_tflops']} TFLOP/s "
             f"({'bf16' if result['cuda'] else 'fp32'} matmul); lengths {result['lengths']}.", "",
             "| arm | method | tokens/s (non-padding) | ratio | step s | real / computed tokens | MFU "
             "| GiB after load (alloc / reserved) | GiB peak (alloc / reserved) | first loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        ratio = result["ratios"].get(a["method"], 1.0) if a["arm"] == "medtune" else 1.0
        lines.append(f"| {a['arm']} | {a['method']} | {a['tokens_per_s']:,.0f} | {ratio:.2f}x | {a['step_s']} "
                     f"| {a['real_tokens']:,} / {a['computed_tokens']:,} | {a['mfu'] * 100:.1f}% "
                     f"| {gib(a['mem_after_load_gib'])} | {gib(a['mem_peak_gib'])} | {a['first_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from rich.console import Console

    console = Console(stderr=True)
    args = parse_args(argv)
    t0 = time.time()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medtune-bench-"))
    console.print(f"[bold]building[/] random {args.shape} model in {workdir}")
    model_dir = save_random_model(args.shape, args.max_seq_length, workdir, args.seed)
    rows_per_step = args.batch_size * (args.max_seq_length // (args.max_seq_length // 5) + 2)
    data = synthetic_examples(rows_per_step * (args.warmup + args.steps), SHAPES[args.shape]["vocab_size"],
                              args.max_seq_length, args.seed)
    lens = sorted(len(d["input_ids"]) for d in data)
    peak = measured_peak_flops()
    arms = []
    for method in args.method:
        for arm in ("baseline", "medtune"):  # baseline first: Liger patches RoPE process-wide
            console.print(f"[bold]arm[/] {arm} / {method}")
            arms.append(run_arm(arm, method, model_dir, data, args, peak))
            console.print(f"  {arms[-1]['tokens_per_s']:,.0f} tokens/s, MFU {arms[-1]['mfu']:.1%}, "
                          f"peak {arms[-1]['mem_peak_gib']}")
    by = {(a["arm"], a["method"]): a for a in arms}
    ratios = {m: round(by["medtune", m]["tokens_per_s"] / by["baseline", m]["tokens_per_s"], 3) for m in args.method}
    result = {"shape": args.shape, "device": device_name(), "cuda": torch.cuda.is_available(),
              "date": datetime.date.today().isoformat(), "peak_tflops": round(peak / 1e12, 2),
              "command": "python bench/train_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "lengths": f"{len(lens)} examples, {lens[0]}-{lens[-1]} tokens, median {lens[len(lens) // 2]}",
              "arms": arms, "ratios": ratios, "ratio_tokens_per_s": ratios[args.method[0]]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    with open(args.docs, "a", encoding="utf-8") as f:
        f.write("\n" + markdown_table(result))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(f"[green]done[/] {len(arms)} arms in {time.time() - t0:.0f} s; medtune/baseline tokens/s "
                  f"{ratios}; JSON {args.json}; table appended to {args.docs}")
    return result


if __name__ == "__main__":
    main()
