"""Multiple-choice benchmark loaders: each published format -> one :class:`MCQItem` per question.

Formats (``format=`` name, fields read):

- ``cmexam`` (CSV or .xlsx): ``Question``, ``Options`` (one option per line, ``"A xxx"``; the
  spreadsheet form's literal ``\n`` separators too), ``Answer``
  (one or several letters), ``Explanation``; subject from ``Clinical Department`` or
  ``Medical Discipline`` when present.
- ``cmb`` (JSON array): ``exam_type``, ``exam_class``, ``exam_subject``, ``question``,
  ``option`` {A..E}, ``answer``, ``question_type`` (单项选择题 / 多项选择题).
- ``kormedmcqa`` (CSV or JSONL): ``subject``, ``year``, ``question``, ``A``..``E``,
  ``answer`` (1-5), optional ``cot``.
- ``medqa`` (JSONL): ``question``, ``options`` {A..}, ``answer_idx`` (letter), ``answer``,
  ``meta_info``. MedMCQA files converted to this ``options``/``answer_idx`` form also load here.
- ``medmcqa`` (JSON/JSONL): ``id``, ``question``, ``opa``..``opd``, ``cop`` (option index,
  1-based in the original release, 0-based in the Hugging Face copy; see ``cop_base``),
  ``subject_name``, ``choice_type``.
- ``pubmedqa`` (JSON object keyed by PMID): ``QUESTION``, ``CONTEXTS``, ``final_decision``
  (yes/no/maybe); or the test-set form without ``final_decision`` plus a separate
  ground-truth file ``{pmid: "yes"|"no"|"maybe"}``.
- ``generic`` (CSV/TSV/JSONL/JSON): any columns, named by a column map such as
  ``{"question": "stem", "A": "opt1", "B": "opt2", "answer": "key", "subject": "area"}``
  or ``{"options": "choices"}`` for a single column holding a mapping, a list or
  ``"A xxx"`` lines. The answer may be letters, a 1-based index, or the text of an option.

Records that cannot be used (unknown answer letter, fewer than two options, duplicate id,
undecodable line ...) become :class:`medtune.io.Reject` entries with file, line,
field and reason; they are counted and saved, never silently dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medtune.errors import DataFileError
from medtune.io import RecordError, Reject, read_rows, read_text

LETTERS = "ABCDEFGHIJ"
FORMATS = ("auto", "cmexam", "cmb", "kormedmcqa", "medqa", "medmcqa", "pubmedqa", "generic")
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


@dataclass
class MCQItem:
    """One multiple-choice question.

    Attributes:
        id: unique id within the file (the record's own id, else ``<stem>-<n>``).
        question: question stem.
        options: ordered ``{letter: text}``, at least two, letters from ``A``.
        answer: correct letters, sorted (``"B"``, or ``"ACD"`` for multi-answer).
        multi: True when the question may have several correct options.
        subject: grouping for the per-subject breakdown ("" when unknown).
        context: passage shown before the question (PubMedQA abstracts), "" otherwise.
        source: ``file:line`` of the record, for error messages and per-item results.
    """

    id: str
    question: str
    options: dict[str, str]
    answer: str
    multi: bool = False
    subject: str = ""
    context: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading files


# ----------------------------------------------------------------------------- field helpers


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(key, "missing or empty")
    return str(value).strip()


def parse_letters(value: object, options: dict[str, str], field_name: str) -> str:
    """Normalise an answer such as ``"b"``, ``"A,C"``, ``"ACD"``, ``"A、C"`` to sorted letters.

    Raises:
        RecordError: empty answer, or a letter that is not one of ``options``.
    """
    letters = re.sub(r"[\s,;/、，；|+]", "", str(value if value is not None else "")).upper()
    if not letters:
        raise RecordError(field_name, "missing or empty")
    if letters in ("NAN", "NONE", "NULL"):
        raise RecordError(field_name, f"missing: the cell holds {str(value).strip()!r}, an empty value as pandas writes it")
    bad = [c for c in letters if c not in options]
    if bad:
        raise RecordError(field_name, f"answer {str(value)!r} has letter(s) {''.join(bad)!r} that are not "
                                      f"options ({''.join(options)})")
    return "".join(sorted(set(letters)))


def _options_from_columns(record: dict, columns: dict[str, str]) -> dict[str, str]:
    """``{letter: text}`` from one column per letter; empty trailing options are skipped."""
    opts = {}
    for letter, col in columns.items():
        value = record.get(col)
        if value is not None and str(value).strip():
            opts[letter] = str(value).strip()
    return opts


def parse_option_lines(text: str, field_name: str) -> dict[str, str]:
    """Parse ``"A 文本\\nB 文本"`` (also ``A.``, ``A、``, ``A:``, ``(A)``) into ``{letter: text}``.

    Raises:
        RecordError: a non-empty line without a leading option letter, or letters out of order.
    """
    opts = {}
    text = str(text).replace("\\r\\n", "\n").replace("\\n", "\n")  # spreadsheet exports keep a literal "\n"
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^\s*\(?([A-Ja-j])[\s\.\)、:：．）]+(.*)$", line) or re.match(r"^\s*([A-J])()$", line)
        if not m:
            raise RecordError(field_name, f"option line {line.strip()[:40]!r} does not start with a letter")
        opts[m.group(1).upper()] = m.group(2).strip()
    if list(opts) != list(LETTERS[:len(opts)]):
        raise RecordError(field_name, f"option letters {''.join(opts)} are not A, B, C ... in order")
    return opts


def _check_options(opts: dict[str, str], field_name: str) -> dict[str, str]:
    if len(opts) < 2:
        raise RecordError(field_name, f"needs at least 2 non-empty options, got {len(opts)}")
    if list(opts) != list(LETTERS[:len(opts)]):
        raise RecordError(field_name, f"options {''.join(opts)} have a gap (missing option)")
    return opts


def _options_mapping(value: object, field_name: str) -> dict[str, str]:
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(field_name, "looks like JSON but does not parse") from None
    if isinstance(value, dict):
        return {str(k).strip().upper(): str(v).strip() for k, v in value.items() if v is not None and str(v).strip()}
    if isinstance(value, list):
        return {LETTERS[i]: str(v).strip() for i, v in enumerate(value[:len(LETTERS)])}
    if isinstance(value, str):
        return parse_option_lines(value, field_name)
    raise RecordError(field_name, "missing, or not a mapping / list / option lines")


def _answer_from_value(value: object, options: dict[str, str], field_name: str) -> str:
    """Letters, a 1-based index, or the text of one option."""
    text = str(value).strip() if value is not None else ""
    if text.isdigit():
        idx = int(text)
        if not 1 <= idx <= len(options):
            raise RecordError(field_name, f"answer index {idx} is outside 1..{len(options)}")
        return LETTERS[idx - 1]
    for letter, opt in options.items():
        if text and text == opt and len(text) > 1:
            return letter
    return parse_letters(text, options, field_name)


# ----------------------------------------------------------------------------- one function per format


def from_cmexam(r: dict) -> dict:
    opts = _check_options(parse_option_lines(_text(r, "Options"), "Options"), "Options")
    answer = parse_letters(r.get("Answer"), opts, "Answer")
    subject = (r.get("Clinical Department") or r.get("Medical Discipline") or "").strip()
    return dict(question=_text(r, "Question"), options=opts, answer=answer, multi=len(answer) > 1, subject=subject,
                extra={"explanation": (r.get("Explanation") or "").strip()})


def from_cmb(r: dict) -> dict:
    opts = _check_options(_options_mapping(r.get("option"), "option"), "option")
    answer = parse_letters(r.get("answer"), opts, "answer")
    qtype = str(r.get("question_type") or "")
    multi = "多" in qtype or "multi" in qtype.lower() or len(answer) > 1
    return dict(question=_text(r, "question"), options=opts, answer=answer, multi=multi,
                subject=str(r.get("exam_subject") or r.get("exam_class") or "").strip(),
                extra={"exam_type": r.get("exam_type"), "exam_class": r.get("exam_class"), "question_type": qtype})


def from_kormedmcqa(r: dict) -> dict:
    opts = _check_options(_options_from_columns(r, {c: c for c in "ABCDE"}), "A..E")
    raw = str(r.get("answer") or "").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= len(opts):
        raise RecordError("answer", f"expected an option number 1..{len(opts)}, got {raw!r}")
    ident = "-".join(str(r[k]) for k in ("subject", "year", "period", "q_number") if r.get(k) not in (None, ""))
    return dict(question=_text(r, "question"), options=opts, answer=LETTERS[int(raw) - 1],
                subject=str(r.get("subject") or "").strip(), id=ident if "q_number" in r else None,
                extra={"year": r.get("year"), "cot": r.get("cot") or ""})


def from_medqa(r: dict) -> dict:
    opts = _check_options(_options_mapping(r.get("options"), "options"), "options")
    answer = parse_letters(r.get("answer_idx"), opts, "answer_idx")
    if r.get("answer") and str(r["answer"]).strip() != opts[answer[0]] and len(answer) == 1:
        raise RecordError("answer", f"answer text {str(r['answer'])[:40]!r} differs from option {answer} "
                                    f"({opts[answer[0]][:40]!r})")
    return dict(question=_text(r, "question"), options=opts, answer=answer, multi=len(answer) > 1,
                subject=str(r.get("meta_info") or r.get("subject_name") or "").strip())


def from_medmcqa(r: dict, cop_base: int = 1) -> dict:
    if "opa" not in r and "options" in r:
        return from_medqa(r)
    opts = _check_options(_options_from_columns(r, {"A": "opa", "B": "opb", "C": "opc", "D": "opd"}), "opa..opd")
    raw = str(r.get("cop") if r.get("cop") is not None else "").strip()
    if not raw.lstrip("-").isdigit() or not 0 <= int(raw) - cop_base < len(opts):
        raise RecordError("cop", f"expected an option index {cop_base}..{len(opts) - 1 + cop_base}, got {raw!r}")
    return dict(question=_text(r, "question"), options=opts, answer=LETTERS[int(raw) - cop_base],
                multi=str(r.get("choice_type") or "") == "multi", subject=str(r.get("subject_name") or "").strip(),
                extra={"topic": r.get("topic_name"), "explanation": r.get("exp") or ""})


def from_pubmedqa(r: dict, truth: dict[str, str] | None = None) -> dict:
    key = r.get("_key") or r.get("pubid") or r.get("id")
    decision = r.get("final_decision") if truth is None else truth.get(str(key))
    if truth is not None and decision is None:
        raise RecordError("final_decision", f"PMID {key} is missing from the ground-truth file")
    if decision is None:
        raise RecordError("final_decision", "missing; for the test-set form pass the ground-truth file (--ground-truth)")
    decision = str(decision or "").strip().lower()
    if decision not in PUBMEDQA_OPTIONS.values():
        raise RecordError("final_decision", f"expected yes/no/maybe, got {decision!r}")
    contexts = r.get("CONTEXTS") or r.get("context") or []
    context = "\n".join(contexts) if isinstance(contexts, list) else str(contexts)
    return dict(question=_text(r, "QUESTION" if "QUESTION" in r else "question"), options=dict(PUBMEDQA_OPTIONS),
                answer={v: k for k, v in PUBMEDQA_OPTIONS.items()}[decision], context=context, id=key,
                extra={"long_answer": r.get("LONG_ANSWER") or ""})


def from_generic(r: dict, column_map: dict[str, str]) -> dict:
    m = {"question": "question", "answer": "answer", **column_map}
    letter_cols = {k: v for k, v in m.items() if len(k) == 1 and k in LETTERS}
    if letter_cols:
        opts = _options_from_columns(r, letter_cols)
    else:
        opts = _options_mapping(r.get(m.get("options", "options")), m.get("options", "options"))
    opts = _check_options(opts, m.get("options", ",".join(letter_cols.values())))
    answer = _answer_from_value(r.get(m["answer"]), opts, m["answer"])
    multi_col = m.get("multi")
    multi = len(answer) > 1 or (bool(multi_col) and str(r.get(multi_col, "")).lower() in ("1", "true", "yes", "multi"))
    return dict(question=_text(r, m["question"]), options=opts, answer=answer, multi=multi,
                subject=str(r.get(m.get("subject", "subject")) or "").strip(),
                context=str(r.get(m.get("context", "context")) or "").strip(), id=r.get(m.get("id", "id")))


def detect_format(record: dict) -> str:
    """Guess the benchmark format from one record's keys (``generic`` when nothing matches)."""
    keys = set(record)
    rules = [("cmexam", {"Question", "Options", "Answer"}), ("cmb", {"question", "option", "answer"}),
             ("pubmedqa", {"QUESTION", "CONTEXTS"}), ("medmcqa", {"opa", "opb", "cop"}),
             ("medqa", {"question", "options", "answer_idx"}), ("kormedmcqa", {"question", "A", "B", "answer"})]
    return next((name for name, need in rules if need <= keys), "generic")


# ----------------------------------------------------------------------------- the loader


def load_pubmedqa_truth(path: Path, encodings: list[str] | None = None) -> dict[str, str]:
    """Read PubMedQA's separate ground-truth file ``{pmid: "yes"|"no"|"maybe"}``.

    Raises:
        DataFileError: not a JSON object of strings.
    """
    text, _ = read_text(path, encodings or None)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataFileError(f"{path}: a PubMedQA ground-truth file is a JSON object {{pmid: yes|no|maybe}}")
    return {str(k): v for k, v in data.items()}


def _converter(fmt: str, column_map: dict[str, str] | None, cop_base: int,
               truth: dict[str, str] | None) -> Callable[[dict], dict]:
    if fmt == "generic":
        return lambda r: from_generic(r, column_map or {})
    if fmt == "medmcqa":
        return lambda r: from_medmcqa(r, cop_base)
    if fmt == "pubmedqa":
        return lambda r: from_pubmedqa(r, truth)
    return {"cmexam": from_cmexam, "cmb": from_cmb, "kormedmcqa": from_kormedmcqa, "medqa": from_medqa}[fmt]


def _medmcqa_cop_base(rows: list[dict]) -> int:
    """0 when any ``cop`` is 0 (Hugging Face copy), else 1 (original release: 1..4)."""
    cops = {str(r.get("cop")).strip() for r in rows if "opa" in r}
    return 0 if "0" in cops else 1


def load_mcq(path: Path, fmt: str = "auto", column_map: dict[str, str] | None = None,
             ground_truth: Path | None = None, encodings: list[str] | None = None,
             cop_base: int | None = None) -> tuple[list[MCQItem], list[Reject], str]:
    """Load a benchmark file into :class:`MCQItem` records.

    Args:
        path: the benchmark file (CSV/TSV/JSONL/JSON).
        fmt: one of :data:`FORMATS`; ``auto`` detects from the first record's keys.
        column_map: ``generic`` only: field -> column (``question``, ``answer``, ``options``
            or one entry per letter ``A``..``J``, optional ``subject``, ``context``, ``id``, ``multi``).
        ground_truth: PubMedQA ground-truth JSON for a test file without ``final_decision``.
        encodings: encodings tried per line (default ``["utf-8"]``).
        cop_base: MedMCQA ``cop`` base (1: original release, 0: HF copy); None detects it.

    Returns:
        ``(items, rejects, format_used)``.

    Raises:
        DataFileError: unreadable file, unknown format, or no usable question.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DataFileError(f"unknown MCQ format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rows = list(read_rows(path, encodings or None))
    records = [(loc, r) for loc, r in rows if isinstance(r, dict)]
    rejects = [r for _, r in rows if isinstance(r, Reject)]
    if fmt == "auto":
        fmt = detect_format(records[0][1]) if records else "generic"
        if fmt == "generic" and not column_map and records:
            raise DataFileError(f"{path}: cannot tell the benchmark format from the columns "
                                f"{sorted(records[0][1])[:12]}; pass --format or a --map column mapping")
    truth = load_pubmedqa_truth(ground_truth, encodings) if ground_truth else None
    convert = _converter(fmt, column_map, _medmcqa_cop_base([r for _, r in records]) if cop_base is None else cop_base, truth)
    items, seen = [], {}
    for n, (loc, record) in enumerate(records, 1):
        try:
            fields = convert(record)
        except RecordError as e:
            rejects.append(Reject(str(path), loc, e.reason, e.field, record))
            continue
        ident = str(fields.pop("id", None) or record.get("id") or f"{path.stem}-{n}")
        if ident in seen:
            rejects.append(Reject(str(path), loc, f"duplicate id {ident!r} (first at {seen[ident]})", "id", record))
            continue
        seen[ident] = loc
        items.append(MCQItem(id=ident, source=f"{path.name}:{loc}", **fields))
    if not items:
        first = f"; first problem: {rejects[0].field}: {rejects[0].reason}" if rejects else ""
        raise DataFileError(f"{path}: no usable questions ({len(records)} read as {fmt}{first})")
    return items, rejects, fmt
