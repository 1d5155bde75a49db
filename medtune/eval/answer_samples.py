"""The report's "What the models said": a fixed, seeded sample of answers per evaluation, models side by side.

People judge a medical model by reading what it says. For every evaluation that generated
answers -- fact recall, rubric-graded conversations, multiple choice in generate mode, and urgent
care (safety) -- this module reads the per-item predictions of each model, draws the same
seeded sample of items in every language present (``per_language`` each), and lines up the
question, the reference, and each model's answer with its grade. An item is *changed* when the
models' grades differ (the HTML report can show those alone).
"""

from __future__ import annotations

import html
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medtune.text import detect_language

PREFERRED = ("base", "finetuned", "aligned")  # column order when present
ANSWER_CHARS = 1200  # longer answers are cut in the report (the per-item file has them whole)


@dataclass
class Said:
    """One model's answer to one item, as the report shows it.

    Attributes:
        id: item id (the same across models).
        lang: language of the question.
        question: what was asked (the last user turn).
        reference: what a good answer holds (expected items, gold option, criteria, expected urgency).
        answer: the model's reply.
        grade: the grade in words ("hits 2/3", "correct: B", "score 0.62").
        outcome: a comparable value of the grade (two models differ on the item when their outcomes do).
    """

    id: str
    lang: str
    question: str
    reference: str
    answer: str
    grade: str
    outcome: object


def _fact(x: dict) -> Said:
    hits, n = len(x.get("hits", [])), len(x["expected"])
    return Said(str(x["id"]), "", x["question"], "expects: " + ", ".join(x["expected"]), x.get("answer", ""),
                f"hits {hits}/{n}" + (f" ({', '.join(x['hits'])})" if hits else ""), hits)


def _rubric(x: dict) -> Said:
    positive = sorted((g for g in x["grades"] if g["points"] > 0), key=lambda g: -g["points"])
    ref = x.get("reference") or "criteria: " + "; ".join(f"[{g['points']:g}] {g['criterion']}" for g in positive[:3])
    met = sum(bool(g["met"]) for g in x["grades"] if g["points"] > 0)
    return Said(str(x["id"]), x.get("lang", ""), x["question"], ref, x["answer"],
                f"score {x['score']:.2f} ({x['points_met']:g}/{x['points_possible']:g} points, {met}/{len(positive)} criteria met)",
                round(x["score"], 4))


def _mcq(x: dict) -> Said:
    options = x.get("options") or {}
    question = x["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    gold = " / ".join(f"{k}. {options.get(k, '')}" for k in x["answer"])
    grade = ("correct" if x["correct"] else "wrong") + f": {x['prediction'] or 'no letter'}"
    return Said(str(x["id"]), "", question, f"answer: {gold}", x.get("reply", ""), grade, x["correct"])


def _urgent(x: dict) -> Said:
    red = bool(x["expected"])
    ref = f"red flag ({', '.join(x['expected'])}): urgent care expected" if red else "no red flag: no alarm expected"
    right = x["urgent"] == red
    return Said(str(x["id"]), x.get("lang", ""), x["question"], ref, x["answer"],
                f"{'urgent care' if x['urgent'] else 'no urgent care'} ({'as expected' if right else 'not as expected'})", x["urgent"])


VIEWS = {"fact": _fact, "rubric": _rubric, "urgent": _urgent}


def answers_of(result: dict) -> list[Said] | None:
    """The answers of one result (None for evaluations without generated answers, such as loglik MCQ)."""
    view = _mcq if result.get("task") == "mcq" and result.get("mode") == "generate" else VIEWS.get(result.get("task"))
    if view is None:
        return None
    path = Path(result.get("_dir", "")) / result.get("predictions_file", "predictions.jsonl")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        said = [view(x) for x in rows]
    except (OSError, ValueError, KeyError, TypeError):  # an older or foreign predictions file: nothing to show
        return None
    for s in said:
        s.lang = s.lang or detect_language(s.question, default="en")
    return said


def sample_ids(said: list[Said], per_language: int, seed: int, key: str) -> dict[str, list[str]]:
    """``{language: item ids}``: the same seeded ``per_language`` items of each language, in file order."""
    by_lang = defaultdict(list)
    for s in said:
        by_lang[s.lang].append(s.id)
    rng, out = random.Random(f"{seed}:{key}"), {}
    for lang, ids in sorted(by_lang.items()):
        chosen = set(rng.sample(ids, min(per_language, len(ids))))
        out[lang] = [i for i in ids if i in chosen]
    return out


def side_by_side(results: list[dict], per_language: int = 3, seed: int = 42) -> list[dict]:
    """One group per evaluation (task and data file) with generated answers.

    Returns:
        ``[{"task", "data", "models": [names], "items": [{"id", "lang", "question", "reference",
        "answers": {model: Said | None}, "changed": bool}]}]``; items are the seeded sample
        (:func:`sample_ids`) of the first model's items, every language present.
    """
    groups: dict[tuple, dict[str, list[Said]]] = defaultdict(dict)
    for r in results:
        said = answers_of(r) if "model" in r else None
        if said:
            groups[r["task"], Path(r["data"]).name][r["model"]] = said
    out = []
    for (task, data), by_model in groups.items():
        models = sorted(by_model, key=lambda m: (PREFERRED.index(m.split("+")[0]) if m.split("+")[0] in PREFERRED else 9, m))
        first = by_model[models[0]]
        index = {m: {s.id: s for s in said} for m, said in by_model.items()}
        picked = sample_ids(first, per_language, seed, f"{task}:{data}")
        items = []
        for lang, ids in picked.items():
            for i in ids:
                answers = {m: index[m].get(i) for m in models}
                outcomes = {repr(a.outcome) for a in answers.values() if a is not None}
                s = index[models[0]][i]
                items.append({"id": i, "lang": lang, "question": s.question, "reference": s.reference,
                              "answers": answers, "changed": len(outcomes) > 1})
        out.append({"task": task, "data": data, "models": models, "items": items})
    return out


TASK_TITLES = {"fact": "Fact recall", "rubric": "Rubric-graded conversations", "mcq": "Multiple choice (generated)",
               "urgent": "Urgent care, safety layer off"}
SCRIPT = ("<script>function mtChanged(on){document.querySelectorAll('tr.said').forEach(function(r){"
          "r.style.display=(on&&r.dataset.changed!=='1')?'none':'';});}</script>")


def _cut(text: str, n: int = ANSWER_CHARS) -> str:
    return text if len(text) <= n else text[:n] + " […]"


def render_html(groups: list[dict]) -> str:
    """The section's HTML: a "changed only" filter, then per evaluation one table (question and reference,
    then one column per model with the grade above the answer)."""
    if not groups:
        return ""
    parts = [SCRIPT, '<p><label><input type="checkbox" onchange="mtChanged(this.checked)"> show only items whose '
             "grade differs between the models (changed)</label></p>"]
    for g in groups:
        head = "".join(f"<th>{html.escape(m)}</th>" for m in g["models"])
        rows = []
        for it in g["items"]:
            cells = "".join(
                f'<td><b>{html.escape(a.grade)}</b><div class="ans">{html.escape(_cut(a.answer))}</div></td>' if a else "<td>-</td>"
                for a in it["answers"].values())
            rows.append(f'<tr class="said" data-changed="{int(it["changed"])}" data-lang="{html.escape(it["lang"])}">'
                        f'<td>{html.escape(it["lang"])}{" <b>changed</b>" if it["changed"] else ""}</td>'
                        f'<td><div class="ans">{html.escape(_cut(it["question"], 600))}</div>'
                        f'<div class="ref">{html.escape(_cut(it["reference"], 600))}</div></td>{cells}</tr>')
        parts.append(f"<h3>{html.escape(TASK_TITLES.get(g['task'], g['task']))}: {html.escape(g['data'])}</h3>"
                     f"<table><tr><th>lang</th><th>question / reference</th>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _md(text: str, n: int) -> str:
    return _cut(text, n).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def render_markdown(groups: list[dict]) -> str:
    """The section in markdown: per evaluation a table with a ``changed`` column (grep it to filter)."""
    parts = []
    for g in groups:
        lines = [f"### {TASK_TITLES.get(g['task'], g['task'])}: {g['data']}\n",
                 "| lang | changed | question | reference | " + " | ".join(g["models"]) + " |",
                 "|" + "---|" * (4 + len(g["models"]))]
        for it in g["items"]:
            cells = [f"**{_md(a.grade, 200)}**<br>{_md(a.answer, 600)}" if a else "-" for a in it["answers"].values()]
            lines.append(f"| {it['lang']} | {'changed' if it['changed'] else ''} | {_md(it['question'], 400)} | "
                         f"{_md(it['reference'], 300)} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
