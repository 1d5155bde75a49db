"""Speed and memory settings of a training run: attention kernel, fused loss, Liger kernels, torch.compile.

Which objectives each setting concerns: ``attn_implementation``, ``liger_kernels``,
``torch_compile`` and gradient checkpointing act on the model and hold for all six objectives
(the harness, :mod:`medtune.train.harness`, applies them before any trainer is built).
``packing``, ``pad_to_multiple_of`` and ``fused_loss`` shape medtune's own SFT/PT batches and loss;
trl's DPO/KTO/ORPO/GRPO trainers build their own batches (padded pairs, sampled completions)
and losses, so for those objectives the three are off (:func:`packs`) and reported so.

Each setting is a :class:`~medtune.config.TrainConfig` field that can be turned off; the
defaults pick the fastest path this machine supports. None of them changes the maths:
``tests/test_train_speed.py`` checks that the first losses match the plain path.

- ``packing`` (default on): trl's best-fit-decreasing packer puts several examples in one
  row; its padding-free collator gives each example position ids that restart at 0, from
  which transformers builds a block-diagonal causal mask (SDPA, eager) or variable-length
  offsets (FlashAttention), so packed examples never attend to each other. On CPU the dense
  block-diagonal mask stays: one causal SDPA call per example measured slower there (issue 16,
  docs/benchmarks.md).
- ``pad_to_multiple_of`` (default with packing on CPU: ``max_seq_length``): every packed row is
  padded to the same length. The padding is a run of one-token sequences (position id 0, label
  -100) that attends only to itself, so losses are unchanged. On CPU, rows of varying length make
  every step allocate differently sized buffers; glibc's allocator then keeps ever more fragmented
  memory, and peak RSS grew by 1.2 GiB over 36 steps (0.5B model, 512-token rows; flat with fixed
  rows, issue 16, docs/benchmarks.md). The extra work is ~3% more tokens at 512-token rows. CUDA's
  caching allocator has no such problem, so there is no padding on GPU.
- ``fused_loss`` (default on with CUDA, off on CPU): trl 1.16's fused LM head projects hidden states onto the
  vocabulary in tiles of 4,096 tokens x 32,768 vocabulary entries and folds each tile into
  an online log-sum-exp, so the ``(tokens, vocab)`` fp32 logits never exist at once (with
  a 152k vocabulary and 16k tokens per step they would take 9.3 GiB, 2x that with their
  gradient). Off: full logits and transformers' ``ForCausalLMLoss``. On CPU trl has no Triton
  and folds the tiles in plain torch ops, which measured ~25% slower per step than full
  logits (qwen2.5-coder-0.5b, 512-token packed rows), so the default there is off.
- ``liger_kernels`` (default on where available): Liger-Kernel's Triton RMSNorm, RoPE and
  SwiGLU (Hsu et al. 2024, arXiv:2410.10989) on CUDA. Its fused linear cross-entropy is not
  used: it replaces the model's forward, which trl's fused LM head (above) already fuses.
- ``attn_implementation`` (default ``auto``): on CUDA, FlashAttention-2 when the
  ``flash-attn`` package is installed, else (packing on) ``varlen``: PyTorch's own
  variable-length FlashAttention kernel (``torch.nn.attention.varlen``, no extra package),
  driven by the sequence offsets trl's padding-free collator passes; else SDPA. The padding-
  free collator puts a whole batch in one row, so SDPA there computes a dense
  ``(tokens x tokens)`` block-diagonal mask and wastes the masked blocks; the varlen kernels
  only compute each example's own causal triangle (Dao 2023, FlashAttention-2, arXiv:2307.08691).
- ``torch_compile`` (default off): ``torch.compile`` of the model through the Trainer.
- ``sparse_lora_dropout`` (default on on CPU with ``lora_dropout > 0``): peft's LoRA dropout is a
  ``torch.nn.Dropout`` per adapted linear, and torch's CPU dropout draws one Mersenne-Twister number per
  element of the ``(tokens, in_features)`` input (seven masks per decoder layer): on the 0.5B pack with
  ``lora_dropout: 0.05`` the step ran 1.36x faster with no dropout at all. :class:`SparseDropout` draws only
  the positions of the dropped elements (geometric gaps, :func:`dropped_positions`: ~``p`` as many random
  numbers) and zeroes those: the same i.i.d. Bernoulli mask distribution from another random stream, so the
  first loss is equal (LoRA B starts at zero) and later ones equal in distribution. Measured 1.14x tokens/s
  and 0.46 GiB less peak RSS on that step (docs/benchmarks.md). CUDA's fused dropout is left alone.
- ``bf16_frozen_base`` (default on with bf16 + LoRA on CPU, objectives sft and pt): the frozen base's ``nn.Linear`` weights and
  biases are stored in bfloat16 once. Under bf16 autocast every ``linear`` casts its fp32 weight to bf16
  in every forward (autocast's cast cache keeps only casts of weights that require a gradient, and frozen
  ones do not), i.e. ~2 GB read and 1 GB written per step for a 0.5B model, plus an fp32 master copy
  nobody updates. Stored in bf16, the matmuls get the very same bf16 operands (the losses are equal), the
  LoRA weights (peft keeps adapters in fp32 over a bf16 base) and AdamW state stay fp32, and embeddings and
  norms, which autocast leaves in fp32, are not touched. CUDA loads the whole base in bf16 already.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import Trainer
from trl import SFTTrainer

from medtune.config import TrainConfig
from medtune.errors import SpeedError  # noqa: F401  (raised here; imported from here by tests)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


VARLEN = "medtune_varlen"  # the name under which varlen_attention is registered with transformers


def _varlen_kernel():
    """PyTorch's ``varlen_attn`` when it can run here (CUDA, sm80+, torch with GQA and window support), else None."""
    import inspect

    import torch

    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn if {"window_size", "enable_gqa"} <= set(params) else None


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Causal attention over a padding-free packed row with PyTorch's variable-length kernel.

    Args:
        query: ``(1, heads, tokens, head_dim)``; key, value: ``(1, kv_heads, tokens, head_dim)``.
        attention_mask: ignored on packed rows (the offsets define the blocks).
        kwargs: ``cu_seq_lens_q`` (``(n_examples + 1,)`` int32 token offsets) and ``max_length_q``
            from trl's padding-free collator. Without them (unpacked batches, generation) this
            falls back to transformers' SDPA attention.

    Returns:
        ``(output, None)`` with output ``(1, tokens, heads, head_dim)``, as transformers expects.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu, kernel = kwargs.get("cu_seq_lens_q"), _varlen_kernel()
    if cu is None or query.shape[0] != 1 or kernel is None or (dropout and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    n = int(kwargs.get("max_length_q") or int(cu.diff().max()))
    cu = cu.to(q.device, torch.int32)
    out = kernel(q, k, v, cu, cu, n, n, scale=scaling, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
    return out.unsqueeze(0), None


def _register_varlen() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)  # used only by the SDPA fallback


def packs(cfg: TrainConfig) -> bool:
    """Whether this run packs examples: ``cfg.packing`` for sft and pt; never for trl's own batches (dpo, kto, orpo, grpo)."""
    return cfg.packing and cfg.objective in ("sft", "pt")


def resolve_attention(cfg: TrainConfig, cuda: bool | None = None) -> str:
    """The transformers ``attn_implementation`` for this run.

    ``auto`` gives ``flash_attention_2`` on CUDA with ``flash-attn`` installed, else
    :data:`VARLEN` on CUDA with packing when PyTorch's varlen kernel can run, else ``sdpa``.

    Raises:
        SpeedError: ``flash_attention_2`` or ``varlen`` asked for where they cannot run.
    """
    cuda = _cuda() if cuda is None else cuda
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    choice = cfg.attn_implementation
    if choice == "auto":
        if cuda and has_fa2:
            return "flash_attention_2"
        choice = "varlen" if packs(cfg) and _varlen_kernel() is not None else "sdpa"
    if choice == "flash_attention_2" and not (cuda and has_fa2):
        raise SpeedError("train.attn_implementation=flash_attention_2 needs CUDA and `pip install flash-attn`; "
                         "use auto or sdpa here")
    if choice == "varlen":
        if _varlen_kernel() is None:
            raise SpeedError("train.attn_implementation=varlen needs a CUDA GPU (sm80+) and a PyTorch with "
                             "torch.nn.attention.varlen (window_size, enable_gqa); use auto or sdpa here")
        _register_varlen()
        return VARLEN
    return choice


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
        "fused_loss", "packing", "pad_to_multiple_of", "torch_compile", "gradient_checkpointing", "bf16_frozen_base"}``.

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
    frozen = bf16_frozen_base_on(cfg)
    if frozen:
        import torch

        cast_frozen_linears(model, torch.bfloat16)
    return {"attn_implementation": attn, "liger_kernels": liger, "fused_loss": fused_loss_on(cfg),
            "packing": packs(cfg), "pad_to_multiple_of": pad_multiple(cfg), "torch_compile": cfg.torch_compile,
            "gradient_checkpointing": cfg.gradient_checkpointing, "bf16_frozen_base": frozen}


def bf16_frozen_base_on(cfg: TrainConfig, cuda: bool | None = None) -> bool:
    """``cfg.bf16_frozen_base`` when set, else on exactly for bf16 LoRA sft/pt training on CPU.

    The preference and RL objectives are left out: trl's DPO/KTO/ORPO/GRPO trainers run forward
    passes (reference log-probabilities, generation) that are not all under autocast, and a bf16
    weight meeting an fp32 input outside autocast is an error.

    Raises:
        SpeedError: asked for without bf16 autocast, with full fine-tuning (nothing is frozen) or with
            an objective other than sft/pt.
    """
    if cfg.bf16_frozen_base is None:
        return bool(cfg.bf16 and cfg.method == "lora" and cfg.objective in ("sft", "pt")
                    and not (_cuda() if cuda is None else cuda))
    if cfg.bf16_frozen_base and not (cfg.bf16 and cfg.method in ("lora", "qlora") and cfg.objective in ("sft", "pt")):
        raise SpeedError("train.bf16_frozen_base=true needs train.bf16=true (autocast), a LoRA method (full "
                         "fine-tuning has no frozen base) and objective sft or pt; set it to false or leave it unset")
    return cfg.bf16_frozen_base


def cast_frozen_linears(model, dtype) -> int:
    """Store every floating ``nn.Linear`` weight and bias of ``model`` (before peft wraps it) in ``dtype``,
    except weights tied to another module's (e.g. an LM head tied to the embedding).

    Returns:
        Bytes saved (0 when they already were ``dtype`` or are quantized).
    """
    import torch

    # A weight shared with another module (an LM head tied to the token embedding) stays as it is: in
    # bf16 the embedding would put the residual stream in bf16 too, which autocast never does.
    shared = {id(p) for m in model.modules() if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False)}
    saved = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        for param in (module.weight, module.bias):
            if param is not None and id(param) not in shared and param.is_floating_point() and param.dtype != dtype:
                before = param.numel() * param.element_size()
                param.data = param.data.to(dtype)
                saved += before - param.numel() * param.element_size()
    return saved


def sparse_lora_dropout_on(cfg: TrainConfig, cuda: bool | None = None) -> bool:
    """``cfg.sparse_lora_dropout`` when set, else on exactly for LoRA with ``lora_dropout > 0`` on CPU."""
    if cfg.sparse_lora_dropout is not None:
        return cfg.sparse_lora_dropout
    return cfg.method in ("lora", "qlora") and cfg.lora_dropout > 0 and not (_cuda() if cuda is None else cuda)


def dropped_positions(n: int, p: float, generator=None):
    """Positions of the dropped elements of an i.i.d. Bernoulli(``p``) dropout mask over ``n`` elements.

    The gaps between successive dropped positions of an i.i.d. mask are geometric, P(gap = k) = (1-p)^(k-1) p,
    so the positions are the cumulative sums of geometric draws, each ``floor(log U / log(1 - p)) + 1`` for U
    uniform on (0, 1] (inverse transform sampling; Devroye 1986, "Non-Uniform Random Variate Generation",
    ch. X.2). That takes about ``p * n`` uniform draws where ``torch.bernoulli_`` takes ``n``.

    Returns:
        ``(k,)`` int64, increasing, each in ``[0, n)``; ``k`` is Binomial(n, p) distributed.
    """
    import math

    if n <= 0 or p <= 0:
        return torch.zeros(0, dtype=torch.int64)
    if p >= 1:
        return torch.arange(n)
    log_q, expected = math.log1p(-p), n * p
    draw = int(expected + 8 * math.sqrt(expected) + 16)  # rarely short: then draw again from the last position
    found, last = [], -1
    while True:
        u = 1.0 - torch.rand(draw, dtype=torch.float64, generator=generator)  # (0, 1]
        pos = last + torch.cumsum(torch.floor(torch.log(u) / log_q).long() + 1, 0)
        found.append(pos[pos < n])
        if int(pos[-1]) >= n:
            return torch.cat(found)
        last = int(pos[-1])


class _DropAt(torch.autograd.Function):
    """``x * scale`` with the flat positions ``pos`` zeroed; the gradient likewise (one pass each way)."""

    @staticmethod
    def forward(ctx, x, pos, scale):
        out = (x * scale).contiguous()
        out.view(-1).index_fill_(0, pos, 0)
        ctx.save_for_backward(pos)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        out = (grad * ctx.scale).contiguous()
        out.view(-1).index_fill_(0, pos, 0)
        return out, None, None


class SparseDropout(torch.nn.Module):
    """Inverted dropout (Srivastava et al. 2014, JMLR 15) whose mask comes from :func:`dropped_positions`.

    Forward in training: ``x / (1 - p)`` with the dropped elements set to 0, as ``torch.nn.Dropout`` (same
    mask distribution, another random stream); in evaluation the input unchanged. Shapes: any; output
    like ``x``.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return _DropAt.apply(x, dropped_positions(x.numel(), self.p).to(x.device), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_sparse_lora_dropout(model) -> int:
    """Replace every ``torch.nn.Dropout`` in the LoRA layers' ``lora_dropout`` of the peft ``model`` by a
    :class:`SparseDropout` of the same ``p``. Returns the number replaced."""
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                drops[name] = SparseDropout(drop.p)
                swapped += 1
    return swapped


def pad_multiple(cfg: TrainConfig, cuda: bool | None = None) -> int | None:
    """Tokens each collated batch is padded to a multiple of: ``cfg.pad_to_multiple_of`` when set
    (0: None), else ``max_seq_length`` for packed rows on CPU, else None (no padding); None outside sft/pt."""
    if cfg.objective not in ("sft", "pt"):
        return None
    if cfg.pad_to_multiple_of is not None:
        return cfg.pad_to_multiple_of or None
    on_cuda = _cuda() if cuda is None else cuda
    return cfg.max_seq_length if packs(cfg) and not on_cuda else None


def real_tokens(position_ids) -> int:
    """Non-padding tokens of a padding-free batch ``position_ids: (1, tokens)``: the padded tail is a run of 0s."""
    nonzero = (position_ids[0] != 0).nonzero()
    return int(nonzero[-1]) + 1 if len(nonzero) else int(position_ids.size(1))


def fused_loss_on(cfg: TrainConfig, cuda: bool | None = None) -> bool:
    """``cfg.fused_loss`` when set, else on exactly when CUDA is available; always off outside sft/pt."""
    if cfg.objective not in ("sft", "pt"):
        return False
    return cfg.fused_loss if cfg.fused_loss is not None else (_cuda() if cuda is None else cuda)


LOGITS_BUCKET = 128  # logit rows come in multiples of this (see answer_only_loss)


def answer_only_loss(model, inputs: dict, num_items_in_batch=None):
    """Causal-LM loss with logits built only where there is a target: ``(loss, outputs)``.

    The LM head runs on the hidden states of the positions whose next token is a label
    (``labels[:, 1:] != -100``), through transformers' boolean ``logits_to_keep``; prompt positions,
    packing padding and example boundaries get no logits at all. The loss is the same sum of
    token cross-entropies as transformers' ``ForCausalLMLoss`` (fp32 logits, divided by
    ``num_items_in_batch`` when given, else by the number of targets), so nothing about the maths
    changes; the ``(tokens, vocabulary)`` logits, their fp32 copy, log-softmax and gradient shrink
    to the answer tokens (~63% of the quickstart's tokens: 10% fewer FLOPs for a 0.5B model with a
    152k vocabulary, and a lower peak; issue 16, docs/benchmarks.md).

    Args:
        model: a causal LM whose ``forward`` takes ``logits_to_keep`` (see :func:`keeps_logits`).
        inputs: the collated batch with ``labels: (batch, seq_len)``, -100 where there is no target.
        num_items_in_batch: targets in the whole accumulated batch (the Trainer's count), or None.

    The number of logit rows is rounded up to a multiple of :data:`LOGITS_BUCKET` with positions
    whose target is -100 (ignored by the loss), so a run sees a handful of logits shapes, not one
    per step: on CPU, glibc's allocator fragments under ever-new sizes and peak RSS creeps up.

    Returns:
        ``(loss, outputs)``; ``outputs.logits`` is ``(kept positions, vocab)``.
    """
    import torch

    labels = inputs["labels"]
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    keep = targets != -100
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    extra = -int(keep.sum()) % LOGITS_BUCKET  # round the kept rows up to a multiple of LOGITS_BUCKET ...
    keep.view(-1)[(~keep).view(-1).nonzero()[:extra, 0]] = True  # ... with positions whose target is -100 (ignored)
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), targets[keep], reduction="sum")
    return loss / count, outputs


def keeps_logits(model) -> bool:
    """Whether ``model`` (peft- or accelerate-wrapped or not) takes ``logits_to_keep`` in ``forward``."""
    import inspect

    while hasattr(model, "module"):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class PlainLossSFTTrainer(SFTTrainer):
    """trl's ``SFTTrainer`` with the plain causal-LM loss in one forward, logits for answer tokens only.

    trl 1.16 with a ``compute_loss_func`` runs a second, no-grad fused forward only to log entropy
    and token accuracy; this subclass skips those two metrics instead of paying that forward, and
    computes the loss with :func:`answer_only_loss` (transformers' full-logits loss for models
    whose ``forward`` has no ``logits_to_keep``).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        if model.training:  # keep trl's num_tokens log (non-padding tokens seen)
            mask = inputs.get("attention_mask")
            local = mask.sum() if mask is not None else inputs["position_ids"].new_tensor(real_tokens(inputs["position_ids"]))
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        if "labels" not in inputs or not keeps_logits(model):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = answer_only_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages the gradients
        return (loss, outputs) if return_outputs else loss


def trainer_class(cfg: TrainConfig) -> type:
    """The trainer class: trl's ``SFTTrainer`` (fused loss), or :class:`PlainLossSFTTrainer`."""
    return SFTTrainer if fused_loss_on(cfg) else PlainLossSFTTrainer
