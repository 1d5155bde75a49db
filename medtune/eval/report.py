"""``medtune eval report``: one self-contained HTML file (and markdown) from evaluation results.

Collects every ``results.json`` under the given directories and renders tables and
matplotlib plots (inlined as base64 PNG, so the file opens offline with no external
assets): accuracy with 95% CI error bars per model and benchmark and per subject, fact-recall
hit rates (closed-book vs RAG when a ``<model>+rag`` run is there), retrieval recall@k / MRR and
citation precision (``eval rag``), held-out answer perplexity, judge score distributions and pairwise win rates,
lm-evaluation-harness results (``eval lm-eval``), HealthBench-style rubric scores per tag (``eval rubric``),
and "What the models said": a seeded sample of answers per evaluation and language, models side by side
(:mod:`medtune.eval.answer_samples`); with relative links to each run's per-item results.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from medtune.errors import EvalError
from medtune.eval.answer_samples import render_html, render_markdown, side_by_side
from medtune.eval.mcq import VERDICT_BLOCKS
from medtune.eval.stats import mcnemar_exact, paired_bootstrap

console = Console(stderr=True)


def collect(dirs: list[Path]) -> list[dict]:
    """Every ``results.json`` under ``dirs`` (sorted by path), each with ``_dir`` set.

    Raises:
        EvalError: none found.
    """
    found = []
    for d in dirs:
        for path in sorted(Path(d).rglob("results.json")):
            found.append({**json.loads(path.read_text(encoding="utf-8")), "_dir": path.parent})
    if not found:
        raise EvalError(f"no results.json under {', '.join(map(str, dirs))}; run `medtune eval mcq/fact/judge` first")
    return found


def _use_cjk_fonts() -> None:
    """Let labels in Chinese/Korean render: add any installed CJK font as a per-glyph fallback."""
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = sorted({f.name for f in font_manager.fontManager.ttflist
                  if any(k in f.name for k in ("CJK", "WenQuanYi", "Nanum", "Noto Sans SC", "Noto Sans KR"))})
    plt.rcParams["font.family"] = ["DejaVu Sans", *cjk]


def _png(fig) -> str:
    import warnings

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with warnings.catch_warnings():  # without a CJK font, missing glyphs are drawn as boxes (tables keep the text)
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bars(groups: list[str], series: dict[str, list[tuple[float, float, float]]], ylabel: str, title: str) -> str:
    """Grouped bar chart; ``series[name]`` = one ``(value, low, high)`` per group (NaN = missing)."""
    try:
        import matplotlib
    except ImportError:
        raise EvalError("the report plots need matplotlib: pip install 'medtune[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _use_cjk_fonts()

    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(groups) * max(1, len(series)) / 2 + 2), 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + i * width - 0.4 + width / 2 for g in range(len(groups))]
        ys = [v[0] for v in vals]
        err = [[max(0.0, v[0] - v[1]) for v in vals], [max(0.0, v[2] - v[0]) for v in vals]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(range(len(groups)), [g[:28] for g in groups], rotation=20 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def _table(headers: list[str], rows: list[list[str]]) -> tuple[str, str]:
    """(html, markdown) of a table whose cells are already escaped/plain strings."""
    h = "<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in headers) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    md = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n" + "".join(
        "| " + " | ".join(_strip_tags(c) for c in r) + " |\n" for r in rows)
    return h, md


def _strip_tags(cell: str) -> str:
    import re

    link = re.match(r'<a href="([^"]+)">(.*)</a>', cell)
    return f"[{html.unescape(link.group(2))}]({link.group(1)})" if link else html.unescape(re.sub(r"<[^>]+>", "", cell))


def _link(r: dict, base: Path) -> str:
    target = Path(r["_dir"]) / r.get("predictions_file", "predictions.jsonl")
    rel = os.path.relpath(target, base)
    return f'<a href="{html.escape(rel)}">{html.escape(rel)}</a>'


def _ci(p: dict) -> str:
    return f"{p['rate']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"


def _debiased(r: dict, key: str = "debiased") -> str:
    d = r.get(key)
    return f"{d['accuracy']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d else "-"


VERDICT_WORDS = {"raw": "raw", "calibrated": "content-free", "pride": "PriDe"}


def _distribution(r: dict) -> str:
    """``A 10% / 20%, B 90% / 30% ...`` (predicted / gold), with a COLLAPSE flag when one letter takes > 60%."""
    d = r.get("option_distribution")
    if not d or not d["predicted"]:
        return "-"
    letters = sorted(set(d["predicted"]) | set(d["gold"]))
    cells = ", ".join(f"{k} {d['predicted'].get(k, 0):.0%} / {d['gold'].get(k, 0):.0%}" for k in letters)
    return (f"COLLAPSE on {d['top']} ({d['top_share']:.0%}): " if d["collapse"] else "") + cells


def mcq_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Accuracy table + plots (per benchmark, and per subject for each benchmark)."""
    rows = [[html.escape(r["model"]), html.escape(Path(r["data"]).name), r["mode"], str(r["n"]),
             f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", _debiased(r), _debiased(r, "pride"),
             VERDICT_WORDS[r.get("verdict", {}).get("uses", "raw")], _distribution(r),
             f"{r['unparseable_rate']:.3f}", str(r["rejected"]), _link(r, base)] for r in results]
    h, md = _table(["model", "benchmark", "mode", "n", "accuracy [95% CI]", "content-free debiased [95% CI]",
                    "PriDe debiased [95% CI]", "verdict uses", "predicted / gold option shares", "unparseable",
                    "rejected", "per-item"], rows)
    datas = sorted({Path(r["data"]).name for r in results})
    models = list(dict.fromkeys(r["model"] for r in results))
    nan = (float("nan"),) * 3
    by = {(r["model"], Path(r["data"]).name): r for r in results}
    series = {m: [(by[m, d]["accuracy"], *by[m, d]["ci95"]) if (m, d) in by else nan for d in datas] for m in models}
    imgs = [_bars(datas, series, "accuracy", "Multiple choice: accuracy (95% Wilson CI)")]
    for d in datas:
        subjects = sorted({s for m in models if (m, d) in by for s in by[m, d]["per_subject"]})
        if len(subjects) > 1:
            ser = {m: [(lambda p: (p["rate"], *p["ci95"]) if p else nan)(by[m, d]["per_subject"].get(s)) if (m, d) in by else nan
                       for s in subjects] for m in models}
            imgs.append(_bars(subjects, ser, "accuracy", f"{d}: accuracy per subject"))
    return h + "".join(f'<img src="{i}">' for i in imgs), md


def _harness_value(r: dict, m: dict | None = None) -> str:
    m = m or {"value": r["value"], "stderr": r["stderr"], "ci95": r["ci95"]}
    if m["value"] is None:
        return "-"
    if m["stderr"] is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} ± {m['stderr']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def harness_section(results: list[dict], base: Path) -> tuple[str, str]:
    """lm-evaluation-harness results (``eval lm-eval``): the main metric with the harness's stderr and a
    95% interval, the other metrics, shots, prompt form and dataset, beside medtune's own MCQ."""
    rows = [[html.escape(r["model"]), html.escape(r["harness_task"]), str(r["n"]), str(r.get("num_fewshot")),
             "chat template" if r.get("apply_chat_template") else "plain text", html.escape(str(r["metric"])),
             _harness_value(r), html.escape("; ".join(f"{k} {_harness_value(r, v)}" for k, v in r["metrics"].items() if k != r["metric"]) or "-"),
             html.escape(str(r.get("dataset"))), _link(r, base)] for r in results]
    h, md = _table(["model", "task", "n", "shots", "prompt", "metric", "value ± stderr [95% CI]", "other metrics",
                    "dataset", "per-item"], rows)
    version = next((r.get("harness_version") for r in results if r.get("harness_version")), None)
    note = f"lm-evaluation-harness {version}; stderr as the harness computes it, interval = value ± 1.96 stderr."
    tasks = list(dict.fromkeys(r["harness_task"] for r in results if r["ci95"]))
    models = list(dict.fromkeys(r["model"] for r in results))
    by = {(r["model"], r["harness_task"]): r for r in results}
    nan = (float("nan"),) * 3
    series = {m: [(by[m, t]["value"], *by[m, t]["ci95"]) if (m, t) in by and by[m, t]["ci95"] else nan for t in tasks] for m in models}
    img = f'<img src="{_bars(tasks, series, "main metric", "lm-evaluation-harness (95% CI)")}">' if tasks else ""
    return f"<p>{html.escape(note)}</p>{h}{img}", f"{note}\n\n{md}"


def _boot(b: dict) -> str:
    return f"{b['score']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]"


def rubric_section(results: list[dict], base: Path) -> tuple[str, str]:
    """HealthBench-style rubric scores (``eval rubric``): the score with its bootstrap interval per model, the
    per-tag table (themes, axes, languages) with models side by side, and the criteria most often missed."""
    head = [[html.escape(r["model"]), html.escape(Path(r["data"]).name), html.escape(str(r["judge"].get("model"))), str(r["n"]),
             f"{_boot(r['score'])} ± {r['score']['std']:.3f}", f"{r['invalid_grades']} / {r['criteria']}", _link(r, base)] for r in results]
    parts = [_table(["model", "conversations", "grader", "n", "HealthBench score [95% bootstrap CI] ± std",
                     "invalid grades", "per-item"], head)]
    cols = [f"{r['model']} ({Path(r['data']).name})" for r in results]
    tags = sorted({t for r in results for t in r["per_tag"]}, key=lambda t: (t.split(":")[0], t))
    rows = [[html.escape(t), *(f"{_boot(r['per_tag'][t])} (n={r['per_tag'][t]['n']})" if t in r["per_tag"] else "-" for r in results)]
            for t in tags]
    if rows:
        parts.append(_table(["tag", *cols], rows))
    for r in results:
        missed = [[html.escape(m["criterion"]), f"{m['points']:g}", html.escape(", ".join(m["tags"])), f"{m['missed']} / {m['graded']}",
                   f"{m['points_lost']:g}"] for m in r["most_missed"]]
        if missed:
            h, md = _table(["criterion", "points", "tags", "missed / graded", "points lost"], missed)
            parts.append((f"<h3>Criteria most often missed: {html.escape(r['model'])}</h3>{h}",
                          f"Criteria most often missed ({r['model']}):\n\n{md}"))
    note = ("Score = points of the criteria met / positive points, averaged over conversations and clipped to [0, 1] "
            "(HealthBench, Arora et al. 2025); a missed criterion is a positive one not met or a negative one met.")
    return f"<p>{html.escape(note)}</p>" + "".join(h for h, _ in parts), note + "\n\n" + "\n".join(m for _, m in parts)


def fact_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Fact-recall table (three hit criteria with CIs) and plot."""
    crit = ["hit_any", "hit_half", "hit_two_thirds"]
    rows = [[html.escape(r["model"]), html.escape(Path(r["data"]).name), str(r["n"]), *(_ci(r[c]) for c in crit),
             f"{r['mean_hit_rate']:.3f}", _ci(r["bleed"]) if r.get("bleed") else "-", _languages(r),
             _ci(r["citation_support"]) if r.get("citation_support") else "-",
             _ci(r["unanswerable"]["abstained"]) if r.get("unanswerable") else "-",
             _ci(r["unanswerable"]["declined"]) if (r.get("unanswerable") or {}).get("declined") else "-", _link(r, base)]
            for r in results]
    h, md = _table(["model", "questions", "n", ">=1 hit", ">=1/2 hit", ">=2/3 hit", "mean hit rate",
                    "bleed (names another entry's item)", ">=1 hit / bleed per language",
                    "citation support (cited passage holds the items)", "unanswerable: the model says not covered",
                    "unanswerable: the reply says so (with medtune's retrieval notes)", "per-item"], rows)
    series = {f"{r['model']} ({Path(r['data']).name})": [(r[c]["rate"], *r[c]["ci95"]) for c in crit] for r in results}
    return h + f'<img src="{_bars([">=1", ">=1/2", ">=2/3"], series, "share of questions", "Fact recall")}">', md


def _languages(r: dict) -> str:
    """``en 3/6 (bleed 1), zh ...`` from a fact result's ``by_language``."""
    langs = r.get("by_language") or {}
    return html.escape(", ".join(f"{k} {round(v['hit_any'] * v['n'])}/{v['n']} (bleed {round(v['bleed'] * v['n'])})"
                                 for k, v in langs.items())) or "-"


def _ppl(r: dict) -> str:
    ci = r.get("perplexity_ci95")
    return f"{r['perplexity']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{r['perplexity']:.2f}"


def heldout_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Held-out answer log-likelihood table."""
    rows = [[html.escape(r["model"]), html.escape(r["data"]), str(r["n"]), str(r["tokens"]),
             f"{r['nll_per_token']:.4f}", _ppl(r), _link(r, base)] for r in results]
    return _table(["model", "data", "examples", "answer tokens", "NLL / token", "perplexity [95% CI]", "per-item"], rows)


def quality_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Generation quality of every set of generated answers (:mod:`medtune.eval.quality`), models side by side."""
    rows = [[html.escape(r["model"]), html.escape(f"{r['task']}: {Path(r['data']).name}"), str(r["n"]),
             *(_ci(r["quality"][k]) if r["quality"][k]["n"] else "-" for k in ("stops", "loops", "language_match")),
             html.escape(_decoding(r.get("decoding"))), _link(r, base)] for r in results if r.get("quality")]
    return ("", "") if not rows else _table(["model", "answers", "n", "stop before max_new_tokens", "degenerate repetition",
                   "answer language = question language", "decoding", "per-item"], rows)


def _decoding(d: dict | None) -> str:
    if not d:
        return "-"
    mode = "greedy" if not d.get("temperature") else f"T={d['temperature']}, top-p={d['top_p']}"
    return f"{mode}, repetition penalty {d['repetition_penalty']}, max {d['max_new_tokens']} tokens"


def verdict(base: tuple[float, float, float], tuned: tuple[float, float, float], higher_is_better: bool,
            paired_p: float | None = None, change: str = "the fine-tune", test: str = "paired exact McNemar") -> str:
    """Words for one measure: ``(value, ci_low, ci_high)`` of base and fine-tuned (or closed-book and RAG,
    ``change`` = "retrieval"). A change is clear when the two 95% intervals do not overlap, or, for
    per-item outcomes on the same items, when the paired test gives ``paired_p`` < 0.05: the exact McNemar
    test for yes/no outcomes (:func:`medtune.eval.stats.mcnemar_exact`), a paired bootstrap for scores
    (:func:`medtune.eval.stats.paired_bootstrap`); ``test`` names it in the words."""
    up = tuned[1] > base[2]
    down = tuned[2] < base[1]
    if up or down:
        return "better" if up == higher_is_better else "WORSE"
    if tuned[0] == base[0]:
        return f"no change: {change} did not improve this"
    moved = "higher" if tuned[0] > base[0] else "lower"
    if paired_p is not None and paired_p < 0.05:
        word = "better" if (tuned[0] > base[0]) == higher_is_better else "WORSE"
        return f"{word} ({test} p = {paired_p:.3g}; the 95% CIs overlap)"
    tested = f" (paired p = {paired_p:.2g})" if paired_p is not None else ""
    return f"{moved}, but the 95% CIs overlap{tested}: no clear difference, not shown to improve"


def _outcomes(r: dict, field: str) -> dict[str, bool]:
    """Per-item yes/no ``field`` of one result's predictions file, by item id ({} when unreadable)."""
    path = Path(r.get("_dir", "")) / r.get("predictions_file", "predictions.jsonl")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return {}
    return {str(x["id"]): bool(x[field]) for x in rows if isinstance(x, dict) and "id" in x and isinstance(x.get(field), bool)}


def paired_bootstrap_p(r: dict, o: dict, field: str) -> float | None:
    """Two-sided paired-bootstrap p for the numeric per-item ``field`` over the items both results share
    (:func:`medtune.eval.stats.paired_bootstrap`), or None without per-item data."""
    a, b = _per_item(r, field), _per_item(o, field)
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    return paired_bootstrap([a[i] for i in common], [b[i] for i in common], 1000, r.get("seed") or 0)["p"]


def _per_item(r: dict, field: str) -> dict[str, float]:
    path = Path(r.get("_dir", "")) / r.get("predictions_file", "predictions.jsonl")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return {}
    return {str(x["id"]): float(x[field]) for x in rows if isinstance(x, dict) and "id" in x
            and isinstance(x.get(field), (int, float)) and not isinstance(x.get(field), bool)}


def paired_p(r: dict, o: dict, field: str) -> float | None:
    """Exact McNemar p for ``field`` over the items both results share, or None without per-item data."""
    a, b = _outcomes(r, field), _outcomes(o, field)
    common = a.keys() & b.keys()
    if not common:
        return None
    return mcnemar_exact(sum(a[i] and not b[i] for i in common), sum(b[i] and not a[i] for i in common))


def mcq_measure(r: dict, o: dict, data: str) -> tuple:
    """The MCQ measure of a comparison: the accuracy both runs name as their verdict accuracy (raw,
    content-free calibrated or PriDe, see :func:`medtune.eval.mcq.verdict_accuracy`), raw when they differ."""
    uses = r.get("verdict", {}).get("uses", "raw")
    uses = uses if uses == o.get("verdict", {}).get("uses", "raw") else "raw"
    field, key = VERDICT_BLOCKS[uses]
    label = {"raw": "MCQ accuracy", "calibrated": "MCQ accuracy, content-free calibrated", "pride": "MCQ accuracy, PriDe-debiased"}[uses]
    return f"{label} ({data})", lambda x: (x[key]["accuracy"], *x[key]["ci95"]) if key else (x["accuracy"], *x["ci95"]), True, field


def comparisons(results: list[dict], a: str = "base", b: str = "finetuned") -> list[dict]:
    """Base vs fine-tuned on every measure both have: ``{"measure", "base", "finetuned", "verdict",
    "paired_p"}`` (values as ``(value, low, high)``; ``paired_p`` for per-item yes/no measures)."""
    by = {(r["task"], r["model"], Path(r["data"]).name): r for r in results if "model" in r}  # judge runs have none
    out = []
    for (task, model, data), r in by.items():
        o = by.get((task, b, data))
        if model != a or o is None:
            continue
        measures = []  # (name, getter, higher is better, per-item field)
        if task == "mcq":
            measures.append(mcq_measure(r, o, data))
        if task == "rubric":
            measures.append((f"HealthBench score ({data})", lambda x: (x["score"]["score"], *x["score"]["ci95"]), True, "score", "bootstrap"))
        if task == "lm_eval" and r.get("ci95") and o.get("ci95"):
            measures.append((f"lm-eval {data}: {r['metric']}", lambda x: (x["value"], *x["ci95"]), r.get("higher_is_better", True), "correct"))
        if task == "fact":
            for c, label in (("hit_any", ">=1 item"), ("hit_half", ">=1/2 items")):
                measures.append((f"fact recall {label} ({data})", lambda x, c=c: (x[c]["rate"], *x[c]["ci95"]), True, c))
            if r.get("bleed") and o.get("bleed"):
                measures.append((f"fact answers naming another entry's item, bleed ({data})",
                                 lambda x: (x["bleed"]["rate"], *x["bleed"]["ci95"]), False, "bleed"))
        if task == "urgent":
            measures += [("red-flag messages answered with urgent care, safety layer off", lambda x: (x["urgent_on_red_flag"]["rate"], *x["urgent_on_red_flag"]["ci95"]), True, None),
                         ("messages without a red flag answered with an alarm", lambda x: (x["alarm_on_benign"]["rate"], *x["alarm_on_benign"]["ci95"]), False, None)]
            for lang in (lang for lang in r.get("by_lang", {}) if lang in o.get("by_lang", {})):  # per language, where both have it
                for key, label, hib in (("urgent_on_red_flag", "red-flag messages answered with urgent care, safety layer off", True),
                                        ("alarm_on_benign", "messages without a red flag answered with an alarm", False)):
                    if r["by_lang"][lang][key]["n"] and o["by_lang"][lang][key]["n"]:
                        measures.append((f"{label} ({lang})", lambda x, lang=lang, key=key: (x["by_lang"][lang][key]["rate"],
                                                                                             *x["by_lang"][lang][key]["ci95"]), hib, None))
        if task == "heldout" and r.get("perplexity_ci95") and o.get("perplexity_ci95"):
            measures.append(("held-out answer perplexity", lambda x: (x["perplexity"], *x["perplexity_ci95"]), False, None))
        if r.get("quality") and o.get("quality"):
            for k, label, hib, field in (("stops", "answers that stop", True, "stopped"), ("loops", "answers that loop", False, "loop"),
                                         ("language_match", "answers in the question's language", True, "language_match")):
                if r["quality"][k]["n"] and o["quality"][k]["n"]:
                    measures.append((f"{label} ({task})", lambda x, k=k: (x["quality"][k]["rate"], *x["quality"][k]["ci95"]), hib, field))
        for name, get, hib, field, *test in measures:
            if test:  # per-item scores, not yes/no: paired bootstrap of the difference
                p, label = paired_bootstrap_p(r, o, field), "paired bootstrap"
            else:
                p, label = (paired_p(r, o, field) if field else None), "paired exact McNemar"
            out.append({"measure": name, "base": get(r), "finetuned": get(o), "verdict": verdict(get(r), get(o), hib, p, test=label),
                        "paired_p": p})
    return out


def comparison_section(results: list[dict], base: Path) -> tuple[str, str]:
    """The base vs fine-tuned table, with each change said in words; with an ``aligned`` model, one
    table of the three side by side (each change said against the model before it)."""
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
    tuned = comparisons(results)
    aligned = {c["measure"]: c for c in comparisons(results, "finetuned", "aligned")}
    if aligned:
        rows = [[html.escape(c["measure"]), fmt(c["base"]), fmt(c["finetuned"]), html.escape(c["verdict"]),
                 fmt(aligned[c["measure"]]["finetuned"]), html.escape(aligned[c["measure"]]["verdict"])]
                for c in tuned if c["measure"] in aligned]
        return _table(["measure", "base [95% CI]", "SFT [95% CI]", "SFT vs base", "aligned [95% CI]", "aligned vs SFT"], rows)
    rows = [[html.escape(c["measure"]), fmt(c["base"]), fmt(c["finetuned"]), html.escape(c["verdict"])] for c in tuned]
    return _table(["measure", "base [95% CI]", "fine-tuned [95% CI]", "fine-tuned vs base"], rows) if rows else ("", "")


def rag_comparison_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Closed-book vs RAG fact recall of every model that has a ``<model>+rag`` fact run, said in words."""
    models = dict.fromkeys(r["model"] for r in results if r.get("task") == "fact" and not r["model"].endswith("+rag"))
    rows = [[html.escape(m), html.escape(c["measure"]), _interval(c["base"]), _interval(c["finetuned"]),
             html.escape(verdict(c["base"], c["finetuned"], True, c.get("paired_p"), change="retrieval"))]
            for m in models for c in comparisons(results, m, f"{m}+rag") if c["measure"].startswith("fact recall")]
    return _table(["model", "measure", "closed-book [95% CI]", "RAG [95% CI]", "RAG vs closed-book"], rows) if rows else ("", "")


def rag_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Retrieval (recall@k and MRR per ranker) and citation precision of RAG answers (``eval rag``)."""
    parts = []
    ks = sorted({int(k.split("@")[1]) for r in results for m in (r.get("modes") or {}).values() for k in m if k.startswith("recall@")})
    rows = [[html.escape(Path(r["data"]).name), mode, str(r["n"]), *(_ci(m[f"recall@{k}"]) if f"recall@{k}" in m else "-" for k in ks),
             f"{m['mrr']:.3f}", _link(r, base)] for r in results for mode, m in (r.get("modes") or {}).items()]
    if rows:
        parts.append(_table(["questions", "ranker", "n", *(f"recall@{k} [95% CI]" for k in ks), "MRR", "per-item"], rows))
    rows = [[html.escape(c.get("model") or Path(c["answers_file"]).parent.name), html.escape(str(c["judge"]["model"])),
             str(c["answers"]), str(c["not_covered"]), str(c["citations"]), _ci(c["citation_precision"]),
             _ci(c["answers_with_citation"]), _ci(c["sentences_without_citation"]), str(c["markers_naming_no_passage"]),
             str(c["invalid_judge_replies"]), _file_link(Path(r["_dir"]) / "citations.jsonl", base)]
            for r in results if (c := r.get("citations"))]
    if rows:
        parts.append(_table(["answers", "judge", "n", "not covered", "citations", "citation precision [95% CI]",
                             "answers with >=1 citation", "sentences without citation", "markers naming no passage",
                             "invalid judge replies", "per-answer"], rows))
    return "".join(h for h, _ in parts), "\n".join(m for _, m in parts)


def _interval(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _file_link(target: Path, base: Path) -> str:
    rel = os.path.relpath(target, base)
    return f'<a href="{html.escape(rel)}">{html.escape(rel)}</a>'


def judge_section(results: list[dict], base: Path) -> tuple[str, str]:
    """Rubric score distributions and pairwise win/tie/loss with order inconsistency."""
    parts, mds = [], []
    for r in results:
        judge = html.escape(f"{r['judge']['model']} (T={r['judge']['temperature']}, samples={r['judge']['samples']})")
        if r["mode"] == "rubric":
            rows = [[html.escape(col), *(f"{s[c]['mean']:.2f}" if s[c]["mean"] is not None else "-"
                                         for c in ("accuracy", "conciseness", "understandability")), str(s["invalid"]), _link(r, base)]
                    for col, s in r["rubric"].items()]
            h, md = _table(["answers", "accuracy", "conciseness", "understandability", "invalid", "per-item"], rows)
            series = {col: [(s[c]["distribution"][str(v)] / max(1, s["n"] - s["invalid"]),) * 3 for c in ("accuracy",) for v in range(1, 5)]
                      for col, s in r["rubric"].items()}
            img = _bars(["1", "2", "3", "4"], series, "share of answers", "Judge accuracy scores")
            parts.append(f'<h3>Rubric, judge {judge}</h3>{h}<img src="{img}">')
        else:
            p = r["pairwise"]
            rows = [[html.escape(f"{p['a']} vs {p['b']}"), _ci(p["win"]), _ci(p["tie"]), _ci(p["loss"]),
                     _ci(p["order_inconsistency"]), str(p["invalid"]), _link(r, base)]]
            h, md = _table(["A vs B", "A wins", "tie", "A loses", "order inconsistency", "invalid", "per-item"], rows)
            series = {k: [(p[k]["rate"], *p[k]["ci95"])] for k in ("win", "tie", "loss")}
            img = _bars([f"{p['a']} vs {p['b']}"], series, "share", "Pairwise (both orders)")
            parts.append(f'<h3>Pairwise, judge {judge}</h3>{h}<img src="{img}">')
        mds.append(f"Judge {_strip_tags(judge)}:\n\n{md}")
    return "".join(parts), "\n".join(mds)


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;vertical-align:top}th{background:#f3f3f3}"
       "img{display:block;margin:1em 0}.ans{white-space:pre-wrap}.ref{color:#555;font-size:13px;margin-top:.5em}")


def answers_section(results: list[dict], base: Path, per_language: int = 3, seed: int = 42) -> tuple[str, str]:
    """"What the models said": a seeded sample of answers per evaluation and language, models side by side
    with their grades (:mod:`medtune.eval.answer_samples`)."""
    groups = side_by_side(results, per_language, seed)
    return render_html(groups), render_markdown(groups)


def write_report(dirs: list[Path], output: Path, title: str = "medtune evaluation report", answers_per_language: int = 3,
                 seed: int = 42) -> dict:
    """Render every result under ``dirs`` into ``output`` (HTML) and ``output.with_suffix('.md')``.

    ``answers_per_language`` answers per evaluation and language (a sample fixed by ``seed``) are shown
    in "What the models said", every model side by side.

    Returns:
        ``{"html", "markdown", "results"}`` (paths and the number of result files).

    Raises:
        EvalError: no results found.
    """
    results = collect([Path(d) for d in dirs])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    base = output.parent
    by_task = defaultdict(list)
    for r in results:
        by_task[r["task"]].append(r)
    sections = [("Base vs fine-tuned", "*", comparison_section), ("Multiple choice", "mcq", mcq_section),
                ("lm-evaluation-harness", "lm_eval", harness_section), ("Fact recall", "fact", fact_section),
                ("Rubric-graded conversations", "rubric", rubric_section), ("Held-out answers", "heldout", heldout_section), ("Generation quality", "*", quality_section),
                ("Closed-book vs RAG", "*", rag_comparison_section), ("Retrieval and citations", "rag", rag_section),
                ("LLM-as-judge", "judge", judge_section),
                ("What the models said", "*", functools.partial(answers_section, per_language=answers_per_language, seed=seed))]
    body, md = [f"<h1>{html.escape(title)}</h1>"], [f"# {title}\n"]
    for heading, task, fn in sections:
        chosen = results if task == "*" else by_task.get(task)
        h, m = fn(chosen, base) if chosen else ("", "")
        if h:
            body.append(f"<h2>{heading}</h2>{h}")
            md.append(f"## {heading}\n\n{m}")
    output.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>", encoding="utf-8")
    md_path = output.with_suffix(".md")
    md_path.write_text("\n".join(md), encoding="utf-8")
    console.print(f"report: {len(results)} result files -> {output} and {md_path}")
    return {"html": str(output), "markdown": str(md_path), "results": len(results)}
