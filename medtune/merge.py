"""Merge a LoRA adapter into its unquantized base and verify logit parity.

``W' = W + (lora_alpha / r) * B @ A`` for every adapted layer (Hu et al. 2021, LoRA, arXiv:2106.09685),
done by peft's ``merge_and_unload``. The merged directory holds safetensors weights, the
tokenizer with its chat template, and a generation config whose ``eos_token_id`` lists every
end-of-turn id, so chat and serving stop exactly where training taught the model to.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from medtune.card import write_model_card
from medtune.errors import MergeError, ModelError
from medtune.config import MergeConfig
from medtune.generation import render_prompt, stop_ids
from medtune.models import adapter_base, load_model, load_tokenizer, resolve_model

console = Console(stderr=True)




def _refuse_quantized_base(spec: str) -> None:
    path = Path(resolve_model(spec))
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        q = json.loads(cfg_file.read_text()).get("quantization_config") or {}
        if q.get("load_in_4bit") or q.get("quant_method") in ("bitsandbytes", "gptq", "awq") or q.get("bits") == 4:
            raise MergeError(
                f"{spec} is a quantized (4-bit) checkpoint; merging LoRA weights into it would round them away "
                "or fail. Merge onto the unquantized base model instead (the adapter trained with QLoRA works "
                "on it), e.g. merge.model=<the original fp16/bf16 model>."
            )


def merge_adapter(cfg: MergeConfig) -> dict:
    """Merge ``cfg.adapter`` into its base, save the merged model, and check logit parity.

    Args:
        cfg: merge config (resolved: ``adapter`` set; ``output_dir`` defaults to ``<adapter>-merged``).

    Returns:
        ``{"output_dir", "max_abs_logit_diff", "tolerance", "seconds"}``.

    Raises:
        MergeError: 4-bit base, or parity worse than ``cfg.tolerance`` (nothing is saved then).
        ModelError: missing adapter or base mismatch.
    """
    import torch

    t0 = time.time()
    adapter = Path(cfg.adapter or "")
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    base = cfg.model or adapter_base(adapter)
    if base is None:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    _refuse_quantized_base(base)
    out = Path(cfg.output_dir or adapter.with_name(adapter.name + "-merged"))
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base, cfg.trust_remote_code)
    model = load_model(base, adapter=adapter, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code).eval()
    probe = render_prompt(tokenizer, [{"role": "user", "content": cfg.probe_prompt}])
    with torch.no_grad():
        before = model(probe).logits
        merged = model.merge_and_unload()
        diff = (merged(probe).logits - before).abs().max().item()
    if diff > cfg.tolerance:
        raise MergeError(f"merge parity failed: max |adapter logits - merged logits| = {diff:.3g} > tolerance {cfg.tolerance}")
    merged.generation_config.eos_token_id = stop_ids(merged, tokenizer)
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {"output_dir": str(out), "base": base, "adapter": str(adapter),
               "max_abs_logit_diff": diff, "tolerance": cfg.tolerance, "seconds": round(time.time() - t0, 1)}
    (out / "medtune_merge.json").write_text(json.dumps(summary, indent=2))
    write_model_card(out)
    console.print(f"[green]merged[/] {adapter} into {base} -> {out}")
    # its own line, so a narrow console never wraps the figure that scripts and tests read
    console.print(f"parity: max |dlogit| = {diff:.2e} (tolerance {cfg.tolerance}) in {summary['seconds']} s")
    return summary
