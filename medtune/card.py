"""The model card (``README.md``) written next to every merged and exported model.

It is assembled from what the earlier stages left on disk, so it needs no arguments beyond the
model directory: the merge record (``medtune_merge.json``: base and adapter), the adapter's
``train_config.json`` / ``train_summary.json``, the data card (``DATA_CARD.md`` beside the
training file), the evaluation summary (``<run>/eval/summary.json``), and for an export its
files and GGUF parity. It always ends with the safety notice and the system prompt in use.
"""

from __future__ import annotations

import json
from pathlib import Path

from medtune.config import DEFAULT_SYSTEM_PROMPT

SAFETY_NOTICE = (
    "This model gives general health information. It is not a medical device, does not diagnose, and "
    "can be wrong. It was fine-tuned with medtune; medtune's chat, serve and web front-ends add a red-flag "
    "safety layer (urgent-care message with the local emergency number, medical disclaimer) that a bare "
    "GGUF/Ollama deployment does not have: the Modelfile carries the system prompt below, not the red-flag "
    "detector. Keep a clinician in the loop."
)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _provenance(model_dir: Path) -> tuple[dict, dict | None, dict | None, Path | None]:
    """``(merge record, train config, train summary, data card path)`` found from ``model_dir``."""
    merge = _read_json(model_dir / "medtune_merge.json") or {}
    adapter = Path(merge["adapter"]) if merge.get("adapter") else None
    train = _read_json(adapter / "train_config.json") if adapter else None
    summary = _read_json(adapter / "train_summary.json") if adapter else None
    files = (train or {}).get("train_file") or []
    first = Path(files[0] if isinstance(files, list) else files) if files else None
    card = first.parent / "DATA_CARD.md" if first and (first.parent / "DATA_CARD.md").is_file() else None
    return merge, train, summary, card


def _eval_table(summary: dict) -> list[str]:
    rows = ["| model | benchmark | score |", "|---|---|---|"]
    for name, r in summary.items():
        if not isinstance(r, dict) or name == "comparison":
            continue
        for bench, m in (r.get("mcq") or {}).items():
            rows.append(f"| {name} | MCQ {bench} (n={m.get('n')}) | accuracy {m.get('accuracy', 0):.3f} |")
        if r.get("fact"):
            rows.append(f"| {name} | fact recall (>=1/2 items) | {r['fact'].get('hit_half', 0):.3f} |")
        if r.get("heldout"):
            rows.append(f"| {name} | held-out perplexity | {r['heldout'].get('perplexity', 0):.2f} |")
    return rows if len(rows) > 2 else []


def model_card(model_dir: Path, source: Path | None = None, export: dict | None = None) -> str:
    """The card's markdown for ``model_dir`` (provenance read from ``source`` when it is the exported model)."""
    merge, train, tsum, data_card = _provenance(Path(source or model_dir))
    base = merge.get("base") or (train or {}).get("model") or str(source or model_dir)
    lines = ["---", "tags: [medical, medtune" + (", gguf" if export else "") + "]", f"base_model: {base}", "---", "",
             f"# {Path(model_dir).resolve().name}", "", f"Fine-tuned from `{base}` with medtune."]
    if merge:
        lines += ["", "## Merge", "", f"Adapter `{merge.get('adapter')}` merged into `{base}`; logit parity "
                  f"max |dlogit| = {merge.get('max_abs_logit_diff', 0):.2e} (tolerance {merge.get('tolerance')})."]
    if train:
        keys = ("method", "lora_r", "lora_alpha", "learning_rate", "num_train_epochs", "max_steps", "max_seq_length", "train_file")
        lines += ["", "## Training recipe", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {train.get(k)} |" for k in keys if k in train]
        if tsum:
            lines += [f"| {k} | {v} |" for k, v in tsum.items() if isinstance(v, (int, float, str))][:8]
    if data_card:
        body = data_card.read_text(encoding="utf-8").splitlines()[1:25]
        lines += ["", "## Data card (summary)", "", *body, "", f"Full card: `{data_card}`."]
    evals = _read_json(Path(source or model_dir).parent / "eval" / "summary.json")
    if evals and _eval_table(evals):
        lines += ["", "## Evaluation", "", *_eval_table(evals)]
    if export:
        lines += ["", "## Files", "", *[f"- `{Path(p).name}` ({k})" for k, p in export["files"].items()]]
        if export.get("parity"):
            lines += ["", "GGUF parity with the transformers model (greedy decoding, see parity.json):", "",
                      "| level | exact | top-1 agreement | mean abs dlogprob |", "|---|---|---|---|"]
            lines += [f"| {k} | {v['exact']} | {v['agreement']:.3f} | {v['mean_abs_dlogprob']:.4f} |"
                      for k, v in export["parity"].items()]
    lines += ["", "## Safety notice", "", SAFETY_NOTICE, "", "System prompt:", "", f"> {DEFAULT_SYSTEM_PROMPT}", ""]
    return "\n".join(lines)


def write_model_card(model_dir: Path, source: Path | None = None, export: dict | None = None) -> Path:
    """Write ``model_dir/README.md`` (see :func:`model_card`) and return its path."""
    path = Path(model_dir) / "README.md"
    path.write_text(model_card(model_dir, source, export), encoding="utf-8")
    return path
