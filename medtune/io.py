"""Files and records every stage shares: decoding, JSON/JSONL/CSV rows, records -> messages,
located rejects, and the seeded held-out split.

- :func:`read_text` decodes any user text file the same way (UTF-8 with or without BOM, else
  GB18030 / CP949 / charset-normalizer detection; binary files are refused with the file name).
- :func:`read_rows` yields ``(where, record)`` from CSV/TSV, .xlsx/.xls (:func:`spreadsheet_rows`), JSONL (any suffix, ``.txt`` too),
  a JSON array, one JSON object, or a JSON object of records keyed by id; bad lines come out as
  :class:`Reject` so one bad line never stops a run.
- :func:`record_to_messages` turns one record in any supported form into validated ``messages``.
- :class:`Reject` is the one reject format; :func:`write_rejects` writes them as JSONL.
- :func:`held_out_split` is the seeded split shared by training and held-out evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from medtune.errors import DataFileError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                  "chatgpt": "assistant", "system": "system"}
CANDIDATE_ENCODINGS = ["utf_8", "gb18030", "cp949"]


# Fields that name a knowledge-base entry (drug, disease), in the order they are looked for.
NAME_FIELDS = ("name", "title", "drug_name", "disease", "名称", "药品名称", "疾病名称", "药品", "疾病", "이름", "약품명", "질병명")


class RecordError(ValueError):
    """A record that cannot be used; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass
class Reject:
    """One rejected record or line, as saved to ``rejects.jsonl``.

    Attributes:
        file: the source file.
        where: location in it: ``"line 3"``, ``"record 2"``, ``"key K"``, ``"id X"``.
        reason: why it was rejected (short, groupable).
        field: the offending field (``"<line>"`` for an unparsable line, ``"<record>"`` for a
            record that is not an object), or ``""``.
        record: the record or an excerpt of it, for fixing the file.
        step: the pipeline step that rejected it (data build), or ``""``.
    """

    file: str
    where: str
    reason: str
    field: str = ""
    record: object = None
    step: str = ""

    @property
    def line(self) -> int | None:
        """The line or record number from ``where`` (``None`` for other locators)."""
        m = re.fullmatch(r"(?:line|record) (\d+).*", str(self.where))
        return int(m.group(1)) if m else None


def write_rejects(rejects: Iterable[Reject], path: Path) -> int:
    """Write rejects to ``path`` as JSONL (``file, where, reason, field, record, step``); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps(asdict(r), ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


# ----------------------------------------------------------------------------- decoding


def _decode_per_line(path: Path, raw: bytes, encodings: list[str]) -> str:
    lines = []
    for no, line in enumerate(raw.splitlines(keepends=True), 1):
        for enc in encodings:
            try:
                lines.append(line.decode(enc))
                break
            except (UnicodeDecodeError, LookupError):
                continue
        else:
            raise DataFileError(f"{path}:{no}: line is not valid {' or '.join(encodings)}; pass the file's "
                                f"encoding(s), tried in order per line: --encoding utf-8,gb18030 (eval mcq, eval fact) "
                                f"or encoding: utf-8,gb18030 on a data source")
    return "".join(lines).removeprefix("\ufeff")


def _refuse_mixed(path: Path, raw: bytes) -> None:
    """Raise when some lines are non-ASCII UTF-8 and others are not UTF-8: detection on the whole
    file would silently garble one of the two kinds."""
    bad, utf8_non_ascii = None, False
    for no, line in enumerate(raw.splitlines(), 1):
        try:
            line.decode("utf-8")
            utf8_non_ascii = utf8_non_ascii or not line.isascii()
        except UnicodeDecodeError:
            bad = bad or no
        if bad and utf8_non_ascii:
            raise DataFileError(f"{path}:{bad}: line is not valid utf-8 while other lines are (mixed encodings); "
                                "pass the encodings to try per line: --encoding utf-8,gb18030 (eval mcq, eval fact) "
                                "or encoding: utf-8,gb18030 on a data source")


def read_text(path: Path | str, encoding: str | list[str] | None = None) -> tuple[str, str]:
    """Decode a user text file.

    Args:
        path: the file.
        encoding: a forced encoding; a list (or comma-separated string) is tried per line, in
            order (mixed-encoding files); None: UTF-8 (BOM stripped), else detection restricted
            to UTF-8 / GB18030 / CP949 first (short CJK files are otherwise often taken for
            Big5), then charset-normalizer unrestricted.

    Returns:
        ``(text, encoding_used)``.

    Raises:
        DataFileError: missing file, binary content (NUL bytes, e.g. a spreadsheet or archive),
            or a file that cannot be decoded; the message names the file and what to pass.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    raw = path.read_bytes()
    if isinstance(encoding, str) and "," in encoding:
        encoding = [e.strip() for e in encoding.split(",") if e.strip()]
    if isinstance(encoding, list):
        return _decode_per_line(path, raw, encoding), ",".join(encoding)
    if encoding:
        try:
            return raw.decode(encoding).removeprefix("\ufeff"), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise DataFileError(f"{path}: cannot decode as {encoding!r} ({e}); fix the encoding or remove it to auto-detect") from None
    if path.suffix.lower() in SPREADSHEET_SUFFIXES or raw.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")) and \
            path.suffix.lower() not in (".txt", ".md"):
        raise DataFileError(f"{path}: a binary file (spreadsheet or archive), not text; give it as .xlsx/.xls (read as rows "
                            "wherever CSV is) or export it as CSV")
    if b"\x00" in raw[:65536] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFileError(f"{path}: looks like a binary file (NUL bytes), not text; "
                            "give a UTF-8/GB18030/CP949 text, JSONL or CSV file")
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        _refuse_mixed(path, raw)
    from charset_normalizer import from_bytes

    best = from_bytes(raw, cp_isolation=CANDIDATE_ENCODINGS).best() or from_bytes(raw).best()
    if best is None:
        raise DataFileError(f"{path}: cannot detect the text encoding; pass it (e.g. gb18030, cp949)")
    return str(best), best.encoding


# ----------------------------------------------------------------------------- rows


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, dict | Reject]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {n}", Reject(str(path), f"line {n}", "malformed JSON line", "<line>",
                                      f"{e.msg} at column {e.colno}: {line[:200]}")
            continue
        yield f"line {n}", obj if isinstance(obj, dict) else Reject(
            str(path), f"line {n}", "record is not a JSON object", "<record>", obj)


def _json_rows(path: Path, text: str) -> Iterator[tuple[str, dict | Reject]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        yield f"line {e.lineno}", Reject(str(path), f"line {e.lineno}", "malformed JSON file", "<file>",
                                         f"{e.msg} at column {e.colno}")
        return
    if isinstance(data, dict) and len(data) > 1 and all(isinstance(v, dict) for v in data.values()):
        for key, item in data.items():  # an object of records keyed by id (PubMedQA)
            yield f"key {key}", {**item, "_key": str(key)}
        return
    for i, item in enumerate(data if isinstance(data, list) else [data], 1):
        yield f"record {i}", item if isinstance(item, dict) else Reject(
            str(path), f"record {i}", "record is not a JSON object", "<record>", item)


def _csv_rows(path: Path, text: str) -> Iterator[tuple[str, dict | Reject]]:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if not reader.fieldnames:
        yield "line 1", Reject(str(path), "line 1", "CSV file has no header row", "<file>")
        return
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        if None in row:
            yield f"line {reader.line_num}", Reject(str(path), f"line {reader.line_num}",
                                                    "CSV row has more cells than the header", "<line>", row[None])
            continue
        yield f"line {reader.line_num}", {k.strip(): (v.strip() if isinstance(v, str) else v)
                                          for k, v in row.items() if k is not None}


def looks_like_jsonl(text: str) -> bool:
    """True when the first non-empty line is a JSON object and more lines follow."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict) and len(lines) > 1
    except json.JSONDecodeError:
        return False


def parse_rows(path: Path, text: str) -> Iterator[tuple[str, dict | Reject]]:
    """``(where, record)`` for already-decoded ``text`` of ``path``; the form follows the suffix and content."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_rows(Path(path), text)
    if suffix == ".jsonl" or (not text.lstrip().startswith("[") and looks_like_jsonl(text)):
        return _jsonl_rows(Path(path), text)
    return _json_rows(Path(path), text)


SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls")


def _cell(value: object) -> str:
    """A spreadsheet cell as the text a CSV export would hold (``3.0`` -> ``"3"``, dates ISO)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value).strip()


def _sheet_values(path: Path) -> list[tuple]:
    """Rows of the first worksheet as tuples (openpyxl for .xlsx/.xlsm, xlrd for .xls)."""
    if path.suffix.lower() == ".xls":
        try:
            import xlrd
        except ImportError:
            raise DataFileError(f"{path}: reading .xls needs xlrd: pip install xlrd (or save the sheet as .xlsx or CSV)") from None
        sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
        return [tuple(sheet.row_values(i)) for i in range(sheet.nrows)]
    try:
        import openpyxl
    except ImportError:
        raise DataFileError(f"{path}: reading .xlsx needs openpyxl: pip install openpyxl (or save the sheet as CSV)") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException: all "not a workbook"
        raise DataFileError(f"{path}: not a readable .xlsx workbook ({type(e).__name__}: {e})") from None
    try:
        return [tuple(r) for r in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()


def spreadsheet_rows(path: Path | str) -> Iterator[tuple[str, dict | Reject]]:
    """``(where, record)`` of the first sheet of a .xlsx/.xls file: the first row is the header,
    ``where`` is ``"row N"`` (1-based, as the spreadsheet numbers it); empty rows are skipped.

    Raises:
        DataFileError: the reader library is missing (with the ``pip install`` hint) or the file is not a workbook.
    """
    path = Path(path)
    rows = _sheet_values(path)
    if not rows or not any(_cell(c) for c in rows[0]):
        yield "row 1", Reject(str(path), "row 1", "spreadsheet has no header row", "<file>")
        return
    header = [_cell(c) for c in rows[0]]
    for n, row in enumerate(rows[1:], 2):
        cells = [_cell(c) for c in row]
        if not any(cells):
            continue
        if any(cells[len(header):]) or any(c and not h for h, c in zip(header, cells)):
            yield f"row {n}", Reject(str(path), f"row {n}", "row has cells outside the header's columns", "<line>", cells)
            continue
        yield f"row {n}", {h: c for h, c in zip(header, cells) if h}


def read_rows(path: Path | str, encoding: str | list[str] | None = None) -> Iterator[tuple[str, dict | Reject]]:
    """Yield ``(where, record)`` from a CSV/TSV, .xlsx/.xls, JSONL (any suffix), JSON array/object file.

    ``where`` is ``"line N"`` (CSV/JSONL, 1-based), ``"record N"`` (JSON array) or ``"key K"``
    (JSON object keyed by id; the key is stored as ``record["_key"]``). Unparsable lines and
    non-object records are yielded as :class:`Reject`.

    Raises:
        DataFileError: the file is missing, empty, binary or undecodable.
    """
    if Path(path).suffix.lower() in SPREADSHEET_SUFFIXES:
        yield from spreadsheet_rows(path)
        return
    text, _ = read_text(path, encoding)
    if not text.strip():
        raise DataFileError(f"{path}: file is empty")
    yield from parse_rows(Path(path), text)


# ----------------------------------------------------------------------------- messages


def _text(record: dict, key: str, required: bool) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RecordError(key, "missing or empty")
        return ""
    if not isinstance(value, (str, int, float)):
        raise RecordError(key, f"must be a string, got {type(value).__name__}")
    return str(value).strip()


_INLINE_TURN = re.compile(r"<\s*(user|human|bot|assistant|gpt)\s*>\s*[:：]?", re.I)


def split_inline_turns(text: str) -> list[dict] | None:
    """Turns written inline as ``<user>: ... <bot>: ... <user>: ...`` (Huatuo, BELLE exports).

    Returns:
        ``[{"role", "content"}, ...]`` alternating user/assistant and ending with a user turn,
        or None when ``text`` has no ``<bot>`` marker (a single turn) or the turns do not alternate.
    """
    marks = list(_INLINE_TURN.finditer(text))
    if not any(m.group(1).lower() in ("bot", "assistant", "gpt") for m in marks):
        return None
    lead = text[:marks[0].start()].strip()
    turns = [{"role": "user" if m.group(1).lower() in ("user", "human") else "assistant",
              "content": text[m.end():(marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip()}
             for i, m in enumerate(marks)]
    if lead:
        turns[0]["content"] = f"{lead}\n{turns[0]['content']}".strip() if turns[0]["role"] == "user" else turns[0]["content"]
    roles = [t["role"] for t in turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2) or roles[-1] != "user" \
            or not all(t["content"] for t in turns):
        return None
    return turns


def alpaca_to_messages(record: dict) -> list[dict]:
    """Alpaca ``instruction``/``input``/``output`` (+ optional ``system``, ``history``) to messages.

    ``history`` is a list of earlier ``[user, assistant]`` pairs, as in LLaMA-Factory's Alpaca form.
    The user turn is ``instruction`` followed by a blank line and ``input`` when present. An
    ``instruction`` that carries earlier turns inline (``<user>: ... <bot>: ... <user>: ...``,
    Huatuo style) becomes those turns (:func:`split_inline_turns`).
    """
    instruction, extra, output = _text(record, "instruction", True), _text(record, "input", False), _text(record, "output", True)
    messages = [{"role": "system", "content": s}] if (s := _text(record, "system", False)) else []
    for j, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise RecordError(f"history[{j}]", "must be a [user, assistant] pair of non-empty strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if extra else instruction
    inline = split_inline_turns(user)
    if inline:
        return messages + inline + [{"role": "assistant", "content": output}]
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def validate_messages(messages: object) -> list[dict]:
    """Check a ``messages`` list (ShareGPT ``from``/``value`` turns accepted): optional leading
    system, then user/assistant alternating, ending with assistant.

    Raises:
        RecordError: naming ``messages[i].role`` / ``messages[i].content`` and what is wrong.
    """
    if not isinstance(messages, list) or not messages:
        raise RecordError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}]", "must be an object with role and content")
        role = m.get("role") or SHAREGPT_ROLES.get(str(m.get("from", "")).lower())
        content = m["content"] if "content" in m else m.get("value")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise RecordError(f"messages[{i}].content", "missing or empty")
        out.append({"role": role, "content": content})
    body = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            idx = i + (len(out) - len(body))
            raise RecordError(f"messages[{idx}].role", f"expected {want!r} (turns must alternate user/assistant after an optional leading system)")
    if not body or body[-1]["role"] != "assistant":
        raise RecordError("messages", "conversation must end with an assistant turn")
    return out


def _mapped(record: dict, columns: dict[str, str]) -> list[dict]:
    if "question" not in columns or "answer" not in columns:
        raise RecordError("<columns>", f"`columns` must map question and answer (got {columns})")
    msgs = [{"role": "system", "content": str(record[columns["system"]])}] if record.get(columns.get("system", "")) else []
    return validate_messages(msgs + [{"role": "user", "content": _text(record, columns["question"], True)},
                                     {"role": "assistant", "content": _text(record, columns["answer"], True)}])


# Question/answer field names recognised without a column map, in order of preference.
QA_FIELD_PAIRS = [("问", "答"), ("问题", "回答"), ("问题", "答案"), ("提问", "回答"), ("질문", "답변"), ("질문", "대답"),
                  ("question", "answer"), ("q", "a"), ("prompt", "response"), ("prompt", "completion"),
                  ("query", "response"), ("input", "output"), ("instruction", "response")]


def qa_columns(record: dict) -> dict[str, str] | None:
    """``{question: key, answer: key}`` for a record using one of :data:`QA_FIELD_PAIRS` (case-insensitive), else None."""
    keys = {str(k).strip().lower(): k for k in record}
    for q, a in QA_FIELD_PAIRS:
        if q in keys and a in keys:
            return {"question": keys[q], "answer": keys[a]}
    return None


def columns_hint(fields: Iterable[str]) -> str:
    """A one-line hint naming the fields seen and how to map them with ``columns:``."""
    fields = sorted(map(str, fields))
    q = fields[0] if fields else "QUESTION_FIELD"
    a = fields[1] if len(fields) > 1 else "ANSWER_FIELD"
    return (f"fields seen: {fields[:12]}; expected messages, conversations, instruction/output or a question/answer "
            f"pair ({', '.join('/'.join(p) for p in QA_FIELD_PAIRS[:8])} ...); map yours in the source with "
            f"`columns: {{question: {q}, answer: {a}}}`")


def record_to_messages(record: dict, columns: dict[str, str] | None = None) -> list[dict]:
    """Messages of one record in any supported form.

    Forms: ``messages`` (role/content) or ShareGPT ``conversations`` (from/value); Alpaca
    ``instruction``/``input``/``output`` with optional ``system`` and ``history`` (earlier turns
    inline in ``instruction`` as ``<user>: ... <bot>: ...`` too); a question/answer pair with a
    common field name (:data:`QA_FIELD_PAIRS`: 问/答, 问题/回答, 질문/답변, question/answer, Q/A,
    prompt/response, input/output ...); or ``columns`` mapping ``question``/``answer``/``system``
    to the record's own keys (e.g. ``{question: 问题, answer: 回答}``).

    Raises:
        RecordError: the record is in no known form or is invalid (names the field).
    """
    if columns:
        return _mapped(record, columns)
    if "messages" in record or "conversations" in record:
        return validate_messages(record.get("messages") or record.get("conversations"))
    if "instruction" in record and "output" in record:
        return alpaca_to_messages(record)
    if (found := qa_columns(record)):
        return _mapped(record, found)
    if "instruction" in record or "output" in record:
        return alpaca_to_messages(record)
    raise RecordError("<record>", f"unknown record form ({columns_hint(record)})")


# ----------------------------------------------------------------------------- splits


def held_out_split(n: int, percentage: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``n`` items into ``(train_indices, held_out_indices)``.

    ``max(1, round(n * percentage / 100))`` items are held out (none when ``percentage`` <= 0);
    the train indices keep their original order. Training and held-out evaluation both call
    this, so they agree on which examples were never trained on.
    """
    if percentage <= 0 or n == 0:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, round(n * percentage / 100))
    return sorted(order[k:]), order[:k]
