"""Citation precision of grounded answers: does the cited passage support the sentence?

Input: RAG answers with the passages they were shown, e.g. ``predictions.jsonl`` of
``medtune eval fact --index`` (each row: ``question``, ``answer``, ``citations`` =
``[{marker, passage_id, source_file, text}, ...]``). Each answer is split into sentences; every
``[n]`` marker of a sentence (``[1]``, ``[1][2]``, ``[1, 2]``) is one citation. A marker that names
no passage shown (``[9]`` with three passages) is unsupported without asking; every other
(sentence, passage) pair goes to the judge — the same machinery as ``eval judge``: strict JSON
reply ``{"supported": "yes"|"no", "reason"}``, re-asked with the reason when off-format, calls
through the shared client and cached in ``judge_cache.sqlite`` (a killed run resumes free).

Reported (Wilson 95% CIs): **citation precision** = supported citations / judged citations
(the attribution precision of Gao et al., 2023, "Enabling Large Language Models to Generate Text
with Citations", ALCE, at the sentence level), the share of answers with at least one citation,
and the share of sentences with none; answers shown no passage (not covered) are counted apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

from rich.console import Console

from medtune.errors import DataFileError
from medtune.eval.backends import endpoint_client
from medtune.judge_core import InvalidReply, ask, json_object, load_template
from medtune.eval.stats import proportion
from medtune.io import Reject, read_rows
from medtune.text import detect_language

console = Console(stderr=True)
MARKER = re.compile(r"\[(\d+(?:\s*[,，、]\s*\d+)*)\]")
# a sentence ends at 。！？ (always), at .!? before white space or the end, or at a line break
_SENTENCE = re.compile(r".*?(?:[。！？]+|[.!?]+(?=\s|$)|\n|$)", re.DOTALL)
YES = {"yes", "true", "supported", "是", "예"}
NO = {"no", "false", "unsupported", "否", "아니오"}


def split_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """Sentences of ``answer`` with their citation markers: ``[(text without markers, [n, ...]), ...]``.

    Markers written right after the sentence's end (``... 心绞痛。[1]``) belong to that sentence.
    Sentences with no text besides markers are dropped.
    """
    pieces = [m.group(0) for m in _SENTENCE.finditer(answer) if m.group(0).strip()]
    out: list[tuple[str, list[int]]] = []
    for piece in pieces:
        lead = re.match(r"\s*(?:\[[\d,，、\s]+\]\s*)+", piece)
        if lead and out:  # markers written after the previous sentence's full stop belong to it
            out[-1] = (out[-1][0], out[-1][1] + markers_of(lead.group(0)))
            piece = piece[lead.end():]
        text = re.sub(r"\s*" + MARKER.pattern, "", piece).strip()
        if text:
            out.append((text, markers_of(piece)))
    return [(text, list(dict.fromkeys(markers))) for text, markers in out]


def markers_of(text: str) -> list[int]:
    """The passage numbers cited in ``text`` (``[1]``, ``[1][2]``, ``[1, 2]``), in order, repeats kept."""
    return [int(n) for m in MARKER.finditer(text) for n in re.split(r"\s*[,，、]\s*", m.group(1))]


def parse_support(reply: str) -> dict:
    """``{"supported": bool, "reason": str}`` from a judge reply (``"yes"``/``"no"`` or a JSON boolean).

    Raises:
        InvalidReply: no JSON object, or ``supported`` neither yes nor no.
    """
    obj = json_object(reply)
    value = obj.get("supported")
    word = str(value).strip().lower() if not isinstance(value, bool) else ("yes" if value else "no")
    if word not in YES | NO:
        raise InvalidReply(f"'supported' must be \"yes\" or \"no\", got {value!r}")
    return {"supported": word in YES, "reason": str(obj.get("reason", "")).strip()}


def load_answers(path: Path) -> tuple[list[dict], list[Reject]]:
    """RAG answers ``[{id, question, answer, citations}]``; rows without ``answer`` or ``citations`` are rejected.

    Raises:
        DataFileError: no usable row (the message says which fields are needed).
    """
    rows, rejects = [], []
    for where, rec in read_rows(Path(path)):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        answer, cited = rec.get("answer"), rec.get("citations")
        if not isinstance(answer, str) or not isinstance(cited, list):
            rejects.append(Reject(str(path), where, "needs `answer` (text) and `citations` (the passages shown; "
                                  "re-run `medtune eval fact --index`)", "answer" if not isinstance(answer, str) else "citations",
                                  rec, step="eval:citations"))
            continue
        rows.append({"id": str(rec.get("id") or where), "question": str(rec.get("question") or ""), "answer": answer,
                     "citations": {int(c["marker"]): c for c in cited if isinstance(c, dict) and "marker" in c}})
    if not rows:
        raise DataFileError(f"{path}: no RAG answer with `answer` and `citations` ({len(rejects)} rejected); "
                            "use predictions.jsonl of `medtune eval fact --index DIR`")
    return rows, rejects


async def _check(judge, row: dict, sentence: str, marker: int, settings: dict) -> dict:
    passage = row["citations"].get(marker)
    if passage is None:
        return {"marker": marker, "passage_id": None, "supported": False, "reason": "the marker names no passage shown", "judged": False}
    lang = detect_language(row["question"] or row["answer"], default="en")
    template = load_template("citation", lang if lang in ("en", "zh", "ko") else "en", settings["prompts_dir"])
    prompt = template.substitute(question=row["question"], passage=passage["text"].strip(), sentence=sentence)
    got, _ = await ask(judge, [{"role": "user", "content": prompt}], parse_support, settings["max_retries"],
                       seed=settings["seed"], max_tokens=settings["max_tokens"])
    return {"marker": marker, "passage_id": passage.get("passage_id"), "supported": None if got is None else got["supported"],
            "reason": None if got is None else got["reason"], "judged": True}


async def judge_answer(judge, row: dict, settings: dict) -> dict:
    """Every citation of one answer judged: ``{id, covered, sentences: [{text, markers, checks: [...]}]}``."""
    sentences = split_sentences(row["answer"]) if row["citations"] else []
    checks = await asyncio.gather(*(asyncio.gather(*(_check(judge, row, text, m, settings) for m in markers))
                                    for text, markers in sentences))
    return {"id": row["id"], "covered": bool(row["citations"]),
            "sentences": [{"text": text, "markers": markers, "checks": list(c)} for (text, markers), c in zip(sentences, checks)]}


def summarize(judged: list[dict]) -> dict:
    """Citation precision, answers with >= 1 citation and sentences with none (each ``{"n", "k", "rate", "ci95"}``)."""
    covered = [j for j in judged if j["covered"]]
    sentences = [s for j in covered for s in j["sentences"]]
    checks = [c for s in sentences for c in s["checks"]]
    valid = [c for c in checks if c["supported"] is not None]
    return {"answers": len(judged), "not_covered": len(judged) - len(covered), "citations": len(checks),
            "citation_precision": proportion(sum(c["supported"] for c in valid), len(valid)),
            "answers_with_citation": proportion(sum(any(s["markers"] for s in j["sentences"]) for j in covered), len(covered)),
            "sentences_without_citation": proportion(sum(not s["markers"] for s in sentences), len(sentences)),
            "markers_naming_no_passage": sum(not c["judged"] for c in checks), "invalid_judge_replies": len(checks) - len(valid)}


def citation_precision(answers: Path, judge_spec: str, out: Path, settings: dict, judge=None) -> tuple[dict, list[dict], list[Reject]]:
    """Judge every citation in ``answers``; returns ``(summary with judge identity, per-answer rows, rejects)``.

    Args:
        answers: RAG answers (see the module docstring).
        judge_spec: ``URL#MODEL`` endpoint or a local model spec (as ``eval judge --judge``).
        out: directory of the judge cache (``judge_cache.sqlite``).
        settings: ``{"max_retries", "max_tokens", "seed", "prompts_dir", "max_items"}``.
        judge: a ready client (tests); built from ``judge_spec`` when None.

    Raises:
        DataFileError: no usable answer in ``answers``.
        EvalError: a missing prompt file.
        medtune.llm.LLMError: the judge failed for good (finished calls stay cached).
    """
    rows, rejects = load_answers(answers)
    rows = rows[:settings["max_items"]] if settings.get("max_items") else rows
    out.mkdir(parents=True, exist_ok=True)
    judge = judge or endpoint_client(judge_spec, out / "judge_cache.sqlite", 0.0, settings["seed"])

    async def run_all():
        try:
            return await asyncio.gather(*(judge_answer(judge, r, settings) for r in rows))
        finally:
            await judge.aclose()

    judged = asyncio.run(run_all())
    prompts = {lang: load_template("citation", lang, settings["prompts_dir"]).template for lang in ("en", "zh", "ko")}
    identity = {"spec": judge_spec, "base_url": getattr(getattr(judge, "cfg", None), "base_url", None), "model": judge.model,
                "prompts_sha256": hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()}
    run = Path(answers).parent / "results.json"  # the eval fact run that wrote the answers names the model
    model = json.loads(run.read_text(encoding="utf-8")).get("model") if run.is_file() else None
    summary = {"answers_file": str(answers), "model": model, "judge": identity, **summarize(judged)}
    p = summary["citation_precision"]
    console.print(f"citation precision {p['rate']:.3f} ({p['k']}/{p['n']}), answers with a citation "
                  f"{summary['answers_with_citation']['rate']:.3f}, judge {judge.model}", markup=False)
    return summary, judged, rejects
