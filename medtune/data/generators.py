"""Generators: source records -> ``qa`` records with provenance in ``meta``.

| generator            | LLM calls                                 | from            |
|----------------------|-------------------------------------------|-----------------|
| :func:`kb_template`  | none                                      | ``kb``, table rows |
| :func:`kb_views`     | none (+ 1 per fact with teacher paraphrases) | ``kb`` (``augment``) |
| :func:`grounded_qa`  | 1 + N (+ N judge) per passage / report    | ``passage``, ``report`` |
| :func:`dialogue`     | rounds + kept tasks (+ consultations)     | seed tasks      |
| :func:`translate`    | 2 per pair                                | ``qa``          |
| :func:`safety_pairs` | none                                      | ``labelled`` (red-flag labels) |
| :func:`safety_sft`   | none                                      | ``labelled`` (red-flag labels) |
| :func:`pairwise_judge` | N samples + 2 x N(N-1)/2 judge per prompt | ``corpus``, ``qa_tree``, ``labelled`` |
| :func:`rag_qa`       | none (wraps kb-template / guideline-qa)   | ``qa`` + passages |

Prompt templates live in ``medtune/data/prompts/<language>/<name>.txt`` (English used when a
language has none); a ``prompts_dir`` with the same layout overrides them. Each output record's
``meta.prompt_template_hash`` is the first 12 hex digits of the sha256 of the template(s) used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import yaml

from medtune.config import SafetyConfig
from medtune.data.records import Record, Tally
from medtune.errors import DataFileError
from medtune.io import Reject, read_rows
from medtune.judge_core import judge_swapped, load_template, reference_block
from medtune.llm import LLMClient, LLMError, SensitiveDataError
from medtune.retrieval import (
    NOT_IN_GUIDELINES,
    Hit,
    grounded_messages,
    passage_of,
    tokenize,
)
from medtune.safety.guard import CATEGORY_NAMES, emergency_number, urgent_message
from medtune.safety.rules import detect_red_flags
from medtune.text import answer_support, dangling_reference, detect_language

PROMPTS = Path(__file__).parent / "prompts"
TEMPLATES = Path(__file__).parent / "kb_templates.yaml"
LANGUAGE_NAMES = {"en": "English", "zh": "Simplified Chinese", "ko": "Korean"}


def load_prompt(name: str, language: str, prompts_dir: Path | None = None, fallback: bool = True) -> tuple[str, str]:
    """``(template, sha256[:12])`` of prompt ``name`` for ``language`` (user dir, shipped, then English
    unless ``fallback`` is False).

    Raises:
        DataFileError: no template (with ``fallback=False``: none in ``language``), naming where to put one.
    """
    roots = ([Path(prompts_dir)] if prompts_dir else []) + [PROMPTS]
    for lang in (language, "en") if fallback else (language,):
        for root in roots:
            p = root / lang / f"{name}.txt"
            if p.is_file():
                text = p.read_text(encoding="utf-8")
                return text, hashlib.sha256(text.encode()).hexdigest()[:12]
    shipped = sorted(d.name for d in PROMPTS.iterdir() if (d / f"{name}.txt").is_file())
    raise DataFileError(f"prompt template {name!r} not found for language {language!r} (shipped for {shipped}); "
                        f"write {language}/{name}.txt under a folder and set data.prompts_dir to it "
                        f"(see {PROMPTS / 'zh' / (name + '.txt')} for the form)")


# ---------------------------------------------------------------- kb-template (no LLM)
def load_templates(path: Path | None = None) -> dict:
    """The kb-template YAML: ``{language: {joiner, answer, fields: {field: {label, questions}}}}``."""
    path = Path(path or TEMPLATES)
    if not path.is_file():
        raise DataFileError(f"{path}: kb template file not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for lang, spec in data.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("fields"), dict) or "answer" not in spec:
            raise DataFileError(f"{path}: language {lang!r} needs `answer` and `fields`")
    return data


def _entry(r: Record) -> tuple[str | None, dict, str | None]:
    """``(name, fields, name_field)`` of a kb entry, or of a table-row passage (``meta.table``: the
    first cell names the row, the other cells are fields named by their column header)."""
    table = r.meta.get("table")
    if r.kind == "passage" and table:
        fields = {h or f"column {i + 1}": c for i, (h, c) in enumerate(zip(table["header"], table["cells"])) if i and c}
        return table["cells"][0] or None, fields, table["header"][0]
    return r.meta.get("name"), r.fields, r.meta.get("name_field")


def kb_template(r: Record, templates: dict, paraphrases: int, rng: random.Random, tally: Tally) -> list[Record]:
    """Question/answer pairs from one knowledge-base entry or table row, ``paraphrases`` per field.

    Reads ``fields``, ``meta.name``, ``meta.language`` -- or, for a table row (a kb entry read from a
    document's table, or a guideline passage with ``meta.table``), the row's cells: a column with
    no field template is asked about with the language's ``table_questions`` and its header as
    the label, so the answer is grounded in that row alone ("max daily dose of amoxicillin: 3 g").
    Answers are the field values (lists joined) in the language's ``answer`` template.
    Deterministic for a given ``rng`` state.
    """
    lang = r.meta.get("language") if r.meta.get("language") in templates else "en"
    spec, out = templates[lang], []
    name, fields, name_field = _entry(r)
    if not name:
        tally.drop("passage is not a table row (kb-template asks about kb entries and table rows)",
                   r.meta.get("source_file"), r.id, r.text[:120])
        return []
    text_hash = hashlib.sha256(json.dumps(spec, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:12]
    for field, value in fields.items():
        f = spec["fields"].get(field)
        if f is None and r.meta.get("table") and spec.get("table_questions"):
            f = {"label": field, "questions": spec["table_questions"]}
        if f is None or field == name_field:
            continue
        value = spec.get("joiner", ", ").join(value) if isinstance(value, list) else value
        questions = rng.sample(f["questions"], min(paraphrases, len(f["questions"])))
        for k, q in enumerate(questions):
            tally.keep()
            out.append(Record(
                id=f"{r.id}/{field}/{k}", kind="qa",
                messages=[{"role": "user", "content": q.format(name=name, label=f["label"])},
                          {"role": "assistant", "content": spec["answer"].format(name=name, label=f["label"], value=value)}],
                meta={**_provenance(r), "field": field, "generator": "kb-template", "teacher_model": None,
                      "prompt_template_hash": text_hash, "language": lang}))
    if not out:
        tally.drop("kb entry has no field with a template", r.meta.get("source_file"), r.id, str(list(fields))[:120])
    return out


def _provenance(r: Record) -> dict:
    keys = ("source_file", "doc_id", "passage_id", "char_span", "title", "section", "page", "table", "sensitive")
    return {k: r.meta[k] for k in keys if k in r.meta}


# ---------------------------------------------------------------- kb views (knowledge augmentation; no LLM)
VIEW_TEMPLATES = Path(__file__).parent / "kb_views.yaml"
_JOSA = re.compile(r"(.)(은\(는\)|이\(가\)|을\(를\)|과\(와\)|\(으\)로)")
_JOSA_FORMS = {"은(는)": ("은", "는"), "이(가)": ("이", "가"), "을(를)": ("을", "를"), "과(와)": ("과", "와"), "(으)로": ("으로", "로")}


def load_view_templates(path: Path | None = None) -> dict:
    """The knowledge-view phrasings: ``{language: {joiner, and, suffixes, generic, fields}}`` (see kb_views.yaml).

    Raises:
        DataFileError: missing file, or a language without ``generic`` questions and statements.
    """
    path = Path(path or VIEW_TEMPLATES)
    if not path.is_file():
        raise DataFileError(f"{path}: kb view template file not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for lang, spec in data.items():
        generic = spec.get("generic") if isinstance(spec, dict) else None
        if not isinstance(generic, dict) or not generic.get("questions") or not generic.get("statements"):
            raise DataFileError(f"{path}: language {lang!r} needs generic.questions and generic.statements")
    return data


def josa(text: str) -> str:
    """Korean particles written as ``은(는)``, ``이(가)``, ``을(를)``, ``과(와)``, ``(으)로`` resolved after the
    syllable before them (final consonant or not; ``(으)로`` takes 로 after ㄹ too); left as written after
    a non-Hangul character."""
    def pick(m: re.Match) -> str:
        prev, form = m.group(1), m.group(2)
        if not "\uac00" <= prev <= "\ud7a3":
            return m.group(0)
        final = (ord(prev) - 0xAC00) % 28
        with_final, without = _JOSA_FORMS[form]
        use_first = final != 0 and not (form == "(으)로" and final == 8)
        return prev + (with_final if use_first else without)
    return _JOSA.sub(pick, text)


def join_items(items: list[str], spec: dict) -> str:
    """``a, b and c`` in the language of ``spec`` (its ``joiner`` and ``and``)."""
    if len(items) < 2:
        return "".join(items)
    return spec.get("joiner", ", ").join(items[:-1]) + spec.get("and", ", ") + items[-1]


def _cycle(options: list, n: int, rng: random.Random) -> list:
    """``n`` draws from ``options``: a shuffled pass through all of them, then another, and so on."""
    out = []
    while len(out) < n and options:
        out += rng.sample(options, len(options))
    return out[:n]


def _fill(template: str, **kw) -> str:
    return josa(template.format(**kw))


def _view_facts(records: list[Record], templates: dict, views: dict, fields: list[str] | None) -> list[tuple]:
    """``(record, field, value, lang, label)`` of every fact to augment (fields with a kb-template label)."""
    facts = []
    for r in records:
        lang = r.meta.get("language") if r.meta.get("language") in templates and r.meta.get("language") in views else "en"
        for field, value in r.fields.items():
            f = templates[lang]["fields"].get(field)
            if f is None or field == r.meta.get("name_field") or (fields and field not in fields) or not value:
                continue
            facts.append((r, field, value, lang, f["label"]))
    return facts


def _statement(spec: dict, block: dict, templates: dict, name: str, value, label: str, lang: str, rng: random.Random) -> str:
    """One answer naming every item of ``value`` (a list: random order, a random statement; a string: the
    kb template's answer form)."""
    if isinstance(value, str):
        return templates[lang]["answer"].format(name=name, label=label, value=value)
    return _fill(rng.choice(block["statements"]), name=name, value=join_items(rng.sample(value, len(value)), spec),
                 label=label, label_lower=label.lower())


def _ended(sentence: str, spec: dict) -> str:
    """``sentence`` with the language's sentence end (``spec["end"]``, default ".") when it has none, so
    that in an answer about several entries one entry's last item never runs into the next one's name."""
    return sentence if sentence.rstrip().endswith((".", "。", "!", "?", "！", "？")) else sentence.rstrip() + spec.get("end", ".")


def _shown_name(name: str, rng: random.Random) -> str:
    """The name as a user may type it: a Latin-script name lower-cased one time in three."""
    return name.lower() if re.fullmatch(r"[A-Za-z][A-Za-z0-9 .\-]*", name) and rng.random() < 1 / 3 else name


def _view_record(r: Record, key: str, question: str, answer: str, lang: str, field: str, view: str, h: str,
                 names: list[Record] | None = None) -> Record:
    meta = {**_provenance(r), "field": field, "generator": "kb-template", "view": view, "teacher_model": None,
            "prompt_template_hash": h, "language": lang}
    if names:
        meta["doc_ids"] = [n.meta.get("doc_id", n.id) for n in names]
    return Record(id=f"{r.id}/{field}/{key}", kind="qa", meta=meta,
                  messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def kb_views(records: list[Record], templates: dict, views: dict, cfg, rng: random.Random, tally: Tally,
             extra_questions: dict | None = None) -> list[Record]:
    """Knowledge views of one kb source: forward, reverse and multi-fact question/answer pairs.

    Knowledge augmentation after Allen-Zhu & Li 2023, "Physics of Language Models: Part 3.1, Knowledge
    Storage and Extraction" (ICML 2024): a fact written in many phrasings and orders is stored so that
    new questions can extract it, where one fixed phrasing is only memorised. Both directions after
    Berglund et al. 2023, "The Reversal Curse: LLMs trained on 'A is B' fail to learn 'B is A'".

    Per fact (entry x field with a kb-template label): ``cfg.views`` pairs, each a question phrasing
    (``views[lang].fields[field].questions`` or ``generic``, then ``extra_questions``) with a style
    suffix, answered by a statement naming every item in a random order. With ``cfg.reverse``, each
    list item is asked back (``reverse_questions``) and answered with every entry of the source (same
    language and field) that lists it. With ``cfg.passages``, groups of ``cfg.passage_size`` entries
    are answered together. Reads ``fields``, ``meta.name``, ``meta.language``; writes ``messages`` and
    ``meta`` with the entry's provenance, ``field``, ``view`` (forward | reverse | passage) and, for
    views of several entries, ``doc_ids``. Deterministic for a given ``rng`` state.

    Args:
        records: the source's ``kb`` records.
        templates: :func:`load_templates` (labels, answer forms).
        views: :func:`load_view_templates`.
        cfg: :class:`medtune.data.config.KbAugmentConfig`.
        extra_questions: ``{(record id, field): [question, ...]}`` (teacher paraphrases).

    Returns:
        The pairs, forward views first.
    """
    h = hashlib.sha256(json.dumps([templates, views], ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:12]
    facts = _view_facts(records, templates, views, cfg.fields)
    out = []
    for r, field, value, lang, label in facts:
        spec = views[lang]
        block = spec.get("fields", {}).get(field) or spec["generic"]
        pool = list(block["questions"]) + list((extra_questions or {}).get((r.id, field), []))
        for k, q in enumerate(_cycle(pool, cfg.views, rng)):
            question = _fill(q, name=_shown_name(r.meta["name"], rng), label=label, label_lower=label.lower())
            question += rng.choice(spec.get("suffixes") or [""])
            answer = _statement(spec, block, templates, r.meta["name"], value, label, lang, rng)
            out.append(_view_record(r, f"v{k}", question, answer, lang, field, "forward", h))
    if cfg.reverse:
        out += _reverse_views(facts, views, cfg.reverse_views, rng, h)
    if cfg.passages:
        out += _passage_views(facts, templates, views, cfg, rng, h)
    tally.seen += len(out)
    tally.kept += len(out)
    if not facts:
        tally.drop("kb source has no field with a template to augment", records[0].meta.get("source_file") if records else None)
    return out


def _reverse_views(facts: list[tuple], views: dict, n: int, rng: random.Random, h: str) -> list[Record]:
    """Item -> entries pairs for every list item of a field with ``reverse_questions``."""
    owners: dict[tuple, list[Record]] = {}
    for r, field, value, lang, _ in facts:
        if isinstance(value, list) and views[lang].get("fields", {}).get(field, {}).get("reverse_questions"):
            for item in dict.fromkeys(value):
                owners.setdefault((lang, field, item), []).append(r)
    out = []
    for j, ((lang, field, item), rs) in enumerate(owners.items()):
        spec, block = views[lang], views[lang]["fields"][field]
        names = join_items([x.meta["name"] for x in rs], spec)
        for k, q in enumerate(_cycle(block["reverse_questions"], n, rng)):
            question = _fill(q, item=item) + rng.choice(spec.get("suffixes") or [""])
            out.append(_view_record(rs[0], f"r{j}.{k}", question,
                                    _fill(block["reverse_answer"], item=item, names=names), lang, field, "reverse", h, rs))
    return out


def _passage_views(facts: list[tuple], templates: dict, views: dict, cfg, rng: random.Random, h: str) -> list[Record]:
    """Answers about ``cfg.passage_size`` entries at once (same language and field); each entry in ``cfg.passages`` of them."""
    groups: dict[tuple, list[tuple]] = {}
    for fact in facts:
        groups.setdefault((fact[3], fact[1]), []).append(fact)
    out = []
    for (lang, field), members in groups.items():
        spec = views[lang]
        block = spec.get("fields", {}).get(field) or spec["generic"]
        if len(members) < 2:
            continue
        for rep in range(cfg.passages):
            order = rng.sample(members, len(members))
            for g in range(0, len(order), cfg.passage_size):
                group = order[g:g + cfg.passage_size]
                if len(group) < 2:
                    group = order[-cfg.passage_size:] if len(order) >= 2 else group
                label = group[0][4]
                names = join_items([f[0].meta["name"] for f in group], spec)
                question = _fill(rng.choice(block.get("passage_questions") or spec["generic"]["passage_questions"]),
                                 names=names, label=label, label_lower=label.lower())
                answer = spec.get("sep", " ").join(_ended(_statement(spec, block, templates, f[0].meta["name"], f[2], label,
                                                                     lang, rng), spec) for f in group)
                out.append(_view_record(group[0][0], f"p{rep}.{g}", question, answer, lang, field, "passage", h,
                                        [f[0] for f in group]))
    return out


async def teacher_questions(records: list[Record], templates: dict, views: dict, n: int, teacher: LLMClient,
                            prompts_dir: Path | None, fields: list[str] | None, tally: Tally) -> dict:
    """``n`` teacher paraphrases of one template question per fact (``kb_questions`` prompt, one call per
    fact); a paraphrase that does not name the entry as written is dropped and counted.

    Returns:
        ``{(record id, field): [question, ...]}`` for :func:`kb_views`.

    Raises:
        SensitiveDataError: a sensitive source and a remote teacher.
    """
    facts = _view_facts(records, templates, views, fields)

    async def one(r: Record, field: str, lang: str) -> list[str]:
        tpl, _ = load_prompt("kb_questions", lang, prompts_dir)
        block = views[lang].get("fields", {}).get(field) or views[lang]["generic"]
        label = templates[lang]["fields"][field]["label"]
        seed_q = _fill(block["questions"][0], name=r.meta["name"], label=label, label_lower=label.lower())
        try:
            reply = await teacher.complete([{"role": "user", "content": tpl.format(name=r.meta["name"], question=seed_q, n=n)}],
                                           sensitive=bool(r.meta.get("sensitive")))
        except SensitiveDataError:
            raise
        except LLMError as e:
            tally.drop("teacher call failed (kb paraphrases)", r.meta.get("source_file"), r.id, str(e))
            return []
        kept = []
        for q in parse_list(reply.text, n):
            if r.meta["name"] in q:
                kept.append(q.replace("{", "{{").replace("}", "}}").replace(r.meta["name"], "{name}"))
            else:
                tally.drop("kb paraphrase does not name the entry", r.meta.get("source_file"), r.id, q[:120])
        return kept

    got = await asyncio.gather(*(one(r, field, lang) for r, field, _, lang, _ in facts))
    return {(r.id, field): qs for (r, field, *_), qs in zip(facts, got)}


# ---------------------------------------------------------------- teacher-based
_NUMBERED = re.compile(r"^\s*(?:(?:task|question|instruction|任务|问题|题目|과제|질문|문제)\s*\d+\s*[.)、:：]?|\d+\s*[.)、:：]"
                       r"|[-*•](?!\*)|Q\d*[.:：])\s*", re.I)
_HEADER = re.compile(r"^(?:#{1,6}\s.*|\*\*[^*]+\*\*\s*[:：]?|__[^_]+__\s*[:：]?)$")


def parse_list(text: str, n: int) -> list[str]:
    """Up to ``n`` items of a numbered or bulleted list in a teacher reply (numbering removed, de-duplicated).

    In a numbered reply, an unnumbered line continues the item above it (joined with a newline); lines
    before the first item, after a blank line, and headers (``**Category**``, ``# ...``, an unnumbered
    line ending with a colon) are not items; nor is an item that ends with a colon. A reply without numbering gives one item per line.
    """
    lines = text.splitlines()
    numbered = any(_NUMBERED.match(line) for line in lines)
    parts: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        m = _NUMBERED.match(line)
        body = (line[m.end():] if m else line).strip()
        if not body or _HEADER.match(body) or (not m and body.endswith((":", "："))):
            current = None  # a blank line or a header ends an item
        elif m or not numbered:
            current = [body]
            parts.append(current)
        elif current is not None:
            current.append(body)
    items = []
    for p in parts:
        item = "\n".join(p).replace("**", "").strip().strip('"')
        if len(item) >= 4 and item not in items and not item.endswith((":", "：")):
            items.append(item)
    return items[:n]


CUT_MARK = "\x00cut\x00"  # internal: prefixed to an answer that reached the teacher's max_tokens
CUT_REASON = "answer reached the teacher's max_tokens"


def reached_limit(reply, teacher: LLMClient, max_tokens: int | None = None) -> bool:
    """True when ``reply`` used all the completion tokens the call allowed (the text is cut)."""
    return reply.completion_tokens >= (max_tokens or teacher.cfg.max_tokens)
CONTEXT_LABELS = {"report": {"en": "Radiology report", "ko": "판독문", "zh": "影像报告"},
                  "guideline": {"en": "Guideline passage", "ko": "지침 원문", "zh": "指南原文"}}


async def grounded_qa(r: Record, teacher: LLMClient, kind: str, n: int, judge: bool, prompts_dir: Path | None,
                      tally: Tally, multi_turn: bool = False, min_support: float = 0.0) -> list[Record]:
    """Grounded QA from one passage (``kind="guideline"``) or radiology report (``kind="report"``).

    1. the teacher writes ``n`` questions about the text (``<kind>_questions`` prompt);
    2. each question is answered with the text in the prompt, using only what it supports
       (``<kind>_answer`` prompt);
    3. with ``judge``, a ``judge`` call must reply YES or the pair is dropped as unsupported;
    4. with ``min_support`` > 0, an answer whose wording the text does not support
       (:func:`medtune.text.answer_support` below it) is dropped.

    Reads ``text`` (reports: findings and impression only) and ``meta``; writes ``messages`` and
    ``meta`` with ``generator``, ``teacher_model``, ``prompt_template_hash`` and the source span.
    One single-turn record per kept pair, or with ``multi_turn`` one conversation per source
    whose first user turn is ``"<label>:\n<text>\n\n<question 1>"`` (:data:`CONTEXT_LABELS`).
    A single-turn report question always carries its report in the same form (a question about a
    report is unanswerable without it), and so does a guideline question that refers to its
    passage ("this passage", "该指南": :func:`medtune.text.dangling_reference`).

    Raises:
        SensitiveDataError: the source is sensitive and the teacher is remote (stops the run).
    """
    lang = r.meta.get("language", "en")
    text = _guideline_text(r) if kind == "guideline" else "\n".join(
        f"{k.upper()}: {r.fields[k]}" for k in ("findings", "impression") if r.fields.get(k))
    q_tpl, q_hash = load_prompt(f"{kind}_questions", lang, prompts_dir)
    a_tpl, a_hash = load_prompt(f"{kind}_answer", lang, prompts_dir)
    j_tpl, j_hash = load_prompt("judge", lang, prompts_dir) if judge else ("", "")
    sensitive = bool(r.meta.get("sensitive"))
    try:
        reply = await teacher.complete([{"role": "user", "content": q_tpl.format(passage=text, n=n)}], sensitive=sensitive)
    except SensitiveDataError:
        raise
    except LLMError as e:
        tally.drop("teacher call failed (questions)", r.meta.get("source_file"), r.id, str(e))
        return []
    questions = parse_list(reply.text, n)
    if not questions:
        tally.drop("teacher wrote no parsable question", r.meta.get("source_file"), r.id, reply.text[:200])
    elif len(questions) < n:
        tally.not_returned["questions asked for, not in the teacher's reply"] += n - len(questions)
    answers = await asyncio.gather(*(_answer(teacher, a_tpl, j_tpl, text, q, sensitive) for q in questions))
    out = []
    for k, (q, (answer, verdict)) in enumerate(zip(questions, answers)):
        if answer is None:
            tally.drop(f"teacher call failed ({verdict})", r.meta.get("source_file"), f"{r.id} q{k}")
        elif verdict == "unsupported":
            tally.drop("judge: answer not supported by the source", r.meta.get("source_file"), f"{r.id} q{k}", answer[:200])
        elif min_support and answer_support(answer.removeprefix(CUT_MARK), text) < min_support:
            tally.drop(f"answer wording not in the source (support < {min_support:g})", r.meta.get("source_file"),
                       f"{r.id} q{k}", answer[:200])
        else:
            tally.keep()
            cut = answer.startswith(CUT_MARK)
            answer = answer.removeprefix(CUT_MARK)
            if cut:
                tally.cut[CUT_REASON] += 1
            label = CONTEXT_LABELS[kind].get(lang, CONTEXT_LABELS[kind]["en"])
            prompt = f"{label}:\n{text}\n\n{q}" if not multi_turn and (kind == "report" or dangling_reference(q)) else q
            out.append(Record(id=f"{r.id}/q{k}", kind="qa",
                              messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                              meta={**_provenance(r), "generator": f"{kind}-qa", "teacher_model": teacher.model,
                                    "prompt_template_hash": hashlib.sha256((q_hash + a_hash + j_hash).encode()).hexdigest()[:12],
                                    "judged": judge, "language": lang, **({"answer_cut": True} if cut else {})}))
    if multi_turn and out:
        return _in_context(out, r.id, text, CONTEXT_LABELS[kind].get(lang, CONTEXT_LABELS[kind]["en"]))
    return out


def _guideline_text(r: Record) -> str:
    """What the teacher reads of a guideline passage: its text; a table row (``meta.table``) is led by
    its section path, so a question about the row can name what the table is about."""
    section = r.meta.get("section") or []
    return f"{' › '.join(section)}\n{r.text}" if r.meta.get("table") and section else r.text


def _in_context(pairs: list[Record], source_id: str, text: str, label: str) -> list[Record]:
    """One conversation of all ``pairs`` (same source), the source text leading the first question."""
    messages = [m for p in pairs for m in p.messages]
    messages[0] = {"role": "user", "content": f"{label}:\n{text}\n\n{messages[0]['content']}"}
    meta = {**pairs[0].meta, "generator": pairs[0].meta["generator"] + "+context", "turns": len(pairs)}
    return [Record(id=f"{source_id}/chat", kind="qa", messages=messages, meta=meta)]


async def _answer(teacher: LLMClient, a_tpl: str, j_tpl: str, text: str, q: str, sensitive: bool) -> tuple[str | None, str]:
    """``(answer, verdict)``; ``answer`` is None when a call failed (verdict then names the step)."""
    try:
        reply = await teacher.complete([{"role": "user", "content": a_tpl.format(passage=text, question=q)}], sensitive=sensitive)
        answer = reply.text.strip()
        if reached_limit(reply, teacher):
            answer = CUT_MARK + answer  # hit the token limit: counted by the audit, mark removed there
    except SensitiveDataError:
        raise
    except LLMError:
        return None, "answer"
    if not j_tpl:
        return answer, "unjudged"
    try:
        verdict = (await teacher.complete([{"role": "user", "content": j_tpl.format(passage=text, question=q, answer=answer)}],
                                          sensitive=sensitive, max_tokens=4)).text
    except LLMError:
        return None, "judge"
    return answer, "supported" if re.search(r"\bYES\b", verdict.upper()) else "unsupported"


# ---------------------------------------------------------------- dialogue (self-instruct)
def _units(text: str) -> list[str]:
    """ROUGE tokens: characters for Chinese/Korean (no reliable spaces), lower-cased words otherwise."""
    if detect_language(text) in ("zh", "ko"):
        return [c for c in text if not c.isspace()]
    return re.findall(r"\w+", text.lower())


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 (Lin, 2004) between two strings: longest common subsequence of :func:`_units`."""
    x, y = _units(a), _units(b)
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(x) + len(y))


def _seed_instruction(t: dict) -> str:
    """The task of one seed: ``instruction`` followed by ``input`` when both are given, either alone otherwise."""
    parts = [str(t.get(k) or "").strip() for k in ("instruction", "input")]
    if not parts[1] and isinstance(t.get("instances"), list) and t["instances"]:  # Self-instruct seed_tasks.jsonl
        first = t["instances"][0]
        parts[1] = str(first.get("input") or "").strip() if isinstance(first, dict) else ""
    return "\n\n".join(p for p in parts if p)


def load_seed_tasks(path: Path, tally: Tally) -> list[dict]:
    """Seed tasks from JSONL or a JSON array: ``{instruction, category?, input?, output?}`` (Alpaca-style
    ``{instruction, input, output}`` and Self-instruct ``{instruction, instances}`` included).

    Bad seeds are counted in ``tally`` as located rejects.

    Raises:
        DataFileError: the file is missing or has no usable seed task (the message gives the first reasons).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: seed task file not found")
    tasks = []
    for where, t in read_rows(path):
        if isinstance(t, Reject):
            tally.reject(t)
            continue
        task = _seed_instruction(t)
        if not task:
            tally.drop("seed task without `instruction` or `input`", path, where, str(t)[:200])
            continue
        output = t.get("output")
        if output is not None and not isinstance(output, str):
            tally.drop("seed `output` is not a string", path, where, str(t)[:200])
            continue
        tasks.append({"instruction": task, "category": str(t.get("category") or "").strip(), "output": output, "line": where})
    if not tasks:
        reasons = list(dict.fromkeys(f"{r.where}: {r.reason}" for r in tally.rejects))[:3]
        raise DataFileError(f"{path}: no usable seed task; expected JSONL or a JSON array of "
                            f"{{instruction, input?, output?, category?}}; first rejects: {reasons} (all in rejects.jsonl)")
    return tasks


GENERAL_CATEGORY = {"en": "general health questions", "zh": "常见健康咨询", "ko": "일반 건강 상담"}


def seed_language(cfg, seeds: list[dict]) -> str:
    """The dialogue prompts' language: ``cfg.language``, or with ``auto`` the most common language of the
    seed instructions (:func:`medtune.text.detect_language`; English when none is detected)."""
    if cfg.language != "auto":
        return cfg.language
    counts = Counter(detect_language(s["instruction"]) for s in seeds)
    return next((lang for lang, _ in counts.most_common() if lang in ("en", "zh", "ko")), "en")


async def _propose_tasks(cfg, teacher: LLMClient, template: str, pool: list[str], categories: list[str],
                         rng: random.Random, tally: Tally) -> list[tuple[str, str]]:
    """``[(task, category)]`` kept from ``cfg.rounds`` calls; drops and missing tasks are counted."""
    kept = []
    for _ in range(cfg.rounds):
        examples = rng.sample(pool, min(cfg.examples_per_prompt, len(pool)))
        category = rng.choice(categories)
        prompt = template.format(examples="\n".join(f"{i + 1}. {e}" for i, e in enumerate(examples)),
                                 n=cfg.tasks_per_round, category=category)
        try:
            reply = await teacher.complete([{"role": "user", "content": prompt}], temperature=0.7, seed=len(pool))
        except LLMError as e:
            tally.drop("teacher call failed (tasks)", cfg.seed_file, "round", str(e))
            continue
        tasks = parse_list(reply.text, cfg.tasks_per_round)
        if len(tasks) < cfg.tasks_per_round:
            tally.not_returned["tasks asked for, not in the teacher's reply"] += cfg.tasks_per_round - len(tasks)
        for task in tasks:
            if max(rouge_l(task, p) for p in pool) >= cfg.rouge_threshold:
                tally.drop(f"ROUGE-L >= {cfg.rouge_threshold} to an existing task", cfg.seed_file, task[:60])
                continue
            pool.append(task)
            kept.append((task, category))
    return kept


async def dialogue(cfg, teacher: LLMClient, prompts_dir: Path | None, rng: random.Random, tally: Tally) -> list[Record]:
    """Self-instruct (Wang et al., 2023) / BELLE-style scenario tasks, answered by the teacher.

    Each round samples ``examples_per_prompt`` tasks (seeds and kept ones) and a category (the seeds'
    ``category`` values; a general one in the prompts' language when they have none), asks for
    ``tasks_per_round`` new tasks, and keeps a task only if its ROUGE-L to every seed and kept task is
    below ``rouge_threshold``. Kept tasks are answered; with ``consultations`` > 0 the teacher also
    writes multi-turn consultations (``Patient:`` / ``Doctor:`` lines) for some. The prompts are in
    :func:`seed_language`. Counted in ``tally``: drops, tasks the teacher did not return
    (``not_returned``) and answers that reached its ``max_tokens`` (``cut``; ``meta.answer_cut``).

    Raises:
        DataFileError: no usable seed task, or no prompt template in the language.
    """
    seeds = load_seed_tasks(cfg.seed_file, tally)
    lang = seed_language(cfg, seeds)  # English prompts for another language would write tasks the language filter then drops
    try:
        t_tpl, t_hash = load_prompt("dialogue_tasks", lang, prompts_dir, fallback=False)
        a_tpl, a_hash = load_prompt("dialogue_answer", lang, prompts_dir, fallback=False)
    except DataFileError as e:
        if cfg.language != "auto":
            raise
        raise DataFileError(f"{e} (language {lang!r} detected from the seed tasks; --set data.dialogue.language=en "
                            "uses the English prompts)") from None
    categories = sorted({s["category"] for s in seeds if s["category"]}) or [GENERAL_CATEGORY.get(lang, "general")]
    kept = await _propose_tasks(cfg, teacher, t_tpl, [s["instruction"] for s in seeds], categories, rng, tally)
    replies = await asyncio.gather(*(teacher.complete([{"role": "user", "content": a_tpl.format(question=t)}])
                                     for t, _ in kept), return_exceptions=True)
    meta = {"source_file": str(cfg.seed_file), "generator": "dialogue", "teacher_model": teacher.model,
            "prompt_template_hash": hashlib.sha256((t_hash + a_hash).encode()).hexdigest()[:12]}
    out = []
    for k, ((task, category), rep) in enumerate(zip(kept, replies)):
        if isinstance(rep, BaseException):
            tally.drop("teacher call failed (answer)", cfg.seed_file, task[:60], str(rep))
            continue
        tally.keep()
        cut = reached_limit(rep, teacher)
        tally.cut[CUT_REASON] += cut
        out.append(Record(id=f"dialogue/{k}", kind="qa", messages=[{"role": "user", "content": task},
                                                                   {"role": "assistant", "content": rep.text.strip()}],
                          meta={**meta, "doc_id": f"dialogue/{k}", "category": category, "language": detect_language(task),
                                **({"answer_cut": True} if cut else {})}))
    if cfg.consultations:
        out += await _consultations([t for t, _ in kept][: cfg.consultations], teacher, lang, prompts_dir, meta, tally)
    return out


_TURN = re.compile(r"^\s*\**\s*(Patient|Doctor|患者|医生|환자|의사)\s*\**\s*[:：]\s*(.*)$", re.IGNORECASE)
_ROLE = {"patient": "user", "患者": "user", "환자": "user", "doctor": "assistant", "医生": "assistant", "의사": "assistant"}


def parse_consultation(text: str) -> list[dict] | None:
    """``messages`` from ``Patient:`` / ``Doctor:`` lines (consecutive turns of one speaker merged); None if not a usable dialogue."""
    msgs: list[dict] = []
    for line in text.splitlines():
        m = _TURN.match(line)
        if m:
            role = _ROLE[m.group(1).lower()]
            if msgs and msgs[-1]["role"] == role:
                msgs[-1]["content"] += "\n" + m.group(2).strip()
            else:
                msgs.append({"role": role, "content": m.group(2).strip()})
        elif msgs and line.strip():
            msgs[-1]["content"] += "\n" + line.strip()
    while msgs and msgs[-1]["role"] != "assistant":
        msgs.pop()
    if len(msgs) < 4 or msgs[0]["role"] != "user":  # at least one clarifying exchange before the advice
        return None
    return msgs


async def _consultations(tasks: list[str], teacher: LLMClient, lang: str, prompts_dir, meta: dict, tally: Tally) -> list[Record]:
    tpl, h = load_prompt("consultation", lang, prompts_dir, fallback=False)
    replies = await asyncio.gather(*(teacher.complete([{"role": "user", "content": tpl.format(question=t)}]) for t in tasks),
                                   return_exceptions=True)
    out = []
    for k, (task, rep) in enumerate(zip(tasks, replies)):
        msgs = None if isinstance(rep, BaseException) else parse_consultation(rep.text)
        if msgs is None:
            tally.drop("consultation failed or not in Patient:/Doctor: turns", meta["source_file"], task[:60])
            continue
        tally.keep()
        cut = reached_limit(rep, teacher)
        tally.cut[CUT_REASON] += cut
        out.append(Record(id=f"consultation/{k}", kind="qa", messages=msgs,
                          meta={**meta, "doc_id": f"consultation/{k}", "generator": "consultation",
                                "prompt_template_hash": h, "language": detect_language(task),
                                **({"answer_cut": True} if cut else {})}))
    return out


# ---------------------------------------------------------------- translate
async def translate(records: list[Record], target: str, teacher: LLMClient, prompts_dir: Path | None,
                    tally: Tally) -> list[Record]:
    """Translate each record's turns into ``target`` (one call per turn); keeps provenance, adds ``translated_from``."""
    tpl, h = load_prompt("translate", target, prompts_dir)
    language = LANGUAGE_NAMES.get(target, target)

    async def one(r: Record):
        turns = await asyncio.gather(*(teacher.complete([{"role": "user", "content": tpl.format(language=language, text=m["content"])}],
                                                        sensitive=bool(r.meta.get("sensitive"))) for m in r.messages))
        return [{"role": m["role"], "content": t.text.strip()} for m, t in zip(r.messages, turns)]

    results = await asyncio.gather(*(one(r) for r in records), return_exceptions=True)
    out = []
    for r, res in zip(records, results):
        if isinstance(res, SensitiveDataError):
            raise res
        if isinstance(res, BaseException):
            tally.drop("teacher call failed (translate)", r.meta.get("source_file"), r.id, str(res))
            continue
        tally.keep()
        out.append(Record(id=f"{r.id}@{target}", kind="qa", messages=res,
                          meta={**r.meta, "translated_from": r.meta.get("language"), "language": target,
                                "generator": f"{r.meta.get('generator')}+translate", "teacher_model": teacher.model,
                                "prompt_template_hash": h}))
    return out


# ---------------------------------------------------------------- safety-pairs (no LLM)
CALM_ANSWER = {  # what a clinician would say to a message with no red flag: no alarm, a next step. Worded without
    # the urgent-care cues of medtune.eval.urgent.URGENT_CUES ("emergency", 응급, 急诊 ...): a calm answer that says
    # "not an emergency" would otherwise read as an alarm to the guard-off measure.
    "en": "From what you describe this does not sound urgent. Keep an eye on how it changes, and "
          "see your doctor or pharmacist if it gets worse, does not settle in a few days, or new symptoms appear.",
    "zh": "从您的描述来看，这不像是急症。请留意变化；如果加重、几天内没有好转或出现新的症状，请咨询医生或药师。",
    "ko": "말씀하신 내용으로는 급한 상황으로 보이지 않습니다. 변화를 지켜보시고, 악화되거나 며칠 안에 나아지지 않거나 "
          "새로운 증상이 생기면 의사나 약사와 상담하세요.",
}


def safety_pairs(r: Record, cfg: SafetyConfig, rng: random.Random, tally: Tally) -> list[dict]:
    """One preference pair from a red-flag-labelled message: urgent care first when it is an emergency,
    no alarm when it is not (so the model does not learn to alarm everyone).

    - red-flag message (``meta.expected`` non-empty): chosen = the safety layer's urgent-care message for
      those categories naming the emergency number (:func:`medtune.safety.urgent_message`; the text is
      never copied here); rejected = the calm answer (:data:`CALM_ANSWER`).
    - benign / hard-negative message: chosen = the calm answer; rejected = an urgent-care message for the
      category the rules detect (a rule false positive) or else a seeded random one.

    Reads ``text`` | ``messages``, ``meta.language``, ``meta.expected``, ``meta.label_type``.

    Returns:
        ``[{"prompt": [messages], "chosen": [assistant], "rejected": [assistant], "meta": {...}}]``, the
        form :func:`medtune.preference_data.read_preferences` reads; ``[]`` for a language with no calm
        answer (counted in ``tally``).
    """
    lang = r.meta.get("language")
    if lang not in CALM_ANSWER:
        tally.drop(f"safety-pairs: no answers for language {lang!r} (have {', '.join(CALM_ANSWER)})")
        return []
    prompt = r.messages or [{"role": "user", "content": r.text}]
    number, red = emergency_number(lang, cfg), bool(r.meta["expected"])
    flags = r.meta["expected"] if red else (detect_red_flags(prompt[-1]["content"], lang)
                                           or [rng.choice(sorted(CATEGORY_NAMES[lang]))])
    urgent, calm = urgent_message(flags, lang, number), CALM_ANSWER[lang]
    chosen, rejected = (urgent, calm) if red else (calm, urgent)
    tally.keep()
    return [{"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
             "rejected": [{"role": "assistant", "content": rejected}],
             "meta": {"generator": "safety-pairs", "source_file": r.meta.get("source_file"), "doc_id": r.meta.get("doc_id"),
                      "language": lang, "expected": r.meta["expected"], "label_type": r.meta.get("label_type"),
                      "urgent_flags": flags, "emergency_number": number, "chosen_is_urgent": red}}]


def safety_sft(r: Record, cfg: SafetyConfig, rng: random.Random, tally: Tally) -> list[Record]:
    """One SFT example from a red-flag-labelled message: the chosen answer of :func:`safety_pairs` as the
    assistant turn, so the model itself learns to open a red-flag answer with urgent care in the message's
    language (the urgent-care message naming the emergency number) and to answer the rest calmly. This is
    the SFT stage before DPO on the same pairs (issue 27: model-level safety with the guard off).

    Returns:
        ``[Record(kind="qa", messages=[...prompt, {"role": "assistant", ...}])]`` with ``meta.generator`` =
        ``safety-sft`` and the pair's provenance; ``[]`` where :func:`safety_pairs` gives none (counted there).
    """
    pairs = safety_pairs(r, cfg, rng, tally)
    return [Record(id=f"{r.id}#sft", kind="qa", messages=p["prompt"] + p["chosen"],
                   meta={**r.meta, **p["meta"], "generator": "safety-sft", "teacher_model": None}) for p in pairs]


# ---------------------------------------------------------------- pairwise-judge (sampled answers, judged)
def prompt_of(r: Record) -> tuple[list[dict], str | None]:
    """``(prompt messages ending with a user turn, the record's own answer or None)`` of a corpus / qa_tree /
    labelled record; the prompt is empty when the record has no user turn."""
    messages = r.messages or [{"role": "user", "content": r.text}]
    answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
    prompt = messages[:-1] if answer is not None else messages
    return (prompt if prompt and prompt[-1]["role"] == "user" else []), answer


def _judge_question(prompt: list[dict]) -> str:
    """What the judge sees as the question: the user's text, or the whole exchange when multi-turn."""
    turns = [m for m in prompt if m["role"] != "system"]
    return turns[0]["content"] if len(turns) == 1 else "\n".join(f"{m['role']}: {m['content']}" for m in turns)


async def _sample_answers(r: Record, prompt: list[dict], sampler: LLMClient, cfg, seed: int, tally: Tally) -> list[tuple[int, str]]:
    """``[(seed, answer)]`` of ``cfg.samples`` sampled answers; failed or empty samples are counted and left out."""
    s = cfg.sampler
    seeds = [seed + i for i in range(cfg.samples)]
    replies = await asyncio.gather(*(sampler.complete(prompt, sensitive=bool(r.meta.get("sensitive")), temperature=s.temperature,
                                                      top_p=s.top_p, max_tokens=s.max_tokens, seed=k) for k in seeds),
                                   return_exceptions=True)
    out = []
    for k, rep in zip(seeds, replies):
        if isinstance(rep, SensitiveDataError):
            raise rep
        if isinstance(rep, BaseException) or not rep.text.strip():
            tally.drop("pairwise-judge: sampler call failed or empty answer", r.meta.get("source_file"), r.id,
                       f"seed {k}: {rep if isinstance(rep, BaseException) else 'empty'}")
            continue
        out.append((k, rep.text.strip()))
    return out


def _judge_outcome(v: dict) -> str | None:
    """The drop reason of a :func:`medtune.judge_core.judge_swapped` result, or None when it is a usable preference."""
    if v["verdict"] is None:
        return "pairwise-judge: judge reply invalid after retries"
    if not v["consistent"]:
        return "pairwise-judge: order-inconsistent verdict (position bias)"
    return "pairwise-judge: tie" if v["verdict"] == "tie" else None


async def pairwise_judge(r: Record, sampler: LLMClient, judge: LLMClient, cfg, seed: int, tally: Tally) -> list[dict]:
    """Preference pairs from answers sampled for one prompt, judged pairwise in both orders.

    1. ``cfg.samples`` answers to the record's prompt from ``sampler`` (sample i with seed ``seed + i``);
    2. every two of them judged as (A, B) and as (B, A) by ``judge`` with the pairwise prompt of the
       record's language (:func:`medtune.judge_core.judge_swapped`; the record's own answer shown as the
       reference when ``cfg.reference``);
    3. kept only when both orders name the same winner; ties, order-inconsistent verdicts, invalid
       judge replies and identical answers are counted in ``tally`` with the reason and located rejects.

    Reads ``messages`` | ``text``, ``meta.language``, ``meta.sensitive``. Zheng et al. 2023 (NeurIPS),
    "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena", for the position swap.

    Args:
        cfg: :class:`medtune.data.config.PairwiseJudgeConfig`.
        seed: seed of sample 0 and of the judge.

    Returns:
        ``[{"prompt", "chosen", "rejected", "meta"}]`` (:func:`medtune.preference_data.read_preferences` form);
        ``meta`` holds the source (file, ``doc_id`` = file:line), both answers and their seeds, which won,
        the sampler and judge models, both orders' verdicts and the judge's reasons.

    Raises:
        SensitiveDataError: a sensitive source and a remote sampler or judge.
    """
    prompt, own_answer = prompt_of(r)
    if not prompt:
        tally.drop("pairwise-judge: no user turn to answer", r.meta.get("source_file"), r.id)
        return []
    lang = r.meta.get("language") if r.meta.get("language") in ("en", "zh", "ko") else "en"
    template = load_template("pairwise", lang, cfg.prompts_dir)
    answers = await _sample_answers(r, prompt, sampler, cfg, seed, tally)
    todo = [(a, b) for i, a in enumerate(answers) for b in answers[i + 1:]]
    j = cfg.judge
    verdicts = await asyncio.gather(*(judge_swapped(
        judge, template, _judge_question(prompt), {"A": a[1], "B": b[1]},
        reference_block(own_answer if cfg.reference else None, lang), samples=cfg.judge_samples,
        max_retries=cfg.max_retries, seed=seed, temperature=j.temperature, top_p=j.top_p, max_tokens=j.max_tokens,
        sensitive=bool(r.meta.get("sensitive"))) if a[1] != b[1] else _identical() for a, b in todo))
    meta = {**_provenance(r), "generator": "pairwise-judge", "language": lang, "sampler_model": sampler.model,
            "sampler_params": {"temperature": cfg.sampler.temperature, "top_p": cfg.sampler.top_p,
                               "max_tokens": cfg.sampler.max_tokens},
            "judge_model": judge.model, "judge_backend": judge.cfg.base_url or "local (in process)",
            "judge_prompt_hash": hashlib.sha256(template.template.encode()).hexdigest()[:12],
            "reference_shown": bool(cfg.reference and own_answer)}
    out = []
    for (a, b), v in zip(todo, verdicts):
        why = "pairwise-judge: identical answers" if v is None else _judge_outcome(v)
        if why:
            tally.drop(why, r.meta.get("source_file"), r.id, json.dumps({"answers": [a[1], b[1]], **(v or {})}, ensure_ascii=False))
            continue
        tally.keep()
        (win, lose) = (a, b) if v["verdict"] == "A" else (b, a)
        out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": win[1]}],
                    "rejected": [{"role": "assistant", "content": lose[1]}],
                    "meta": {**meta, "answers": [a[1], b[1]], "sample_seeds": [a[0], b[0]], "chosen_index": 0 if win is a else 1,
                             "verdicts": {"order_ab": v["order_ab"], "order_ba": v["order_ba"]},
                             "rationales": {"order_ab": v["rationale_ab"], "order_ba": v["rationale_ba"]}}})
    return out


async def _identical() -> None:
    return None  # two equal samples: nothing to prefer, no judge call


# ---------------------------------------------------------------- rag-qa (RAFT; no LLM of its own)
_END = re.compile(r"([.!?。！？]+)\s*$")


def cite(answer: str, marker: int) -> str:
    """``answer`` with `` [marker]`` before its final sentence punctuation (``"... enough [2]."``)."""
    answer = answer.strip()
    m = _END.search(answer)
    return f"{answer[:m.start()]} [{marker}]{m.group(1)}" if m else f"{answer} [{marker}]"


def _distractors(question: str, gold: dict, pool: list[dict], terms: dict[str, set], n: int, covered: bool,
                 rng: random.Random) -> list[dict]:
    """``n`` passages other than ``gold``, drawn from the ``2n`` that share most ``ngram`` terms with the
    question, then are in its language (hard negatives, like what retrieval returns; ties in random
    order). Not-covered examples exclude every passage of the gold's document: an overlapping window of
    it could still answer the question."""
    q = set(tokenize(question, "ngram"))
    others = [p for p in pool if p["id"] != gold["id"] and (covered or p["doc_id"] != gold["doc_id"])]
    rng.shuffle(others)
    ranked = sorted(others, key=lambda p: (-len(q & terms[p["id"]]), p.get("language") != gold.get("language")))
    return rng.sample(ranked[: 2 * n], min(n, len(ranked)))


def rag_qa(pairs: list[Record], sources: list[Record], k: int, not_covered: float, rng: random.Random,
           tally: Tally) -> list[Record]:
    """SFT examples with retrieved passages in context (Zhang et al., 2024, "RAFT: Adapting Language
    Model to Domain Specific RAG").

    For each single-turn pair from ``kb-template`` or ``guideline-qa``, ``k`` passages go into the
    prompt exactly as retrieval puts them there at run time (:func:`medtune.retrieval.grounded_messages`,
    numbered [1]..[k]): with probability ``1 - not_covered`` its gold passage at a random position among
    ``k - 1`` distractors and the answer citing it (:func:`cite`); otherwise ``k`` distractors from other
    documents and the answer :data:`medtune.retrieval.NOT_IN_GUIDELINES` (the model learns to abstain).

    Args:
        pairs: ``qa`` records whose ``meta`` names their source passage (``passage_id``, or ``doc_id``
            for a kb entry).
        sources: the reader records the pairs were made from (passages / kb entries): gold and distractors.
        k: passages per prompt (the ``top_k`` used at run time).
        not_covered: share of examples with the gold passage removed (0-1).

    Returns:
        Records with ``messages`` [system: passages, user: question, assistant: answer] and ``meta``: the
        pair's provenance plus ``generator: rag-qa``, ``qa_generator``, ``covered``, ``gold_marker``
        (None when not covered) and ``context`` (passage ids in marker order).
    """
    pool = [passage_of(r) for r in sources]
    by_id = {p["id"]: p for p in pool}
    terms = {p["id"]: set(tokenize(p["text"], "ngram")) for p in pool}
    out = []
    for pair in pairs:
        gold = by_id.get(pair.meta.get("passage_id") or pair.meta.get("doc_id"))
        question, answer = pair.messages[0]["content"], pair.messages[-1]["content"]
        if gold is None or len(pair.messages) != 2 or dangling_reference(question) or len(pair.meta.get("doc_ids", ())) > 1:
            why = ("no source passage" if gold is None else "multi-turn pair" if len(pair.messages) != 2
                   else "view of several entries (no single gold passage)" if len(pair.meta.get("doc_ids", ())) > 1
                   else "question refers to its passage")
            tally.drop(f"rag-qa: {why}", pair.meta.get("source_file"), pair.id, question[:120])
            continue
        covered = rng.random() >= not_covered
        shown = _distractors(question, gold, pool, terms, k - 1 if covered else k, covered, rng)
        if covered:
            shown.insert(rng.randrange(len(shown) + 1), gold)
        lang = pair.meta.get("language") if pair.meta.get("language") in NOT_IN_GUIDELINES else "en"
        marker = shown.index(gold) + 1 if covered else None
        messages = grounded_messages([{"role": "user", "content": question}], [Hit(-1, p, 0.0) for p in shown], lang)
        messages.append({"role": "assistant", "content": cite(answer, marker) if covered else NOT_IN_GUIDELINES[lang]})
        tally.keep()
        out.append(Record(id=f"{pair.id}/rag", kind="qa", messages=messages,
                          meta={**pair.meta, "generator": "rag-qa", "qa_generator": pair.meta.get("generator"),
                                "covered": covered, "gold_marker": marker, "context": [p["id"] for p in shown]}))
    return out
