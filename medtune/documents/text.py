""".txt and .md: blocks with spans into the file's own text (headings by Markdown ``#`` or numbering)."""

from __future__ import annotations

import re
from pathlib import Path

from medtune.documents.model import FORMATS, Block, Document, DocumentError, finish
from medtune.io import read_text

_HEADING = re.compile(r"^(#{1,6}\s+\S.*|第[一二三四五六七八九十百\d]+[章节条部分].*|[0-9]+(\.[0-9]+)*[.)、]?\s+\S.{0,60}"
                      r"|[一二三四五六七八九十]+、.{1,60}|[IVX]+\.\s+\S.*)$")
ITEM = re.compile(r"^([-*•·]\s+|\(?\d{1,3}[.)）]\s*\S|[①-⑳]|\(\w\)\s|推荐意见\s*\d|권고\s*\d|Recommendation\s+\d)", re.I)
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
END_PUNCT = tuple(".。;；!?！？:：")


def heading_level(line: str) -> int | None:
    """Level of a heading line of plain text (None: not a heading). A numbered line ending like a
    sentence is a list item (a recommendation), not a heading."""
    if not _HEADING.match(line):
        return None
    if m := re.match(r"#+", line):
        return len(m.group())
    if line.endswith(END_PUNCT):
        return None
    if m := re.match(r"第.+?(章|节|条|部分)", line):
        return {"部分": 1, "章": 1, "节": 2, "条": 3}[m.group(1)]
    if m := re.match(r"\d+(?:\.\d+)*", line):
        return m.group().count(".") + 1
    return 1


def text_blocks(text: str) -> list[Block]:
    """Blocks of a plain-text or Markdown document with spans into ``text``: a blank line, a heading
    line or a list-item line ends a block; following lines continue it."""
    blocks: list[Block] = []
    cur: Block | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        lead = pos + len(line) - len(line.lstrip())
        level = heading_level(stripped) if stripped else None
        if not stripped or level is not None or ITEM.match(stripped):
            cur = None
        if level is not None:
            blocks.append(Block("heading", stripped.lstrip("#").strip(), level=level, start=lead, end=lead + len(stripped)))
        elif stripped and cur is None:
            cur = Block("item" if ITEM.match(stripped) else "paragraph", "", start=lead, end=lead + len(stripped))
            blocks.append(cur)
        elif stripped:
            cur.end = lead + len(stripped)
        pos += len(line)
    for b in blocks:
        if b.kind != "heading":
            b.text = text[b.start:b.end]
    return blocks


def read_text_file(path: Path, encoding: str | None) -> Document:
    text, _ = read_text(path, encoding)
    if not text.strip():
        raise DocumentError(path, "empty file")
    return finish(path, FORMATS[path.suffix.lower()], text_blocks(text), text)
