"""Source readers: files -> :class:`~medtune.data.records.Record` generators with counted rejects.

| reader              | reads                                                        | yields kind |
|---------------------|--------------------------------------------------------------|-------------|
| :func:`read_guidelines` | .txt .md .docx .hwp .hwpx .html .pdf (:mod:`medtune.documents`), JSON array of strings, JSONL ``text`` | ``passage`` |
| :func:`read_kb`     | JSON / JSONL (MongoDB export too) / CSV entries; table rows of documents | ``kb``      |
| :func:`read_reports`| free-text radiology reports (.txt) or CSV, one column per section | ``report`` |
| :func:`read_qa_tree`| AI Hub layout: ``1.질문/<...>/*.json`` + ``2.답변/<...>/*.json`` | ``qa``      |
| :func:`read_corpus` | Alpaca, ShareGPT, ``messages``, column-mapped CSV / JSONL     | ``qa``      |

Every reader takes a file or a directory (read recursively, sorted), an optional forced
``encoding``, and a :class:`~medtune.data.records.Tally` that receives located rejects. Bad
records never stop the run; a source that cannot be read at all raises
:class:`~medtune.data.records.DataFileError`. The guideline and kb readers name every file of
their folder that they do not read (unsupported type, encrypted, no text layer, too large) as a
reject at ``<file>``, so nothing is skipped without a word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from medtune.data.records import Record, Tally
from medtune.documents import DEFAULT_MAX_MB, TEXT_FORMATS, Document, finish, passages, read_document, text_blocks
from medtune.documents import SUFFIXES as DOCUMENT_SUFFIXES
from medtune.errors import DataFileError, DocumentError
from medtune.io import (NAME_FIELDS, SPREADSHEET_SUFFIXES, Reject, RecordError, columns_hint, parse_rows, read_text,
                        record_to_messages, spreadsheet_rows)
from medtune.text import detect_language, strip_format_tokens, strip_html


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataFileError(f"{path}: source not found")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _source_files(path: Path, suffixes: tuple[str, ...], tally: Tally, kind: str) -> list[Path]:
    """Every file under ``path`` (sorted); those no reader of ``kind`` takes are rejected by name."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        raise DataFileError(f"{path}: source not found")
    out = []
    for f in files:
        if f.suffix.lower() in suffixes:
            out.append(f)
        else:
            tally.drop(f"unsupported file type {f.suffix.lower() or '(no suffix)'!r}: no {kind} reader takes it",
                       f, "<file>", f"supported: {' '.join(suffixes)}")
    return out


def _document(file: Path, tally: Tally, encoding: str | None, max_file_mb: float) -> Document | None:
    """:func:`medtune.documents.read_document`, or None with the reason counted and the file named."""
    try:
        return read_document(file, int(max_file_mb * 2**20), encoding)
    except DocumentError as e:
        tally.drop(e.reason, file, "<file>", str(e))
        return None


def _doc_id(path: Path, root: Path) -> str:
    root = Path(root)
    return str(path.relative_to(root)) if root.is_dir() else path.name


def _rows(file: Path, text: str, tally: Tally) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` of decoded ``text`` (:func:`medtune.io.parse_rows`); bad lines and
    non-object records are counted as located rejects."""
    for where, item in parse_rows(file, text):
        if isinstance(item, Reject):
            tally.reject(item)
        else:
            yield where, item


def _structured_items(path: Path, encoding: str | None, tally: Tally,
                      suffixes: tuple[str, ...] = (".json", ".jsonl", ".csv", ".tsv", *SPREADSHEET_SUFFIXES)
                      ) -> Iterator[tuple[Path, str, dict]]:
    """``(file, where, record)`` for every record of the structured files (spreadsheets too) under
    ``path``; empty files and malformed lines are counted as rejects."""
    for file in _files(path, suffixes):
        if file.suffix.lower() in SPREADSHEET_SUFFIXES:
            for where, item in spreadsheet_rows(file):
                if isinstance(item, Reject):
                    tally.reject(item)
                else:
                    yield file, where, item
            continue
        text, _ = read_text(file, encoding)
        if not text.strip():
            tally.drop("empty file", file)
            continue
        for where, item in _rows(file, text, tally):
            yield file, where, item


# ---------------------------------------------------------------- guidelines
GUIDELINE_SUFFIXES = (*DOCUMENT_SUFFIXES, ".json", ".jsonl")


def split_passages(text: str, max_chars: int = 800, overlap_chars: int = 100) -> list[tuple[int, int]]:
    """Character spans of the passages of a plain-text document (:func:`medtune.documents.passages`)."""
    if not text.strip():
        return []
    doc = finish(Path("<text>"), "text", text_blocks(text), text)
    return [(p.start, p.end) for p in passages(doc, max_chars, overlap_chars)]


def _json_docs(path: Path, root: Path, encoding: str | None, tally: Tally) -> Iterator[tuple[str, Document, dict]]:
    """``(doc_id, document, extra_meta)`` for each ``text`` of a JSON / JSONL guideline file."""
    text, _ = read_text(path, encoding)
    if not text.strip():
        tally.drop("empty file", path, "<file>")
        return
    doc = _doc_id(path, root)
    for where, item in parse_rows(path, text):
        if isinstance(item, Reject):  # a JSON array of plain strings is a list of documents
            if not isinstance(item.record, str) or item.field != "<record>":
                tally.reject(item)
                continue
            item = {"text": item.record}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            tally.drop("no `text` string", path, where, str(item)[:120])
            continue
        extra = {k: item[k] for k in ("title", "source", "date") if item.get(k) is not None}
        yield (f"{doc}:{item.get('id', where.split()[-1])}", finish(path, "text", text_blocks(item["text"]), item["text"]),
               extra)


def _passage_meta(file: Path, doc_id: str, k: int, doc: Document, p, language: str) -> dict:
    meta = {"source_file": str(file), "doc_id": doc_id, "passage_id": f"{doc_id}#p{k}",
            "char_span": [p.start, p.end] if doc.format in TEXT_FORMATS else None, "language": language,
            "format": doc.format, "section": list(p.section), "page": p.page}
    if p.page_end != p.page:
        meta["page_end"] = p.page_end
    meta.update({k: v for k, v in (("title", doc.title), ("date", doc.date)) if v})
    if p.row:
        meta["table"] = p.row
    return meta


def read_guidelines(path: Path, tally: Tally, encoding: str | None = None, max_chars: int = 800,
                    overlap_chars: int = 100, language: str | None = None,
                    max_file_mb: float = DEFAULT_MAX_MB) -> Iterator[Record]:
    """Guideline / consensus / textbook passages cut by structure, with provenance.

    Reads .txt .md .docx .hwp .hwpx .html .htm .pdf (:func:`medtune.documents.read_document`) and
    JSON / JSONL documents (``text``, optional ``id``/``title``/``source``/``date``); any other file
    under ``path``, and a file that cannot be read (encrypted, no text layer, too large, a zip bomb),
    is a reject naming the file and why. Passages follow :func:`medtune.documents.passages`.

    Fields written: ``text``; ``meta.source_file``, ``doc_id``, ``passage_id``, ``char_span`` (into
    the text of a .txt/.md/JSON document; None for other formats), ``language`` (detected unless
    given), ``format``, ``section`` (heading path), ``page`` (None where the format has no pages),
    ``page_end`` (when it differs), ``table`` (``{header, cells}`` of a table-row passage),
    ``title``/``date`` (the file's own, or the JSON record's), ``source``.
    """
    for file in _source_files(path, GUIDELINE_SUFFIXES, tally, "guideline"):
        if file.suffix.lower() in (".json", ".jsonl"):
            docs = list(_json_docs(file, path, encoding, tally))
        else:
            doc = _document(file, tally, encoding, max_file_mb)
            docs = [(_doc_id(file, path), doc, {})] if doc else []
        for doc_id, doc, extra in docs:
            for k, p in enumerate(passages(doc, max_chars, overlap_chars)):
                tally.keep()
                meta = _passage_meta(file, doc_id, k, doc, p, language or detect_language(p.text))
                yield Record(id=f"{doc_id}#p{k}", kind="passage", text=p.text, meta={**meta, **extra})


# ---------------------------------------------------------------- knowledge base


def _mongo_plain(value):
    """Unwrap MongoDB extended JSON (``{"$oid": ...}``, ``{"$date": ...}``, ``{"$numberInt": ...}``)."""
    if isinstance(value, dict) and len(value) == 1:
        (k, v), = value.items()
        if k.startswith("$"):
            return _mongo_plain(v)
    return value


def _kb_fields(item: dict, file: Path, where: str, tally: Tally) -> dict:
    """Clean field values: strings (HTML stripped) or lists of strings; other shapes are rejected per field."""
    fields = {}
    for key, raw in item.items():
        value = _mongo_plain(raw)
        if isinstance(value, str):
            value = strip_html(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            value = [strip_html(str(v)) for v in value if str(v).strip()]
        elif value is None:
            continue
        else:
            tally.rejects.append(Reject(str(file), f"{where} field {key!r}",
                                        f"field is a {type(value).__name__}, expected a string or a list of strings",
                                        key, str(value)[:120], tally.step))
            tally.dropped["field of unsupported type"] += 1
            continue
        if value:
            fields[key] = value
    return fields


KB_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", *SPREADSHEET_SUFFIXES, *DOCUMENT_SUFFIXES)


def _table_entries(file: Path, root: Path, tally: Tally, max_file_mb: float,
                   language: str | None) -> Iterator[Record]:
    """One kb entry per table row of a document: the first cell is the name, the other cells are
    fields named by their column header."""
    doc = _document(file, tally, None, max_file_mb)
    if doc is None:
        return
    rows = [b for b in doc.blocks if b.kind == "row"]
    if not rows:
        tally.drop("no table in the document (a kb source reads table rows)", file, "<file>")
    for k, b in enumerate(rows):
        fields = {h or f"column {i + 1}": c for i, (h, c) in enumerate(zip(b.header, b.cells)) if i and c}
        if not b.cells[0] or not fields:
            tally.drop("table row without a name (first cell) or values", file, f"row {k + 1}", b.text)
            continue
        doc_id = f"{_doc_id(file, root)}:row{k + 1}"
        meta = {"source_file": str(file), "doc_id": doc_id, "name": b.cells[0], "name_field": b.header[0],
                "language": language or detect_language(b.text), "format": doc.format, "section": list(b.section),
                "page": b.page, "table": {"header": list(b.header), "cells": list(b.cells)},
                **({"title": doc.title} if doc.title else {})}
        tally.keep()
        yield Record(id=doc_id, kind="kb", text=b.text, fields=fields, meta=meta)


def read_kb(path: Path, tally: Tally, encoding: str | None = None, name_field: str | None = None,
            language: str | None = None, max_file_mb: float = DEFAULT_MAX_MB, columns: dict[str, str] | None = None,
            item_separator: str | None = None) -> Iterator[Record]:
    """Knowledge-base entries (diseases, drugs) with arbitrary string or list fields.

    Accepts a JSON array, JSONL (including MongoDB-export lines with ``{"_id": {"$oid": ...}}``),
    CSV (one column per field), spreadsheets, and the tables of documents (.docx .hwp .hwpx .html
    .pdf ...: each row an entry named by its first cell, fields named by the column headers).
    HTML in values is stripped. An entry without a name is rejected; a field that is neither a
    string nor a list of strings is dropped and reported; any other file is rejected by name.
    ``columns`` renames columns to field names (``{indications: 适应病症}``: a table's own column read
    as the template field); with ``item_separator``, a string value holding it becomes a list of items
    (a spreadsheet cell ``高血压|心绞痛``).

    Fields written: ``fields`` (``_id`` removed); ``meta.source_file``, ``doc_id``
    (``<file>:<_id or record>``, ``<file>:row<k>`` for a table row), ``name``, ``language``; for a
    table row also ``table`` (``{header, cells}``), ``section``, ``page``, ``format``, ``title``.
    """
    for file in _source_files(path, KB_SUFFIXES, tally, "kb"):
        if file.suffix.lower() in DOCUMENT_SUFFIXES:
            for r in _table_entries(file, path, tally, max_file_mb, language):
                r.fields = _renamed(r.fields, columns, item_separator, r.meta["name_field"])
                yield r
            continue
        for _, where, item in _structured_items(file, encoding, tally):
            oid = _mongo_plain(item.get("_id"))
            fields = _kb_fields({k: v for k, v in item.items() if k != "_id"}, file, where, tally)
            fields = _renamed(fields, columns, item_separator, name_field)
            key = name_field or next((k for k in NAME_FIELDS if k in fields), None)
            name = fields.get(key) if key else None
            if not isinstance(name, str) or not name:
                tally.drop(f"no name field ({name_field or ', '.join(NAME_FIELDS[:3])}...)", file, where, str(item)[:120])
                continue
            doc_id = f"{_doc_id(file, path)}:{oid if isinstance(oid, (str, int)) else where.split()[-1]}"
            tally.keep()
            yield Record(id=doc_id, kind="kb", fields=fields,
                         meta={"source_file": str(file), "doc_id": doc_id, "name": name, "name_field": key,
                               "language": language or detect_language(" ".join(map(str, fields.values()))[:2000])})


def _renamed(fields: dict, columns: dict[str, str] | None, sep: str | None, name_field: str | None) -> dict:
    """``fields`` with ``columns`` ({field: column}) renamed and ``sep``-separated strings split into lists."""
    back = {column: field for field, column in (columns or {}).items()}
    out = {back.get(k, k): v for k, v in fields.items()}
    if sep:
        out = {k: [x.strip() for x in v.split(sep) if x.strip()] if isinstance(v, str) and sep in v and k != name_field else v
               for k, v in out.items()}
    return out


# ---------------------------------------------------------------- radiology reports
SECTIONS = {"examination": "examination", "exam": "examination", "history": "history", "clinical history": "history",
            "indication": "indication", "indications": "indication", "reason for exam": "indication",
            "technique": "technique", "comparison": "comparison", "comparisons": "comparison",
            "findings": "findings", "impression": "impression", "conclusion": "impression"}
_SECTION_LINE = re.compile(r"^\s*(" + "|".join(sorted(map(re.escape, SECTIONS), key=len, reverse=True)) + r")\s*(:|\s*$)\s*(.*)$", re.I)
_OTHER_HEADER = re.compile(r"^\s*([A-Z][A-Z /&-]{2,30}):\s*(.*)$")


def parse_report(text: str) -> dict[str, str]:
    """Sections of a free-text radiology report.

    Headers are recognised in any case, with or without a colon, in any order; text after the
    header on the same line and on following lines belongs to it; unknown ``UPPER CASE:`` headers
    and text before the first header go to ``other``. Redactions (``XXXX``, ``___``) are kept.

    Returns:
        ``{section: text}`` for the non-empty sections.
    """
    sections: dict[str, list[str]] = {}
    current = "other"
    for line in text.splitlines():
        m = _SECTION_LINE.match(line)
        if m:
            current, rest = SECTIONS[m.group(1).lower()], m.group(3)
        elif (o := _OTHER_HEADER.match(line)):
            current, rest = "other", f"{o.group(1)}: {o.group(2)}"
        else:
            rest = line
        if rest.strip():
            sections.setdefault(current, []).append(rest.strip())
    return {k: " ".join(v) for k, v in sections.items()}


def read_reports(path: Path, tally: Tally, encoding: str | None = None, language: str | None = None) -> Iterator[Record]:
    """Radiology reports from .txt files (one report each) or CSV (one row per report, one column per section).

    A report with neither FINDINGS nor IMPRESSION is rejected with that reason.

    Fields written: ``fields`` (sections), ``text`` (the report); ``meta.source_file``, ``doc_id``, ``language``.
    """
    for file in _files(path, (".txt", ".csv")):
        text, _ = read_text(file, encoding)
        if not text.strip():
            tally.drop("empty file", file)
            continue
        if file.suffix.lower() == ".csv":
            items = [(w, {SECTIONS.get(k.lower(), k.lower()): (v or "").strip() for k, v in row.items()})
                     for w, row in _rows(file, text, tally)]
        else:
            items = [("report", parse_report(text))]
        for where, sections in items:
            doc_id = f"{_doc_id(file, path)}" + (f":{sections.pop('id', '') or where.split()[-1]}" if where != "report" else "")
            sections = {k: v for k, v in sections.items() if v}
            if not sections.get("findings") and not sections.get("impression"):
                tally.drop("report has neither FINDINGS nor IMPRESSION", file, where)
                continue
            body = "\n".join(f"{k.upper()}: {v}" for k, v in sections.items())
            tally.keep()
            yield Record(id=doc_id, kind="report", text=body, fields=sections,
                         meta={"source_file": str(file), "doc_id": doc_id, "language": language or detect_language(body)})


# ---------------------------------------------------------------- AI Hub style QA tree
QUESTION_DIR = re.compile(r"^(1[._\s-]|.*(질문|question))", re.I)
ANSWER_DIR = re.compile(r"^(2[._\s-]|.*(답변|answer))", re.I)
ANSWER_PARTS = ("intro", "body", "conclusion")


def _file_id(path: Path) -> str:
    """The last run of digits in the file name (``Q_000123.json`` -> ``000123``), else the stem."""
    digits = re.findall(r"\d+", path.stem)
    return digits[-1] if digits else path.stem


def _join_answer(value) -> str | None:
    """An answer string, or a multi-part answer joined in order (intro, body, conclusion, then others)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        return "\n\n".join(p.strip() for p in value if isinstance(p, str) and p.strip()) or None
    if isinstance(value, dict):
        keys = [k for k in ANSWER_PARTS if k in value] + [k for k in value if k not in ANSWER_PARTS]
        return "\n\n".join(value[k].strip() for k in keys if isinstance(value[k], str) and value[k].strip()) or None
    return None


def _tree_items(root: Path, encoding: str | None, field: str, tally: Tally) -> dict[tuple[str, str], tuple[Path, object]]:
    """``{(relative dir, file id): (file, field value)}`` for every JSON file under ``root``."""
    out = {}
    for file in _files(root, (".json",)):
        text, _ = read_text(file, encoding)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            tally.drop("malformed JSON file", file, f"line {e.lineno}", e.msg)
            continue
        value = obj.get(field) if isinstance(obj, dict) else None
        if value is None:
            tally.drop(f"no `{field}` field", file, None, str(obj)[:120])
            continue
        key = (str(file.parent.relative_to(root)), _file_id(file))
        if key in out:
            tally.drop("duplicate file id in the same folder", file, None, f"also {out[key][0]}")
            continue
        out[key] = (file, value)
    return out


def read_qa_tree(path: Path, tally: Tally, encoding: str | None = None, question_field: str = "question",
                 answer_field: str = "answer", language: str | None = None) -> Iterator[Record]:
    """Question/answer pairs from an AI Hub style tree.

    ``path`` holds a question tree (a folder named like ``1.질문``) and an answer tree (``2.답변``)
    with the same relative sub-folders. A question is paired with the answer in the same relative
    folder whose file name carries the same id (its last run of digits) -- never with another
    answer of that folder. Multi-part answers (``{"intro", "body", "conclusion"}``) are joined in
    that order. Questions without an answer, and answers without a question, are reported.

    Fields written: ``messages`` (user, assistant); ``meta.source_file`` (the question file),
    ``answer_file``, ``doc_id`` (relative path + id), ``category`` (the relative folder), ``language``.

    Raises:
        DataFileError: the question or answer folder is missing.
    """
    path = Path(path)
    dirs = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    qdir = next((d for d in dirs if QUESTION_DIR.match(d.name)), None)
    adir = next((d for d in dirs if ANSWER_DIR.match(d.name) and d != qdir), None)
    if qdir is None or adir is None:
        raise DataFileError(f"{path}: expected a question folder (e.g. 1.질문) and an answer folder (e.g. 2.답변), "
                              f"found {[d.name for d in dirs]}")
    questions = _tree_items(qdir, encoding, question_field, tally)
    answers = _tree_items(adir, encoding, answer_field, tally)
    for key, (afile, _) in sorted(answers.items()):
        if key not in questions:
            tally.drop("answer without a question", afile, f"id {key[1]}")
    for key, (qfile, question) in sorted(questions.items()):
        if key not in answers:
            tally.drop("question without an answer", qfile, f"id {key[1]}")
            continue
        afile, raw_answer = answers[key]
        answer = _join_answer(raw_answer)
        if not isinstance(question, str) or not question.strip() or answer is None:
            tally.drop("empty question or answer", qfile, f"id {key[1]}")
            continue
        doc_id = f"{key[0]}/{key[1]}"
        messages, stripped = clean_turns([{"role": "user", "content": question.strip()}, {"role": "assistant", "content": answer}])
        if messages is None:
            tally.drop("a turn is empty once format tokens are removed", qfile, f"id {key[1]}", field="messages")
            continue
        tally.keep()
        yield Record(id=doc_id, kind="qa", messages=messages,
                     meta={"source_file": str(qfile), "answer_file": str(afile), "doc_id": doc_id, "category": key[0],
                           "language": language or detect_language(question + answer), **_fix_meta(tally, stripped)})


# ---------------------------------------------------------------- existing corpora
FORMAT_FIX = "format tokens stripped"


def clean_turns(messages: list[dict]) -> tuple[list[dict] | None, int]:
    """``(messages with model-format tokens (``</s>``, ``<|im_end|>``, ``[INST]`` ...) removed from every
    turn, number of tokens removed)``; the messages are None when a turn is left empty."""
    out, total = [], 0
    for m in messages:
        content, n = strip_format_tokens(m["content"])
        total += n
        if not content:
            return None, total
        out.append({**m, "content": content})
    return out, total


def _fix_meta(tally: Tally, n_tokens: int) -> dict:
    """Count a record whose format tokens were stripped (``tally.fixed``) and tag it for the audit."""
    if not n_tokens:
        return {}
    tally.fixed[FORMAT_FIX] += 1
    return {"format_tokens_stripped": n_tokens}


def read_corpus(path: Path, tally: Tally, encoding: str | None = None, columns: dict[str, str] | None = None,
                language: str | None = None) -> Iterator[Record]:
    """Existing QA / instruction data (Alpaca, ShareGPT, ``messages``, common question/answer field
    names such as 问/答 or question/answer, column-mapped CSV/JSONL; JSONL saved as ``.txt`` too).

    Model-format tokens are stripped from every turn (records counted in ``tally.fixed``, tokens in
    ``meta.format_tokens_stripped``). A file none of
    whose records is in a known form gets one more reject naming the fields seen and the
    ``columns:`` mapping to add.

    Fields written: ``messages``; ``meta.source_file``, ``doc_id`` (``<file>:<line or record>``), ``language``.
    """
    kept: dict[Path, int] = {}
    unknown: dict[Path, set] = {}
    for file, where, item in _structured_items(path, encoding, tally, (".json", ".jsonl", ".csv", ".tsv", ".txt", *SPREADSHEET_SUFFIXES)):
        kept.setdefault(file, 0)
        try:
            messages = record_to_messages(item, columns)
        except RecordError as e:
            tally.drop("not a QA record", file, where, str(e), e.field)
            unknown.setdefault(file, set()).update(map(str, item))
            continue
        messages, stripped = clean_turns(messages)
        if messages is None:
            tally.drop("a turn is empty once format tokens are removed", file, where, str(item)[:200], "messages")
            continue
        doc_id = f"{_doc_id(file, path)}:{where.split()[-1]}"
        kept[file] += 1
        tally.keep()
        yield Record(id=doc_id, kind="qa", messages=messages,
                     meta={"source_file": str(file), "doc_id": doc_id, **_fix_meta(tally, stripped),
                           "language": language or detect_language(" ".join(m["content"] for m in messages)[:2000])})
    for file, fields in unknown.items():
        if not kept.get(file):
            tally.rejects.append(Reject(str(file), "<file>", f"no record is a QA record; {columns_hint(fields)}",
                                        "<file>", None, tally.step))


# ---------------------------------------------------------------- labelled red-flag messages
def read_labelled(path: Path, tally: Tally, encoding: str | None = None, language: str | None = None) -> Iterator[Record]:
    """Red-flag-labelled patient messages (``medtune/safety/data/LABELS.md``): JSONL/JSON/CSV records
    ``{"id", "lang", "text" | "messages", "expected": [categories], "type"}``.

    A file in the development or test set (``medtune/safety/data/dev/``, ``medtune/safety/data/test/``,
    or any folder named ``heldout``) is refused: the safety measures are reported on them, and
    training on them would leak (:func:`medtune.safety.labelled.is_eval_file`).

    Fields written: ``text`` (single message) or ``messages`` (ending with a user turn);
    ``meta.source_file``, ``doc_id`` (``<file>:<id or line>``), ``language``, ``expected``, ``label_type``.

    Raises:
        DataFileError: a development or test file, or a source that cannot be read.
    """
    from medtune.safety.labelled import is_eval_file

    for file in _files(path, (".json", ".jsonl", ".csv", ".tsv")):
        if is_eval_file(file):
            raise DataFileError(f"{file}: a held-out (development or test) file; train on "
                                "medtune/safety/data/train_*.jsonl (or your own labelled file) instead")
    for file, where, item in _structured_items(path, encoding, tally):
        expected, text, messages = item.get("expected"), item.get("text"), item.get("messages")
        if not isinstance(expected, list) or not all(isinstance(c, str) for c in expected):
            tally.drop("expected must be a list of red-flag categories ([] for none)", file, where, str(item)[:200])
            continue
        if not (isinstance(text, str) and text.strip()) and not (isinstance(messages, list) and messages
                                                                  and messages[-1].get("role") == "user"):
            tally.drop("needs text, or messages ending with a user turn", file, where, str(item)[:200])
            continue
        doc_id = f"{_doc_id(file, path)}:{item.get('id') or where.split()[-1]}"
        lang = language or item.get("lang") or detect_language(text or messages[-1].get("content", ""), default="en")
        tally.keep()
        yield Record(id=doc_id, kind="labelled", text=text if isinstance(text, str) else "",
                     messages=None if isinstance(text, str) and text.strip() else messages,
                     meta={"source_file": str(file), "doc_id": doc_id, "language": lang, "expected": expected,
                           "label_type": item.get("type") or ("emergency" if expected else "benign")})
