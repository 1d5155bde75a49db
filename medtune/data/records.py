"""The one record type every data step reads and writes, the per-step tally, and text helpers.

A :class:`Record` is a source unit (a guideline passage, a knowledge-base entry, a radiology
report) or a training example (``messages``); ``meta`` carries provenance from the source file
to the output line. A :class:`Tally` counts what a step kept and why it dropped the rest, and
keeps located rejects (file, line/record, reason) for the rejects file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import DataFileError
from medtune.io import Reject, write_rejects
from medtune.text import detect_language, strip_html  # noqa: F401  (re-exported for the data steps)


DataSourceError = DataFileError  # one "file cannot be read" error (medtune.errors); old name kept for imports


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


COUNTS = {  # what a step counts besides seen / kept, per reason: the columns of the count table
    "dropped": "dropped",
    "fixed": "fixed (kept, repaired)",
    "cut": "cut at a length limit (kept)",
    "skipped": "read, not used",
    "not_returned": "asked, not returned by the teacher",
}


@dataclass
class Tally:
    """Counts of one step: records in, kept, dropped per reason, plus located rejects.

    Besides ``dropped``, per reason: ``fixed`` (records repaired and kept, e.g. format tokens stripped),
    ``cut`` (kept, but the teacher's reply reached its ``max_tokens``), ``skipped`` (read but not used by
    the step) and ``not_returned`` (items asked of the teacher that its reply did not contain).
    """

    step: str
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    rejects: list[Reject] = field(default_factory=list)
    fixed: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    not_returned: Counter = field(default_factory=Counter)

    def keep(self) -> None:
        self.seen += 1
        self.kept += 1

    def drop(self, reason: str, file: str | Path | None = None, where: str | int | None = None,
             detail: str = "", field: str = "") -> None:
        """Count a drop; with ``file`` it is also kept as a located reject (``field``: the offending one)."""
        self.seen += 1
        self.dropped[reason] += 1
        if file is not None:
            self.rejects.append(Reject(str(file), str(where or ""), reason, field, record=detail[:300], step=self.step))

    def reject(self, r: Reject) -> None:
        """Count a reject produced by :mod:`medtune.io` (a bad line or record)."""
        self.drop(r.reason, r.file, r.where, str(r.record)[:300], r.field)

    def skipped_files(self) -> list[tuple[str, str]]:
        """``(file, reason)`` of every file this step did not read at all (rejects at ``<file>``)."""
        return [(r.file, r.reason) for r in self.rejects if r.where == "<file>"]

    def summary(self) -> dict:
        """``{"seen", "kept", "dropped": {reason: n}, "fixed": {...}, "cut": {...}, "skipped": {...},
        "not_returned": {...}}``: the step's row of the count table (:func:`count_rows`)."""
        return {"seen": self.seen, "kept": self.kept, **{k: dict(getattr(self, k)) for k in COUNTS}}


def count_rows(steps: dict[str, dict]) -> list[list[str]]:
    """The count table of a build, one source for the printed summary, ``stats.json`` and the data card.

    Args:
        steps: ``{step: Tally.summary()}`` as stored under ``stats.json`` ``steps``.

    Returns:
        Rows ``[step, seen, kept, dropped, fixed, cut, skipped, not returned]``; a count cell is
        ``"n (reason n; ...)"`` or ``""``. The header is ``["step", "seen", "kept", *COUNTS.values()]``.
    """
    def cell(reasons: dict) -> str:
        total = sum(reasons.values())
        return f"{total} (" + "; ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])) + ")" if total else ""

    return [[step, str(v["seen"]), str(v["kept"]), *(cell(v.get(k) or {}) for k in COUNTS)] for step, v in steps.items()]


def save_rejects(tallies: list[Tally], path: Path) -> int:
    """Write every tally's rejects to ``path`` as JSONL; returns the number written."""
    return write_rejects((r for t in tallies for r in t.rejects), path)
