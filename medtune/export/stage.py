"""The export stage: transformers model directory -> GGUF files (+ Modelfile), parity-checked."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medtune.card import write_model_card
from medtune.config import ExportConfig
from medtune.errors import ExportError
from medtune.export.gguf import convert_to_gguf, gguf_metadata
from medtune.export.ollama import modelfile
from medtune.export.parity import compare_gguf, hf_reference
from medtune.generation import stop_ids
from medtune.llamacpp import import_llama_cpp, quantize
from medtune.models import load_model, load_tokenizer, resolve_model

console = Console(stderr=True)


def _gguf_files(model_dir: Path, out: Path, cfg: ExportConfig, tokenizer) -> dict[str, Path]:
    """Convert to f16 (always: the quantizer's input and the parity anchor), then quantize each level."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir.resolve().name)
    f16 = convert_to_gguf(model_dir, out / f"{name}-f16.gguf", cfg.tokenizer_pre)
    meta = gguf_metadata(f16)
    if meta["chat_template"] != tokenizer.chat_template:
        raise ExportError(f"{f16}: the chat template in the GGUF metadata differs from the tokenizer's")
    files = {"f16": f16}
    for level in cfg.quant:
        if level != "f16":
            t0 = time.time()
            files[level] = quantize(f16, out / f"{name}-{level}.gguf", level)
            console.print(f"quantized {level} in {time.time() - t0:.1f} s -> {files[level]}")
    return files


def _parity(model_dir: Path, files: dict[str, Path], cfg: ExportConfig, tokenizer) -> dict:
    import torch

    model = load_model(str(model_dir), dtype=torch.float32, trust_remote_code=cfg.trust_remote_code).eval()
    stops = stop_ids(model, tokenizer)
    reference = hf_reference(model, tokenizer, cfg.prompts, cfg.system_prompt, cfg.parity_tokens)
    levels = {level: compare_gguf(path, reference, stops) for level, path in files.items()}
    return {"reference": "transformers float32, greedy", "n_tokens": cfg.parity_tokens, "system_prompt": cfg.system_prompt,
            "prompts": cfg.prompts, "reference_tokens": [r["tokens"] for r in reference], "levels": levels}


def _print_parity(report: dict) -> None:
    table = Table(title=f"GGUF parity vs transformers (greedy, {report['n_tokens']} tokens x {len(report['prompts'])} prompts)")
    for col in ("level", "greedy match", "top-1 agreement", "mean |dlogprob|", "max |dlogprob|", "tokenizer", "stops"):
        table.add_column(col)
    for level, r in report["levels"].items():
        table.add_row(level, f"{sum(r['greedy_match'])}/{sum(r['tokens'])}" + (" exact" if r["exact"] else ""),
                      f"{r['agreement']:.3f}", f"{r['mean_abs_dlogprob']:.4f}", f"{r['max_abs_dlogprob']:.4f}",
                      "same" if r["tokenizer_match"] else "DIFFERS", "ok" if r["stops_are_eog"] else "MISSING")
    console.print(table)


def export_model(cfg: ExportConfig) -> dict:
    """Export ``cfg.model`` (a merged directory or pack) to GGUF at each ``cfg.quant`` level, check parity,
    and write ``parity.json``, ``README.md`` (model card) and, for ``format: ollama``, a ``Modelfile``.

    Args:
        cfg: resolved export config (``model`` and ``output_dir`` set; an adapter is merged by the caller).

    Returns:
        ``{"output_dir", "files", "parity", "modelfile", "seconds"}``.

    Raises:
        ExportError: converter failure, chat template lost, f16 parity not exact, or end-of-turn tokens
            that llama.cpp would not stop at (the files are kept for inspection, parity.json written).
        ModelError: llama-cpp-python missing (install hint) or the model cannot be loaded.
    """
    t0 = time.time()
    import_llama_cpp()  # fail early with the install hint
    if cfg.adapter is not None:
        raise ExportError("export_model exports a merged model; merge the adapter first (medtune.run.export_merged, "
                          "or `medtune export BASE --adapter ADAPTER`)")
    if cfg.model is None or cfg.output_dir is None:
        raise ExportError("export needs a model and an output_dir (give --model, or a recipe with merge/export)")
    model_dir, out = Path(resolve_model(cfg.model)), Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(model_dir), cfg.trust_remote_code)
    files = _gguf_files(model_dir, out, cfg, tokenizer)
    report = None
    if cfg.parity:
        report = _parity(model_dir, files, cfg, tokenizer)
        (out / "parity.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        _print_parity(report)
    if "f16" not in cfg.quant:
        files.pop("f16").unlink()
    if report and not report["levels"]["f16"]["exact"]:
        raise ExportError(f"f16 GGUF does not reproduce the transformers model's greedy tokens; see {out / 'parity.json'}")
    if report and not report["levels"]["f16"]["tokenizer_match"]:
        console.print("[yellow]warning:[/] llama.cpp's tokenizer (GGUF) splits some parity prompts differently from the "
                      "transformers tokenizer; check export.tokenizer_pre (parity.json: tokenizer_match)")
    if report and not all(r["stops_are_eog"] for r in report["levels"].values()):
        raise ExportError(f"llama.cpp would not stop at every end-of-turn token of {model_dir}; see {out / 'parity.json'}")
    written = None
    if cfg.format == "ollama":
        first = files[cfg.quant[0]]
        stops = tokenizer.convert_ids_to_tokens(sorted(set(stop_ids(load_model_config(model_dir), tokenizer))))
        written = out / "Modelfile"
        written.write_text(modelfile(first.name, tokenizer, stops, cfg.system_prompt), encoding="utf-8")
    summary = {"output_dir": str(out), "model": str(model_dir), "files": {k: str(v) for k, v in files.items()},
               "modelfile": str(written) if written else None, "seconds": round(time.time() - t0, 1),
               "parity": {k: {m: v[m] for m in ("exact", "agreement", "mean_abs_dlogprob")}
                          for k, v in (report or {"levels": {}})["levels"].items()}}
    (out / "medtune_export.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    write_model_card(out, source=model_dir, export=summary)
    _print_commands(files, written, cfg)
    if cfg.push_to_hub:
        summary["hub"] = push_to_hub(out, cfg.push_to_hub)
    return summary


def load_model_config(model_dir: Path):
    """A stand-in with the ``generation_config`` of ``model_dir`` (enough for :func:`stop_ids`)."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        return SimpleNamespace(generation_config=GenerationConfig.from_pretrained(model_dir))
    except OSError:
        return SimpleNamespace(generation_config=GenerationConfig())


def _print_commands(files: dict[str, Path], modelfile_path: Path | None, cfg: ExportConfig) -> None:
    gguf = files[cfg.quant[0]]
    console.print(f"\n[bold]Run it[/]\n  llama.cpp:  llama-cli -m {gguf} -cnv\n"
                  f"  medtune:    medtune chat --backend llamacpp --model {gguf}\n"
                  f"  server:     medtune serve --backend llamacpp --model {gguf}", highlight=False, soft_wrap=True)
    if modelfile_path:
        console.print(f"  Ollama:     cd {modelfile_path.parent} && ollama create medtune-model -f Modelfile "
                      "&& ollama run medtune-model", highlight=False, soft_wrap=True)


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the Hugging Face model repo ``repo`` (created private if absent).

    Raises:
        ExportError: offline (``HF_HUB_OFFLINE``), no token, or the hub cannot be reached; says what to do.
    """
    import os

    from huggingface_hub import HfApi

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ExportError(f"cannot push to the hub: HF_HUB_OFFLINE is set. The export is complete in {folder}; "
                          f"push it later with `huggingface-cli upload {repo} {folder}` on a machine with network.")
    try:
        api = HfApi()
        api.create_repo(repo, private=True, exist_ok=True)
        return api.upload_folder(folder_path=str(folder), repo_id=repo).commit_url
    except Exception as e:  # network, auth and hub errors alike: one message that says what to do
        raise ExportError(f"cannot push {folder} to the hub repo {repo} ({e.__class__.__name__}: {str(e)[:200]}). "
                          f"The export is complete locally; check the network and `huggingface-cli login`, then "
                          f"`huggingface-cli upload {repo} {folder}`.") from None
