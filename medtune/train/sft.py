"""The SFT run: LoRA / QLoRA / full fine-tuning of any causal LM with trl's SFTTrainer + peft.

The same run serves continued pre-training (``objective: pt``): only the data differs (raw text
chunks with every token labelled, :mod:`medtune.train.pt`).

medtune tokenizes the data itself (see :mod:`medtune.chat_tokens`) so the loss covers
assistant tokens only, including each turn's end-of-turn token, and hands trl a dataset with
``input_ids`` and ``labels``. Packing uses trl's best-fit-decreasing packer with per-example
position ids, so packed examples do not attend to each other.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medtune.errors import ConfigError, TrainError
from medtune.config import TrainConfig
from medtune.models import base_fingerprint, load_model, load_tokenizer
from medtune.chat_tokens import DataStats, build_sft_examples
from medtune.io import held_out_split, write_rejects
from medtune.train.pt import build_pt_examples
from medtune.train.speed import pad_multiple, prepare_model, trainer_class

console = Console(stderr=True)
LIVE_LOG = "train_log.jsonl"  # one line per log event, appended as training runs (medtune studio plots it)


def peak_memory_gib() -> float:
    """Peak memory of this process in GiB: CUDA max allocated on GPU, max RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class RichLogCallback(TrainerCallback):
    """Shows a rich progress bar and logs loss, lr, tokens/s and peak memory; ``history`` keeps every log.

    Every log event is also appended at once to ``<output_dir>/train_log.jsonl`` (:data:`LIVE_LOG`):
    a ``{"event": "begin", "step", "max_steps", "time"}`` line when training (re)starts, then the
    logged metrics (``loss``, ``learning_rate``, ``tokens_per_s``, ``peak_mem_gib`` ...) with
    ``step``, ``max_steps`` and ``time`` (unix seconds), so a run can be followed while it runs.
    """

    def __init__(self):
        self.history: list[dict] = []
        self.progress = None
        self._t, self._tokens = time.time(), 0.0

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            # auto_refresh off: rich's default redraws from its own thread 10 times a second, which on a
            # small CPU competes with torch's intra-op threads (one per core); the bar is redrawn per step.
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=console, auto_refresh=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self._t = time.time()
        self._live(args, state, {"event": "begin"})

    def on_step_end(self, args, state, control, **kw):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step, refresh=True)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        now = time.time()
        tokens = logs.get("num_tokens")
        if tokens is not None and "loss" in logs:
            logs["tokens_per_s"] = round((tokens - self._tokens) / max(now - self._t, 1e-9), 1)
            self._tokens, self._t = tokens, now
        logs["peak_mem_gib"] = round(peak_memory_gib(), 2)
        logs["step"] = state.global_step
        self.history.append(logs)
        self._live(args, state, logs)
        if self.progress and ("loss" in logs or "eval_loss" in logs):
            keys = ("loss", "eval_loss", "learning_rate", "tokens_per_s", "peak_mem_gib")
            line = "  ".join(f"{k}={logs[k]:.4g}" for k in keys if isinstance(logs.get(k), (int, float)))
            self.progress.console.print(f"step {state.global_step}: {line}")
            self.progress.update(self.task, info=f"loss {logs.get('loss', logs.get('eval_loss', 0)):.3f}", refresh=True)

    def on_train_end(self, args, state, control, **kw):
        if self.progress:
            self.progress.stop()

    @staticmethod
    def _live(args, state, row: dict) -> None:
        if state.is_world_process_zero:
            out = Path(args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            line = {**row, "step": state.global_step, "max_steps": state.max_steps, "time": round(time.time(), 3)}
            with open(out / LIVE_LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")


def make_callback() -> RichLogCallback:
    """A fresh :class:`RichLogCallback`."""
    return RichLogCallback()


def _quantization_config(cfg: TrainConfig):
    import torch

    if cfg.method != "qlora":
        return None
    if not torch.cuda.is_available():
        raise TrainError("method=qlora needs a CUDA GPU (bitsandbytes 4-bit NF4); this machine has none. "
                         "Use train.method=lora here, or run on a GPU machine.")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainError("method=qlora needs bitsandbytes: pip install 'medtune[qlora]'") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def _lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    if cfg.method == "full":
        return None
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def load_datasets(cfg: TrainConfig, tokenizer, output_dir: Path, seed: int):
    """Tokenize train (and validation) data; save rejects; return ``(train, eval, stats)`` as HF Datasets.

    Raises:
        DataFileError: unreadable data file, or no usable record.
    """
    from datasets import Dataset

    build = build_pt_examples if cfg.objective == "pt" else build_sft_examples
    files = cfg.train_file if isinstance(cfg.train_file, list) else [cfg.train_file]
    train, rejects, stats = [], [], DataStats()
    for f in files:
        ex, rej, st = build(f, tokenizer, cfg.max_seq_length, cfg.overlong, cfg.max_examples)
        train, rejects = train + ex, rejects + rej
        for key in ("read", "kept", "truncated", "tokens", "label_tokens"):
            setattr(stats, key, getattr(stats, key) + getattr(st, key))
        stats.rejected.update(st.rejected)
    evals = None
    if cfg.validation_file:
        evals, ev_rejects, _ = build(cfg.validation_file, tokenizer, cfg.max_seq_length, cfg.overlong)
        rejects += ev_rejects
    elif cfg.validation_split_percentage > 0:
        keep, held = held_out_split(len(train), cfg.validation_split_percentage, seed)
        train, evals = [train[i] for i in keep], [train[i] for i in held]
    if rejects:
        write_rejects(rejects, output_dir / "rejects.jsonl")
    return Dataset.from_list(train), (Dataset.from_list(evals) if evals else None), stats


def common_args(cfg: TrainConfig, output_dir: Path, seed: int, has_eval: bool) -> dict:
    """``TrainingArguments`` fields every objective shares (optimiser, schedule, batch, precision,
    logging, checkpoints), set explicitly so trl's per-trainer defaults (DPO: bf16 and gradient
    checkpointing on) never differ between objectives."""
    import torch

    return dict(
        output_dir=str(output_dir), seed=seed, data_seed=seed,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16, fp16=cfg.fp16, use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if (has_eval and cfg.eval_steps) else "no", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        report_to=_tracker(cfg.report_to), disable_tqdm=True, dataset_num_proc=None, torch_compile=cfg.torch_compile,
    )


def _sft_config(cfg: TrainConfig, output_dir: Path, seed: int, has_eval: bool):
    from trl import SFTConfig

    return SFTConfig(**common_args(cfg, output_dir, seed, has_eval), max_length=cfg.max_seq_length, packing=cfg.packing,
                     pad_to_multiple_of=pad_multiple(cfg))


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}


def _tracker(name: str) -> str:
    """``train.report_to`` checked: the tracker's package must be importable (else ConfigError with the pip command)."""
    import importlib.util

    package = TRACKER_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None and not (name == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        raise ConfigError(f"train.report_to={name} needs the {package} package: pip install {package}"
                          + (" (or pip install 'medtune[tracking]')" if name == "tensorboard" else ""))
    return name


def _overall_tokens_per_s(history: list[dict], runtime_s: float) -> float | None:
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    return round(tokens[-1] / max(runtime_s, 1e-9), 1) if tokens else None


def _last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint (one with ``trainer_state.json``, written last when saving).

    Newer incomplete ones (a run killed while saving) are skipped, each with a message saying why.
    """
    ckpts = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (ckpt / "trainer_state.json").is_file():
            return str(ckpt)
        if _is_main():
            console.print(f"[yellow]--resume: skipping {ckpt}: incomplete, no trainer_state.json "
                          "(the run was probably stopped while saving it)[/]")
    return None


def _whole_run_loss(resume: str | None, resumed_loss: float, final_step: int) -> float:
    """Mean training loss over every step of the run, the steps before ``resume`` included.

    ``Trainer`` reports the mean over the resumed steps only; the earlier steps' losses come from
    the checkpoint's ``trainer_state.json`` ``log_history`` (each logged loss weighted by the
    steps it covers).
    """
    if not resume:
        return resumed_loss
    state = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))
    start = int(state.get("global_step", 0))
    logs = [h for h in state.get("log_history", []) if "loss" in h and h.get("step", 0) <= start]
    if not logs or final_step <= 0:
        return resumed_loss
    covered, total, prev = 0, 0.0, 0
    for h in logs:
        covered, total, prev = covered + h["step"] - prev, total + h["loss"] * (h["step"] - prev), h["step"]
    earlier = total / max(covered, 1)
    return (earlier * start + resumed_loss * (final_step - start)) / final_step


def _save_meta(trainer, cfg: TrainConfig, model_spec: str, output_dir: Path, stats: DataStats, history: list[dict]) -> None:
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    (output_dir / "medtune_base.json").write_text(json.dumps(
        {"model": model_spec, "method": cfg.method, "objective": cfg.objective, "fingerprint": base_fingerprint(base.config)}, indent=2))
    (output_dir / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    (output_dir / "train_log.json").write_text(json.dumps({"data": {**stats.__dict__, "rejected": dict(stats.rejected)},
                                                          "history": history}, indent=2, default=str))


def build_trainer(cfg: TrainConfig):
    """Set up everything for an SFT run without training: tokenizer, data, model, LoRA, SFTTrainer.

    Args:
        cfg: the train stage config, resolved (``model`` and ``output_dir`` set; a recipe does
            this in :func:`medtune.recipe.resolve`).

    Returns:
        ``(trainer, stats, callback)``: the trl ``SFTTrainer``, the :class:`DataStats` of the
        training file, and the logging callback whose ``history`` holds per-step logs.

    Raises:
        TrainError: impossible setup (no model, QLoRA without CUDA, fp16 on CPU).
        ModelError, DataFileError: unusable model or data, with the offending file/record named.
    """
    import torch

    if not cfg.model or cfg.output_dir is None:
        raise TrainError("train.model and train.output_dir must be set (a recipe sets them from `model:` and `output_dir:`)")
    if cfg.fp16 and not torch.cuda.is_available():
        raise TrainError("fp16 mixed precision needs CUDA; on CPU use bf16=true or neither")
    model_spec, output_dir, seed = cfg.model, Path(cfg.output_dir), cfg.seed
    quant = _quantization_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(model_spec, cfg.trust_remote_code, cfg.chat_template)
    train_ds, eval_ds, stats = load_datasets(cfg, tokenizer, output_dir, seed)
    if _is_main():
        console.print(f"[bold]data[/] {stats.read} read, {stats.kept} kept, {stats.truncated} truncated, "
                      f"{sum(stats.rejected.values())} rejected {dict(stats.rejected) or ''}; "
                      f"{stats.label_tokens}/{stats.tokens} tokens trained")
    torch.manual_seed(seed)
    net = load_model(model_spec, trust_remote_code=cfg.trust_remote_code, quantization_config=quant)
    trainer, callback = make_trainer(cfg, net, tokenizer, train_ds, eval_ds)
    return trainer, stats, callback


def make_trainer(cfg: TrainConfig, net, tokenizer, train_ds, eval_ds=None):
    """Wrap a loaded model and tokenized data in medtune's SFTTrainer (LoRA, speed settings, logging).

    Args:
        cfg: the train config with ``output_dir`` and ``seed`` already resolved.
        net: the base causal LM (not yet peft-wrapped).
        tokenizer: its tokenizer (needs a pad token).
        train_ds, eval_ds: HF Datasets with ``input_ids`` and ``labels`` (-100 outside answers).

    Returns:
        ``(trainer, callback)``; ``trainer.medtune_speed``
        says which speed settings are on (see :mod:`medtune.train.speed`).

    Raises:
        SpeedError: a speed setting explicitly asked for that cannot run here.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    speed = prepare_model(net, cfg)
    callback = make_callback()
    trainer = trainer_class(cfg)(model=net, args=_sft_config(cfg, Path(cfg.output_dir), cfg.seed, eval_ds is not None),
                                 train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                                 peft_config=_lora_config(cfg), callbacks=[callback])
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.medtune_speed = speed
    if _is_main():
        console.print("[bold]speed[/] " + ", ".join(f"{k}={v}" for k, v in speed.items()))
    return trainer, callback


def run_sft(cfg: TrainConfig) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.train_file`` (objective sft or pt) and save the adapter or full model.

    Args: as :func:`build_trainer`.

    Returns: as :func:`train_and_save`.

    Raises:
        As :func:`build_trainer`.
    """
    return train_and_save(cfg, build_trainer)


def train_and_save(cfg: TrainConfig, build) -> dict:
    """Build a trainer with ``build(cfg)``, train (resuming when asked), save, and summarise.

    Every objective's run goes through here, so all write the same files and summary.

    Args:
        cfg: the resolved train config.
        build: ``build(cfg) -> (trainer, DataStats, RichLogCallback)``, e.g. :func:`build_trainer`.

    Returns:
        Summary dict: ``output_dir``, ``steps``, ``losses`` (per logged step), ``train_loss``
        (mean over the whole run, also after a resume),
        ``eval_loss`` (or None), ``tokens_per_s`` (non-padding), ``peak_mem_gib``, ``seconds``,
        ``examples``, ``rejected``, ``last_log`` (the last logged metrics: rewards/margins for
        dpo, reward for grpo ...). The adapter (or full model), tokenizer, ``train_config.json``,
        ``medtune_base.json``, ``train_log.json`` and ``train_summary.json`` go to the output dir.
    """
    t0 = time.time()
    trainer, stats, callback = build(cfg)
    output_dir = Path(cfg.output_dir)
    resume = _last_checkpoint(output_dir) if cfg.resume else None
    if cfg.resume and _is_main():
        console.print(f"resuming from {resume}" if resume else "[yellow]--resume: no checkpoint found, starting fresh[/]")
    result = trainer.train(resume_from_checkpoint=resume)
    train_loss = _whole_run_loss(resume, result.training_loss, trainer.state.global_step)
    eval_loss = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
    trainer.save_model(str(output_dir))
    seconds = time.time() - t0
    summary = {
        "output_dir": str(output_dir), "steps": trainer.state.global_step,
        "losses": [h["loss"] for h in callback.history if "loss" in h],
        "train_loss": train_loss, "eval_loss": eval_loss,
        "tokens_per_s": _overall_tokens_per_s(callback.history, result.metrics.get("train_runtime", seconds)),
        "peak_mem_gib": round(peak_memory_gib(), 2), "seconds": round(seconds, 1),
        "examples": stats.kept, "rejected": sum(stats.rejected.values()), "world_size": trainer.args.world_size,
        "speed": getattr(trainer, "medtune_speed", None), "objective": cfg.objective,
        "last_log": next(({k: v for k, v in h.items() if isinstance(v, (int, float))} for h in reversed(callback.history)
                          if "loss" in h), {}),
    }
    if trainer.is_world_process_zero():
        _save_meta(trainer, cfg, cfg.model, output_dir, stats, callback.history)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        ev = f", eval loss {eval_loss:.4f}" if eval_loss is not None and not math.isnan(eval_loss) else ""
        console.print(f"[green]trained[/] {summary['steps']} steps in {seconds:.0f} s, train loss {train_loss:.4f}{ev}, "
                      f"peak {summary['peak_mem_gib']} GiB -> {output_dir}")
    return summary
