"""Read-only views of what the stages wrote: the data stage's records (with provenance), rejects and
data card, and the eval stage's HTML reports. Every path shown here is inside the work dir."""

from __future__ import annotations

import html
import json
from itertools import islice
from pathlib import Path
from typing import Iterator

RECORD_COLUMNS = ["split", "language", "generator", "source_file", "section", "page", "question", "answer"]
REJECT_COLUMNS = ["step", "file", "where", "reason", "record"]
SHOWN_CHARS = 300  # per cell


def _rows(path: Path) -> Iterator[dict]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _section(meta: dict) -> str:
    """Where in the source the record comes from: the heading path (documents), the knowledge-base field,
    else the passage with its character span, the QA-tree category or the record id."""
    heading = " › ".join(str(h) for h in meta.get("section") or [] if h)
    field = f"field {meta['field']}" if meta.get("field") else ""
    if heading or field:
        return " · ".join(p for p in (heading, field) if p)
    if meta.get("passage_id"):
        span = meta.get("char_span")
        return meta["passage_id"] + (f" chars {span[0]}-{span[1]}" if span else "")
    return str(meta.get("category") or meta.get("doc_id") or "")


def _page(meta: dict) -> str:
    first, last = meta.get("page"), meta.get("page_end")
    return "" if first is None else str(first) if last in (None, first) else f"{first}-{last}"


def _question_answer(row: dict) -> tuple[str, str]:
    if "messages" in row:
        users = [m["content"] for m in row["messages"] if m.get("role") == "user"]
        return (users[-1] if users else ""), (row["messages"][-1].get("content", "") if row["messages"] else "")
    return row.get("instruction", ""), row.get("output", "")


def record_row(split: str, row: dict) -> list[str]:
    """One line of the records table (columns :data:`RECORD_COLUMNS`), long texts cut to :data:`SHOWN_CHARS`."""
    meta = row.get("meta", {})
    q, a = _question_answer(row)
    return [split, str(meta.get("language", "")), str(meta.get("generator", "")), str(meta.get("source_file", "")),
            _section(meta), _page(meta), q[:SHOWN_CHARS], a[:SHOWN_CHARS]]


def records(data_dir: Path, language: str = "", generator: str = "", text: str = "",
            limit: int = 500) -> tuple[list[list[str]], int]:
    """Records of ``train.jsonl`` and ``validation.jsonl`` matching the filters (empty: any).

    Returns:
        ``(rows, matched)``: at most ``limit`` table rows and the number of records that matched.
    """
    needle, shown, matched = text.strip().lower(), [], 0
    for split in ("train", "validation"):
        for row in _rows(Path(data_dir) / f"{split}.jsonl"):
            meta = row.get("meta", {})
            if (language and meta.get("language") != language) or (generator and meta.get("generator") != generator):
                continue
            line = record_row(split, row)
            if needle and needle not in " ".join(line).lower():
                continue
            matched += 1
            if len(shown) < limit:
                shown.append(line)
    return shown, matched


def facets(data_dir: Path) -> tuple[list[str], list[str]]:
    """The languages and generators the data stage counted (``stats.json``), for the filters."""
    path = Path(data_dir) / "stats.json"
    if not path.is_file():
        return [], []
    stats = json.loads(path.read_text(encoding="utf-8"))
    return sorted(k for k in stats.get("languages", {}) if k), sorted(k for k in stats.get("generators", {}) if k)


def rejects(data_dir: Path, limit: int = 500) -> list[list[str]]:
    """The first ``limit`` rejects with step, file, line/record and reason."""
    return [[str(r.get(c, ""))[:SHOWN_CHARS] for c in REJECT_COLUMNS]
            for r in islice(_rows(Path(data_dir) / "rejects.jsonl"), limit)]


def data_card(data_dir: Path) -> str:
    """``DATA_CARD.md`` (sources, sizes, filters, the audit), or a note when the data is not built yet."""
    path = Path(data_dir) / "DATA_CARD.md"
    return path.read_text(encoding="utf-8") if path.is_file() else f"*No data built yet in {data_dir}.*"


def reports(workdir: Path, limit: int = 200) -> list[str]:
    """Eval reports (``report.html``) under the work dir, newest first, as paths relative to it."""
    found = sorted(islice(Path(workdir).rglob("report.html"), limit), key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p.relative_to(workdir)) for p in found]


def report_frame(path: Path | None, height: int = 760) -> str:
    """The report inside a sandboxed iframe (no scripts, no access to the page), or a note when there is none."""
    if path is None or not Path(path).is_file():
        return "<p><i>No report selected.</i></p>"
    body = html.escape(Path(path).read_text(encoding="utf-8"), quote=True)
    return (f'<iframe class="report" sandbox="" title="{html.escape(Path(path).parent.name)}" '
            f'style="width:100%;height:{height}px;border:1px solid #ccc" srcdoc="{body}"></iframe>')
