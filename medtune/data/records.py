"""The one record type every data step reads and writes, the per-step tally, and text helpers.

A :class:`Record` is a source unit (a guideline passage, a knowledge-base entry, a radiology
report) or a training example (``messages``); ``meta`` carries provenance from the source file
to the output line. A :class:`Tally` counts what a step kept and why it dropped the rest, and
keeps located rejects (file, line/record, reason) for the rejects file.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class DataSourceError(ValueError):
    """A source that cannot be read at all (missing, undecodable, wrong layout); names the file."""


@dataclass
class Record:
    """One unit of data.

    Attributes:
        id: stable id, ``<doc_id>`` or ``<doc_id>#p<k>`` for passages.
        kind: ``passage`` | ``kb`` | ``report`` | ``qa``.
        text: passage or report text (empty for kb / qa).
        fields: kb fields (``{name: str | list[str]}``) or report sections (``{section: str}``).
        messages: ``[{"role", "content"}, ...]`` for ``qa`` records.
        meta: provenance: ``source_file``, ``doc_id``, ``passage_id``, ``char_span`` [start, end),
            ``language``, ``generator``, ``teacher_model``, ``prompt_template_hash``, ``sensitive``.
    """

    id: str
    kind: str
    text: str = ""
    fields: dict = field(default_factory=dict)
    messages: list[dict] | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Tally:
    """Counts of one step: records in, kept, dropped per reason, plus located rejects."""

    step: str
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)

    def keep(self) -> None:
        self.seen += 1
        self.kept += 1

    def drop(self, reason: str, file: str | Path | None = None, where: str | int | None = None,
             detail: str = "") -> None:
        """Count a drop; with ``file`` it is also kept as a located reject."""
        self.seen += 1
        self.dropped[reason] += 1
        if file is not None:
            self.rejects.append({"step": self.step, "file": str(file), "where": where, "reason": reason,
                                 "detail": detail[:300]})

    def summary(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(self.dropped)}


def save_rejects(tallies: list[Tally], path: Path) -> int:
    """Write every tally's rejects to ``path`` as JSONL; returns the number written."""
    rows = [r for t in tallies for r in t.rejects]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return len(rows)


CANDIDATE_ENCODINGS = ["utf_8", "gb18030", "cp949"]


def read_text(path: Path, encoding: str | None = None) -> tuple[str, str]:
    """Decode a text file: forced ``encoding``, else UTF-8 (BOM stripped), else charset-normalizer.

    Detection is restricted to UTF-8 / GB18030 / CP949 first (short CJK files are otherwise
    often taken for Big5), then unrestricted.

    Returns:
        ``(text, encoding_used)``.

    Raises:
        DataSourceError: the file is missing, or cannot be decoded (with the forced encoding or any).
    """
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: file not found")
    raw = path.read_bytes()
    if encoding:
        try:
            return raw.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise DataSourceError(f"{path}: cannot decode as {encoding!r} ({e}); fix `encoding:` or remove it to auto-detect") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(raw, cp_isolation=CANDIDATE_ENCODINGS).best() or from_bytes(raw).best()
    if best is None:
        raise DataSourceError(f"{path}: cannot detect the text encoding; set `encoding:` (e.g. gb18030, cp949)")
    return str(best), best.encoding


_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """``ko`` / ``zh`` / ``en`` by script counts (Hangul, Han, Latin letters); ``unknown`` if none.

    Korean text may contain Hanja, so any substantial Hangul share wins over Han.
    """
    ko, zh, en = len(_HANGUL.findall(text)), len(_HAN.findall(text)), len(_LATIN.findall(text))
    if ko + zh + en == 0:
        return "unknown"
    if ko and ko >= 0.2 * (ko + zh):
        return "ko"
    if zh and zh * 3 >= en:
        return "zh"
    return "en" if en else "zh"


_TAG = re.compile(r"<[^>]+>")
_BR = re.compile(r"<\s*(br|/p|/li|/div|/h[1-6])\s*/?\s*>", re.I)


def strip_html(value: str) -> str:
    """Remove HTML tags and decode entities; line-breaking tags become newlines."""
    if "<" not in value and "&" not in value:
        return value.strip()
    text = html.unescape(_TAG.sub("", _BR.sub("\n", value)))
    return re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n", text)).strip()
