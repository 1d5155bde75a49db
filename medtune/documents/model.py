"""The document model every format reader fills: blocks, sections, the document; table rows with their
header; the size and zip-bomb checks run before a file is opened."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import DocumentError

FORMATS = {".txt": "text", ".md": "markdown", ".docx": "docx", ".hwpx": "hwpx", ".hwp": "hwp",
           ".html": "html", ".htm": "html", ".pdf": "pdf"}
SUFFIXES = tuple(FORMATS)
TEXT_FORMATS = ("text", "markdown")  # their passages' char spans point into the file itself
DEFAULT_MAX_MB = 100.0
MAX_ZIP_RATIO = 200
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
INSTALL_HINT = "pip install 'medtune[docs]'  (python-docx, python-hwpx, trafilatura, pdfplumber)"
NO_TEXT_LAYER = "no text layer: OCR is not run"


@dataclass
class Block:
    """One unit of a document, never cut across passages except a long ``paragraph``.

    Attributes:
        kind: ``heading`` | ``paragraph`` | ``item`` (list item, e.g. a numbered recommendation) | ``row``.
        text: the block's text; a row is ``"header 1: cell 1 | header 2: cell 2 | ..."``.
        level: heading level (0 = title, 1 = top heading).
        page: 1-based page the block starts on (None where the format has no pages).
        header, cells: a table row's column labels and values (None for other blocks).
        section: heading path above the block (headings include themselves); set by :func:`finish`.
        start, end: character span of ``text`` in :attr:`Document.text`.
    """

    kind: str
    text: str
    level: int = 0
    page: int | None = None
    header: tuple[str, ...] | None = None
    cells: tuple[str, ...] | None = None
    section: tuple[str, ...] = ()
    start: int = 0
    end: int = 0


@dataclass
class Section:
    """Consecutive blocks under one heading path (``heading_path`` () before the first heading)."""

    heading_path: tuple[str, ...]
    page: int | None
    blocks: list[Block]

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.blocks)

    @property
    def rows(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "row"]


@dataclass
class Document:
    """A read file: ``text`` (the file's text for .txt/.md, else the blocks joined by blank lines),
    its blocks in reading order, and the file's own ``title`` / ``date`` (ISO) where it has them."""

    path: Path
    format: str
    text: str
    blocks: list[Block]
    title: str | None = None
    date: str | None = None
    pages: int | None = None
    notes: dict = field(default_factory=dict)

    def sections(self) -> list[Section]:
        """The blocks grouped by heading path, in order."""
        out: list[Section] = []
        for b in self.blocks:
            if not out or out[-1].heading_path != b.section:
                out.append(Section(b.section, b.page, []))
            out[-1].blocks.append(b)
        return out


def finish(path: Path, fmt: str, blocks: list[Block], text: str | None = None, **meta) -> Document:
    """A :class:`Document` of ``blocks``: heading paths set; without ``text`` the blocks are joined by
    blank lines and their spans set into that text (with ``text`` the spans are already set)."""
    stack: list[tuple[int, str]] = []
    for b in blocks:
        if b.kind == "heading":
            stack = [(lv, t) for lv, t in stack if lv < b.level] + [(b.level, b.text)]
        b.section = tuple(t for _, t in stack)
    if text is None:
        parts, pos = [], 0
        for b in blocks:
            b.start, b.end = pos, pos + len(b.text)
            parts.append(b.text)
            pos = b.end + 2
        text = "\n\n".join(parts)
    if not blocks:
        raise DocumentError(path, "no text found", "the file holds no paragraph, heading or table text")
    if all(b.kind == "heading" for b in blocks):  # every line looked like a heading: it is the text
        for b in blocks:
            b.kind, b.section = "paragraph", ()
    return Document(Path(path), fmt, text, blocks, **meta)


def clean(text: str) -> str:
    return re.sub(r"[ \t\u00a0\u3000]+", " ", text.replace("\r", "")).strip()


def table_blocks(rows: list[list[str | None]], page: int | None = None,
                 header: tuple[str, ...] | None = None) -> list[Block]:
    """Blocks of one table: a row per block, each cell labelled with its column header.

    The first row is the header (empty header cells take the label on their left, as in a merged
    header cell) unless ``header`` is given (a table continued from the previous page); a cell
    left empty by a vertical merge (None) takes the value above it. A table of one row or one
    column is layout, not data: its cells become paragraphs.

    Args:
        rows: cell texts, row by row (None: covered by a merged cell).
        page: page of the table.
        header: column labels carried over from the table this one continues.

    Returns:
        ``row`` blocks (``header``, ``cells`` set), or ``paragraph`` blocks for a layout table.
    """
    rows = [[clean(c) if c is not None else None for c in r] for r in rows]
    rows = [r for r in rows if any(r)]
    width = max((len(r) for r in rows), default=0)
    if width < 2 or len(rows) + (header is not None) < 2:
        return [Block("paragraph", c, page=page) for r in rows for c in r if c]
    rows = [r + [None] * (width - len(r)) for r in rows]
    if header is None or len(header) != width:
        head, rows = rows[0], rows[1:]
        labels: list[str] = []
        for c in head:
            labels.append(c or (labels[-1] if labels else ""))
        header = tuple(labels)
    out, above = [], [None] * width
    for r in rows:
        cells = tuple(c if c is not None else (above[i] or "") for i, c in enumerate(r))
        above = list(cells)
        if tuple(cells) == header:
            continue  # a header row repeated on a new page
        parts = [f"{h}: {c}" if h and h != c else c for h, c in zip(header, cells) if c]
        if parts:
            out.append(Block("row", " | ".join(parts), page=page, header=header, cells=cells))
    return out


def check_size(path: Path, max_bytes: int) -> None:
    """Raise :class:`DocumentError` when ``path`` is larger than ``max_bytes``."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise DocumentError(path, f"file too large: {size / 2**20:.1f} MB > limit {max_bytes / 2**20:.1f} MB",
                            "raise max_file_mb for this source if the file is genuine")


def check_zip(path: Path, max_bytes: int) -> None:
    """Refuse a zip bomb from the zip directory alone (nothing is decompressed).

    Raises:
        DocumentError: not a zip file; the declared uncompressed sizes sum to more than ``max_bytes``;
            or a member larger than 1 MiB is compressed more than :data:`MAX_ZIP_RATIO` : 1.
    """
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DocumentError(path, f"damaged file: not a zip package ({e})") from None
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise DocumentError(path, f"zip bomb refused: {total / 2**20:.1f} MB uncompressed > limit "
                            f"{max_bytes / 2**20:.1f} MB", "raise max_file_mb if the file is genuine")
    for i in infos:
        if i.file_size > 2**20 and i.file_size > MAX_ZIP_RATIO * max(i.compress_size, 1):
            raise DocumentError(path, f"zip bomb refused: {i.filename} compressed {i.file_size // max(i.compress_size, 1)}:1")


def need(module: str, path: Path):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DocumentError(path, f"reading {path.suffix} files needs {module}", INSTALL_HINT) from None
