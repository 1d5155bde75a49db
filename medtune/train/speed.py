"""Speed and memory settings of the SFT run: attention kernel, fused loss, Liger kernels, torch.compile.

Each setting is a :class:`~medtune.config.TrainConfig` field that can be turned off; the
defaults pick the fastest path this machine supports. None of them changes the maths:
``tests/test_train_speed.py`` checks that the first losses match the plain path.

- ``packing`` (default on): trl's best-fit-decreasing packer puts several examples in one
  row; its padding-free collator gives each example position ids that restart at 0, from
  which transformers builds a block-diagonal causal mask (SDPA, eager) or variable-length
  offsets (FlashAttention), so packed examples never attend to each other.
- ``fused_loss`` (default on): trl 1.16's fused LM head projects hidden states onto the
  vocabulary in tiles of 4,096 tokens x 32,768 vocabulary entries and folds each tile into
  an online log-sum-exp, so the ``(tokens, vocab)`` fp32 logits never exist at once (with
  a 152k vocabulary and 16k tokens per step they would take 9.3 GiB, 2x that with their
  gradient). Off: full logits and transformers' ``ForCausalLMLoss``.
- ``liger_kernels`` (default on where available): Liger-Kernel's Triton RMSNorm, RoPE and
  SwiGLU (Hsu et al. 2024, arXiv:2410.10989) on CUDA. Its fused linear cross-entropy is not
  used: it replaces the model's forward, which trl's fused LM head (above) already fuses.
- ``attn_implementation`` (default ``auto``): FlashAttention-2 when CUDA and the
  ``flash-attn`` package are present (variable-length kernels, no wasted work on packed
  rows), else PyTorch SDPA.
- ``torch_compile`` (default off): ``torch.compile`` of the model through the Trainer.
"""

from __future__ import annotations

import importlib.util

from medtune.config import ConfigError, TrainConfig


class SpeedError(ConfigError):
    """A speed setting that was asked for explicitly but cannot run here; the message says why."""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_attention(cfg: TrainConfig, cuda: bool | None = None) -> str:
    """The transformers ``attn_implementation`` for this run.

    ``auto`` gives ``flash_attention_2`` on CUDA with ``flash-attn`` installed, else ``sdpa``.

    Raises:
        SpeedError: ``flash_attention_2`` asked for without CUDA or without ``flash-attn``.
    """
    cuda = _cuda() if cuda is None else cuda
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    if cfg.attn_implementation == "auto":
        return "flash_attention_2" if cuda and has_fa2 else "sdpa"
    if cfg.attn_implementation == "flash_attention_2" and not (cuda and has_fa2):
        raise SpeedError("train.attn_implementation=flash_attention_2 needs CUDA and `pip install flash-attn`; "
                         "use auto or sdpa here")
    return cfg.attn_implementation


def liger_available(cuda: bool | None = None) -> bool:
    """True when Liger-Kernel can run here: CUDA present and ``liger-kernel`` installed."""
    cuda = _cuda() if cuda is None else cuda
    return cuda and importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model) -> None:
    """Patch ``model`` in place with Liger's RMSNorm, RoPE and SwiGLU kernels (not its fused cross-entropy).

    Call on the base model before peft wraps it. Uses transformers' own Liger integration.
    Note that Liger patches RoPE for the whole model class, so later models of the same
    architecture in this process use it too.
    """
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(model, {"rope": True, "rms_norm": True, "swiglu": True,
                               "cross_entropy": False, "fused_linear_cross_entropy": False})


def prepare_model(model, cfg: TrainConfig) -> dict:
    """Set the attention kernel and apply Liger kernels on ``model`` (in place) as ``cfg`` asks.

    Returns:
        What is on, for logs and the run summary: ``{"attn_implementation", "liger_kernels",
        "fused_loss", "packing", "torch_compile"}``.

    Raises:
        SpeedError: a setting explicitly asked for (not a default) that this machine cannot run,
            e.g. ``liger_kernels: true`` without CUDA or without ``pip install 'medtune[liger]'``.
    """
    attn = resolve_attention(cfg)
    if getattr(model.config, "_attn_implementation", None) != attn:
        model.set_attn_implementation(attn)
    liger = cfg.liger_kernels and liger_available()
    if cfg.liger_kernels and not liger and "liger_kernels" in cfg.model_fields_set:
        raise SpeedError("train.liger_kernels=true needs CUDA and liger-kernel: pip install 'medtune[liger]' "
                         "(or set train.liger_kernels=false)")
    if liger:
        apply_liger(model)
    return {"attn_implementation": attn, "liger_kernels": liger, "fused_loss": cfg.fused_loss,
            "packing": cfg.packing, "torch_compile": cfg.torch_compile}


def full_logits_loss(outputs, labels, num_items_in_batch=None):
    """Plain causal-LM loss from full logits (the ``fused_loss=false`` path).

    Args:
        outputs: model output with ``logits`` of shape ``(batch, seq_len, vocab)``.
        labels: ``(batch, seq_len)`` token ids, -100 where no loss is taken (unshifted).
        num_items_in_batch: label tokens in the whole accumulated batch (divides the summed loss).

    Returns:
        Scalar mean negative log-likelihood over the label tokens.
    """
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = outputs.logits
    return ForCausalLMLoss(logits, labels, vocab_size=logits.size(-1), num_items_in_batch=num_items_in_batch)


def loss_function(cfg: TrainConfig):
    """The ``compute_loss_func`` for SFTTrainer: None (trl's fused, chunked LM head) or :func:`full_logits_loss`."""
    return None if cfg.fused_loss else full_logits_loss
