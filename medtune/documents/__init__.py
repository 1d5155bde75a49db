"""Documents -> sections: one reader for the guideline files a hospital keeps, in every format it keeps them.

:func:`read_document` turns a file into a :class:`Document`: an ordered list of :class:`Block`
(headings with their level, paragraphs, list items, table rows labelled with their header) with
the page each starts on where the format records one, and the file's own title and date.
:func:`passages` cuts it by structure for grounded QA and the retrieval index: a heading starts a
passage, a table row is a passage of its own ("drug: amoxicillin | adult dose: 500 mg | max daily
dose: 3 g"), a list item (a numbered recommendation) is never cut, and every passage carries its
section path and page (``doc › section path › p. N``: :func:`provenance_label`).

| suffix          | library (licence)                | why this one                                              | pages |
|-----------------|----------------------------------|-----------------------------------------------------------|-------|
| .txt .md        | :func:`medtune.io.read_text`     | one decoder for every text file (UTF-8/GB18030/CP949)     | --    |
| .docx           | python-docx (MIT)                | the reference OOXML reader: body order of paragraphs and tables, style names, core properties; also writes the test fixtures | Word's last rendered page breaks |
| .hwpx .hwp      | python-hwpx (Apache-2.0)         | the kept OWPML library (monthly releases); opens HWP 5 binaries into the same model (pyhwp is AGPL and unmaintained since 2020), refuses password/DRM files by flag, bounds inflation, and writes both formats for the tests | Hangul's line layout (vertical position resets) and page breaks |
| .html .htm      | trafilatura (Apache-2.0)         | main-content extraction that drops navigation, menus and footers (best F1 of the open extractors in Bevendorff et al. 2023, "An empirical comparison of web content extraction algorithms", SIGIR), keeps headings, lists and tables, reads title and date | --    |
| .pdf            | pdfplumber (MIT, on pdfminer.six) | ruled-table detection with cell text, per-character font size for headings; pypdf (already a dependency) for the bookmarks | the PDF page |

Heavy readers are the ``docs`` extra (``pip install 'medtune[docs]'``), imported lazily: a missing one
is a :class:`~medtune.errors.DocumentError` with that install hint. markitdown was considered and
not taken: its PDF path drops tables and pages, and it pulls many converters we do not use.

Safety: a file over ``max_bytes`` is refused before it is opened; a zip package (.docx, .hwpx)
whose directory declares more than ``max_bytes`` uncompressed, or a member compressed more than
:data:`MAX_ZIP_RATIO` : 1, is refused as a zip bomb before any member is read. Every reader does
one pass over the file's parts, so time is linear in its size. Encrypted files and PDFs without a
text layer are refused with the reason (OCR is not run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medtune.documents.model import (DEFAULT_MAX_MB, FORMATS, INSTALL_HINT, MAX_ZIP_RATIO, NO_TEXT_LAYER, OLE_MAGIC,
                                     SUFFIXES, TEXT_FORMATS, Block, Document, Section, check_size, check_zip, finish,
                                     table_blocks)
from medtune.documents.docx import read_docx
from medtune.documents.html import read_html
from medtune.documents.hwp import read_hwp
from medtune.documents.pdf import read_pdf
from medtune.documents.text import SENTENCE_END, read_text_file, text_blocks
from medtune.errors import DocumentError

__all__ = ["DEFAULT_MAX_MB", "FORMATS", "INSTALL_HINT", "MAX_ZIP_RATIO", "NO_TEXT_LAYER", "SUFFIXES", "TEXT_FORMATS",
           "Block", "Document", "DocumentError", "Passage", "Section", "check_size", "check_zip", "finish", "passages",
           "provenance_label", "read_document", "table_blocks", "text_blocks"]


def read_document(path: Path | str, max_bytes: int = int(DEFAULT_MAX_MB * 2**20), encoding: str | None = None) -> Document:
    """Read one file into a :class:`Document`.

    Args:
        path: a file whose suffix is one of :data:`SUFFIXES`.
        max_bytes: refuse a larger file, and a zip package declaring more uncompressed bytes.
        encoding: forced encoding of a .txt / .md / .html file (default: detect).

    Returns:
        The document (blocks in reading order, heading paths set, title/date where the file has them).

    Raises:
        DocumentError: unsupported suffix, too large, zip bomb, encrypted, no text layer, no text,
            damaged, or a reader library missing (with the install hint); ``reason`` says which.
        DataFileError: a text file that cannot be decoded.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DocumentError(path, f"unsupported file type {path.suffix or '(no suffix)'!r}: no reader takes it",
                            f"supported: {' '.join(SUFFIXES)}")
    check_size(path, max_bytes)
    if fmt in ("docx", "hwpx"):
        with open(path, "rb") as f:
            if f.read(8) == OLE_MAGIC:  # Word and Hangul keep a password-protected package in an OLE container
                raise DocumentError(path, f"encrypted: a password-protected {path.suffix} file",
                                    "save an unprotected copy and read that")
        check_zip(path, max_bytes)
    if fmt in TEXT_FORMATS:
        return read_text_file(path, encoding)
    if fmt == "docx":
        return read_docx(path)
    if fmt in ("hwpx", "hwp"):
        return read_hwp(path, fmt)
    if fmt == "html":
        return read_html(path, encoding)
    return read_pdf(path)


@dataclass
class Passage:
    """A span of :attr:`Document.text` cut by structure, with its provenance.

    Attributes:
        start, end: character span into the document text.
        text: ``document.text[start:end]``.
        section: heading path of the passage.
        page, page_end: first and last page it covers (None: no pages).
        row: ``{"header": [...], "cells": [...]}`` when the passage is one table row.
    """

    start: int
    end: int
    text: str
    section: tuple[str, ...]
    page: int | None
    page_end: int | None
    row: dict | None = None


def _windows(text: str, start: int, end: int, max_chars: int, overlap: int) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into windows of <= max_chars, ending at sentence ends when possible."""
    out = []
    while end - start > max_chars:
        cut = start + max_chars
        ends = [start + m.end() for m in SENTENCE_END.finditer(text[start:cut]) if m.end() > max_chars // 2]
        cut = ends[-1] if ends else cut
        out.append((start, cut))
        start = max(cut - overlap, start + 1)
    out.append((start, end))
    return [(s, e) for s, e in out if text[s:e].strip()]


def passages(doc: Document, max_chars: int = 800, overlap_chars: int = 100) -> list[Passage]:
    """Cut ``doc`` into passages that follow its structure.

    A heading starts a passage and stays with the text under it; paragraphs and list items of one
    section are packed greedily up to ``max_chars``; a table row is a passage of its own (its
    header labels inside); a list item longer than ``max_chars`` stays whole; only a paragraph
    longer than ``max_chars`` is cut, at sentence ends, into windows overlapping by ``overlap_chars``.
    Headings with no text under them before a table or the end are not passages of their own
    (they are in the rows' section path).

    Returns:
        Passages in document order.
    """
    out: list[Passage] = []
    cur: list[Block] = []

    def emit(blocks: list[Block], start: int | None = None, end: int | None = None) -> None:
        s = blocks[0].start if start is None else start
        e = blocks[-1].end if end is None else end
        pages = [b.page for b in blocks if b.page is not None]
        row = {"header": list(blocks[0].header), "cells": list(blocks[0].cells)} if blocks[0].kind == "row" else None
        out.append(Passage(s, e, doc.text[s:e], blocks[-1].section, pages[0] if pages else None,
                           pages[-1] if pages else None, row))

    def flush() -> None:
        if cur and any(b.kind != "heading" for b in cur):
            emit(cur)
        cur.clear()

    for b in doc.blocks:
        only_headings = all(c.kind == "heading" for c in cur)
        if b.kind == "row":
            flush() if not only_headings else cur.clear()
            emit([b])
        elif b.kind == "heading":
            if not only_headings:
                flush()
            cur.append(b)
        elif b.kind == "paragraph" and b.end - b.start > max_chars:
            head = cur[0].start if cur and only_headings and b.start - cur[0].start <= max_chars // 2 else b.start
            if head == b.start:
                flush()
            for s, e in _windows(doc.text, head, b.end, max_chars, overlap_chars):
                emit([*cur, b] if head != b.start and s == head else [b], s, e)
            cur.clear()
        else:
            if cur and not only_headings and b.end - cur[0].start > max_chars:
                flush()
            cur.append(b)
    flush()
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text or "").lower()


def provenance_label(title: str | None, source_file: str, section, page: int | None) -> str:
    """``"<doc> › <section path> › p. N"``: the document's title (else the file name), its heading
    path (the first heading dropped when it repeats the title) and the page, where known."""
    doc = title or Path(source_file).name
    path = list(section or [])
    if path and _norm(path[0]) == _norm(doc):
        path = path[1:]
    return " › ".join([doc, *path] + ([f"p. {page}"] if page else []))
