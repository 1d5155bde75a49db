"""The training harness: what every objective (sft, pt, dpo, kto, orpo, grpo) runs through.

An objective module only says how its data is read, which trl trainer class and config it uses
and (GRPO) which extra arguments that trainer takes. Everything else is here, once:

1. :func:`build_trainer`: checks, tokenizer, the objective's data, the base model (4-bit NF4 for
   ``method: qlora``), :func:`medtune.train.speed.prepare_model` (attention kernel, Liger), the
   LoRA config, trl's trainer with medtune's logging callback, atomic checkpoints and the
   preemption handler (:mod:`medtune.train.checkpoints`);
2. :func:`train_and_save`: resume, train, stop cleanly on SIGTERM/SIGINT, save the adapter (or
   full model) and metadata, print and write the run summary.

Gradient checkpointing (``gradient_checkpointing``) and the attention kernel
(``attn_implementation``) therefore mean the same for every objective; packing, the fused loss
and ``pad_to_multiple_of`` concern medtune's SFT/PT batches only (trl's preference and GRPO
trainers build their own batches and losses), see :mod:`medtune.train.speed`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from medtune.chat_tokens import DataStats
from medtune.config import TrainConfig
from medtune.errors import ConfigError, TrainError
from medtune.models import base_fingerprint, load_model, load_tokenizer
from medtune.train.checkpoints import (PreemptionCallback, atomic_checkpoints, last_checkpoint, preempted,
                                       stop_before_training, whole_run_loss)
from medtune.train.speed import prepare_model, sparse_lora_dropout_on, use_sparse_lora_dropout
from medtune.threads import use_free_cores

console = Console(stderr=True)


def peak_memory_gib() -> float:
    """Peak memory of this process in GiB: CUDA max allocated on GPU, max RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def is_main() -> bool:
    """True in the process that prints and writes summaries (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


LIVE_LOG = "train_log.jsonl"  # one line per log event, appended as training runs (medtune studio plots it)


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


def quantization_config(cfg: TrainConfig):
    """bitsandbytes 4-bit NF4 with double quantization for ``method: qlora`` (Dettmers et al. 2023,
    QLoRA, arXiv:2305.14314), else None. Compute dtype: bf16 where supported (CUDA), else fp32 on CPU.

    Raises:
        TrainError: bitsandbytes missing, or too old for its CPU backend on a machine without CUDA.
    """
    import torch

    if cfg.method != "qlora":
        return None
    try:
        import bitsandbytes
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise TrainError("method=qlora needs bitsandbytes: pip install 'medtune[qlora]'") from None
    cuda = torch.cuda.is_available()
    if not cuda and _version(bitsandbytes.__version__) < (0, 48):
        raise TrainError(f"method=qlora on CPU needs bitsandbytes >= 0.48 (its CPU backend); installed: "
                         f"{bitsandbytes.__version__}. pip install -U 'medtune[qlora]', or use train.method=lora here.")
    compute = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16 if cuda else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def lora_config(cfg: TrainConfig):
    """peft ``LoraConfig`` from ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``; None for ``full``."""
    from peft import LoraConfig

    if cfg.method == "full":
        return None
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}


def tracker(name: str) -> str:
    """``train.report_to`` checked: the tracker's package must be importable (else ConfigError with the pip command)."""
    import importlib.util

    package = TRACKER_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None and not (name == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        raise ConfigError(f"train.report_to={name} needs the {package} package: pip install {package}"
                          + (" (or pip install 'medtune[tracking]')" if name == "tensorboard" else ""))
    return name


def common_args(cfg: TrainConfig, has_eval: bool) -> dict:
    """``TrainingArguments`` fields every objective shares (optimiser, schedule, batch, precision,
    gradient checkpointing, logging, checkpoints), set explicitly so trl's per-trainer defaults
    (DPO: bf16 and gradient checkpointing on) never differ between objectives."""
    import torch

    cuda = torch.cuda.is_available()
    # DeepSpeed without CUDA: accelerate takes its DeepSpeed path only when not told "cpu", and sets no
    # process group without a backend, so say gloo (DeepSpeed's CPU accelerator does the rest).
    deepspeed_on_cpu = not cuda and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return dict(
        output_dir=str(cfg.output_dir), seed=cfg.seed, data_seed=cfg.seed,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16, fp16=cfg.fp16, use_cpu=not cuda and not deepspeed_on_cpu,
        ddp_backend="gloo" if deepspeed_on_cpu else None,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if (has_eval and cfg.eval_steps) else "no", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        report_to=tracker(cfg.report_to), disable_tqdm=True, torch_compile=cfg.torch_compile,
    )


def check_setup(cfg: TrainConfig) -> None:
    """Refuse a config that cannot start here.

    Raises:
        TrainError: no model or output dir; fp16 without CUDA.
    """
    import torch

    if not cfg.model or cfg.output_dir is None:
        raise TrainError("train.model and train.output_dir must be set (a recipe sets them from `model:` and `output_dir:`)")
    if cfg.fp16 and not torch.cuda.is_available():
        raise TrainError("fp16 mixed precision needs CUDA; on CPU use bf16=true or neither")


LoadData = Callable[[TrainConfig, object, Path], tuple]


def build_trainer(cfg: TrainConfig, load_data: LoadData, trainer_cls: type, make_args: Callable, **trainer_kwargs):
    """Set up a run of any objective without training: tokenizer, data, model, speed settings, LoRA, trainer.

    Args:
        cfg: the resolved train config (``model`` and ``output_dir`` set; a recipe does this in
            :func:`medtune.recipe.resolve`).
        load_data: ``load_data(cfg, tokenizer, output_dir) -> (train_ds, eval_ds_or_None, DataStats)``;
            it writes rejects and prints its one-line data summary.
        trainer_cls: the trl trainer class (``SFTTrainer``, ``DPOTrainer``, ...).
        make_args: ``make_args(cfg, has_eval) -> trl config`` (built on :func:`common_args`).
        trainer_kwargs: extra keyword arguments of ``trainer_cls`` (GRPO: ``reward_funcs``).

    Returns:
        ``(trainer, stats, callback)``: the trainer, the :class:`DataStats` of the training data,
        and the logging callback whose ``history`` holds per-step logs.

    Raises:
        TrainError: impossible setup (no model, fp16 on CPU, QLoRA without bitsandbytes).
        SpeedError: a speed setting asked for explicitly that cannot run here.
        ModelError, DataFileError: unusable model or data, with the offending file/record named.
    """
    import torch

    check_setup(cfg)
    output_dir = Path(cfg.output_dir)
    quant = quantization_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, cfg.chat_template)
    train_ds, eval_ds, stats = load_data(cfg, tokenizer, output_dir)
    args = make_args(cfg, eval_ds is not None)
    torch.manual_seed(cfg.seed)
    net = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, quantization_config=quant)
    trainer, callback = make_trainer(cfg, net, tokenizer, trainer_cls, args, train_ds, eval_ds, **trainer_kwargs)
    return trainer, stats, callback


def make_trainer(cfg: TrainConfig, net, tokenizer, trainer_cls: type, args, train_ds, eval_ds=None, **trainer_kwargs):
    """Wrap a loaded base model in ``trainer_cls`` with medtune's speed settings, LoRA, logging and checkpoints.

    Args:
        cfg: the train config with ``output_dir`` and ``seed`` resolved.
        net: the base causal LM (not yet peft-wrapped).
        tokenizer: its tokenizer (needs a pad token).
        trainer_cls, args: the trl trainer class and its config.
        train_ds, eval_ds: the datasets in the form ``trainer_cls`` reads.

    Returns:
        ``(trainer, callback)``; ``trainer.medtune_speed`` says which speed settings are on
        (see :mod:`medtune.train.speed`), ``trainer.medtune_preemption`` is the signal handler.

    Raises:
        SpeedError: a speed setting explicitly asked for that cannot run here.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    speed = prepare_model(net, cfg)
    callback, stop = make_callback(), PreemptionCallback(cfg.preemption_grace_s)
    trainer = trainer_cls(model=net, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                          peft_config=lora_config(cfg), callbacks=[callback, stop], **trainer_kwargs)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    speed["sparse_lora_dropout"] = use_sparse_lora_dropout(trainer.model) if sparse_lora_dropout_on(cfg) else 0
    check_distributed(trainer)
    atomic_checkpoints(trainer)
    trainer.medtune_speed, trainer.medtune_preemption = speed, stop
    if is_main():
        console.print("[bold]speed[/] " + ", ".join(f"{k}={v}" for k, v in speed.items()))
    return trainer, callback


def check_distributed(trainer) -> None:
    """Refuse a launch whose FSDP or DeepSpeed request accelerate would silently turn into plain DDP.

    accelerate 1.16 (``AcceleratorState``) takes the FSDP path only for accelerator devices
    (CUDA, XPU, NPU, ...) and the DeepSpeed path only when the Trainer is not told ``use_cpu``
    (:func:`common_args` sees to that); otherwise it runs the launch as DDP over gloo without a
    word (measured, docs/training.md).

    Raises:
        TrainError: ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED`` set by the launcher but the
            trainer's distributed type is something else.
    """
    from accelerate.utils import DistributedType

    asked = {"FSDP": os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true",
             "DEEPSPEED": os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"}
    got = trainer.accelerator.distributed_type
    for name, on in asked.items():
        if on and got != DistributedType[name]:
            raise TrainError(f"the accelerate config asks for {name.lower()}, but accelerate set this run up as "
                             f"{got.value} (without a GPU accelerate runs an FSDP config as plain DDP); on CPUs use "
                             "--config-file cpu2 (DDP over gloo) or zero2/zero3 (DeepSpeed's CPU accelerator), fsdp on GPUs")


def _overall_tokens_per_s(history: list[dict], runtime_s: float) -> float | None:
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    return round(tokens[-1] / max(runtime_s, 1e-9), 1) if tokens else None


def _save_meta(trainer, cfg: TrainConfig, output_dir: Path, stats: DataStats, history: list[dict]) -> None:
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    (output_dir / "medtune_base.json").write_text(json.dumps(
        {"model": cfg.model, "method": cfg.method, "objective": cfg.objective, "fingerprint": base_fingerprint(base.config)}, indent=2))
    (output_dir / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    (output_dir / "train_log.json").write_text(json.dumps({"data": {**stats.__dict__, "rejected": dict(stats.rejected)},
                                                          "history": history}, indent=2, default=str))


def train_and_save(cfg: TrainConfig, build: Callable) -> dict:
    """Build a trainer with ``build(cfg)``, train (resuming when asked), save, and summarise.

    Every objective's run goes through here, so all write the same files and summary and all stop
    the same way on SIGTERM/SIGINT (:mod:`medtune.train.checkpoints`).

    Args:
        cfg: the resolved train config.
        build: ``build(cfg) -> (trainer, DataStats, RichLogCallback)``, e.g. :func:`medtune.train.sft.build_trainer`.

    Returns:
        Summary dict: ``output_dir``, ``steps``, ``losses`` (per logged step), ``train_loss``
        (mean over the whole run, also after a resume),
        ``eval_loss`` (or None), ``tokens_per_s`` (non-padding), ``peak_mem_gib``, ``seconds``,
        ``examples``, ``rejected``, ``last_log`` (the last logged metrics: rewards/margins for
        dpo, reward for grpo ...). The adapter (or full model), tokenizer, ``train_config.json``,
        ``medtune_base.json``, ``train_log.json`` and ``train_summary.json`` go to the output dir.

    Raises:
        TrainingPreempted: a SIGTERM/SIGINT stopped the run after saving a checkpoint; its
            ``exit_code`` is :data:`medtune.errors.EXIT_PREEMPTED`.
    """
    t0 = time.time()
    use_free_cores(cfg.num_threads, log=console.print if is_main() else lambda *a: None)
    with stop_before_training():
        trainer, stats, callback = build(cfg)
    trainer.medtune_preemption.install()
    try:
        return _train_and_save(cfg, trainer, stats, callback, t0)
    finally:
        trainer.medtune_preemption.uninstall()


def _train_and_save(cfg: TrainConfig, trainer, stats, callback, t0: float) -> dict:
    output_dir = Path(cfg.output_dir)
    resume = last_checkpoint(output_dir) if cfg.resume else None
    if cfg.resume and is_main():
        console.print(f"resuming from {resume}" if resume else "[yellow]--resume: no checkpoint found, starting fresh[/]")
    resume_state = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8")) if resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    preempted(trainer)  # raises TrainingPreempted when a signal stopped the run (checkpoint saved)
    train_loss = whole_run_loss(resume_state, result.training_loss, trainer.state.global_step)
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
        "speed": getattr(trainer, "medtune_speed", None), "objective": cfg.objective, "method": cfg.method,
        "last_log": next(({k: v for k, v in h.items() if isinstance(v, (int, float))} for h in reversed(callback.history)
                          if "loss" in h), {}),
    }
    if trainer.is_world_process_zero():
        (output_dir / "preempted.json").unlink(missing_ok=True)  # the run this marker was about has finished
        _save_meta(trainer, cfg, output_dir, stats, callback.history)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        ev = f", eval loss {eval_loss:.4f}" if eval_loss is not None and not math.isnan(eval_loss) else ""
        console.print(f"[green]trained[/] {summary['steps']} steps in {seconds:.0f} s, train loss {train_loss:.4f}{ev}, "
                      f"peak {summary['peak_mem_gib']} GiB -> {output_dir}")
    return summary
