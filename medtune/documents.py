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
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import DocumentError
from medtune.io import read_text

FORMATS = {".txt": "text", ".md": "markdown", ".docx": "docx", ".hwpx": "hwpx", ".hwp": "hwp",
           ".html": "html", ".htm": "html", ".pdf": "pdf"}
SUFFIXES = tuple(FORMATS)
TEXT_FORMATS = ("text", "markdown")  # their passages' char spans point into the file itself
DEFAULT_MAX_MB = 100.0
MAX_ZIP_RATIO = 200
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


# ---------------------------------------------------------------- shared pieces
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


def _clean(text: str) -> str:
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
    rows = [[_clean(c) if c is not None else None for c in r] for r in rows]
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


def _need(module: str, path: Path):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DocumentError(path, f"reading {path.suffix} files needs {module}", INSTALL_HINT) from None


# ---------------------------------------------------------------- .txt / .md
_HEADING = re.compile(r"^(#{1,6}\s+\S.*|第[一二三四五六七八九十百\d]+[章节条部分].*|[0-9]+(\.[0-9]+)*[.)、]?\s+\S.{0,60}"
                      r"|[一二三四五六七八九十]+、.{1,60}|[IVX]+\.\s+\S.*)$")
_ITEM = re.compile(r"^([-*•·]\s+|\(?\d{1,3}[.)）]\s*\S|[①-⑳]|\(\w\)\s|推荐意见\s*\d|권고\s*\d|Recommendation\s+\d)", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
_END_PUNCT = tuple(".。;；!?！？:：")


def _heading_level(line: str) -> int | None:
    """Level of a heading line of plain text (None: not a heading). A numbered line ending like a
    sentence is a list item (a recommendation), not a heading."""
    if not _HEADING.match(line):
        return None
    if m := re.match(r"#+", line):
        return len(m.group())
    if line.endswith(_END_PUNCT):
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
        level = _heading_level(stripped) if stripped else None
        if not stripped or level is not None or _ITEM.match(stripped):
            cur = None
        if level is not None:
            blocks.append(Block("heading", stripped.lstrip("#").strip(), level=level, start=lead, end=lead + len(stripped)))
        elif stripped and cur is None:
            cur = Block("item" if _ITEM.match(stripped) else "paragraph", "", start=lead, end=lead + len(stripped))
            blocks.append(cur)
        elif stripped:
            cur.end = lead + len(stripped)
        pos += len(line)
    for b in blocks:
        if b.kind != "heading":
            b.text = text[b.start:b.end]
    return blocks


def _read_text_file(path: Path, encoding: str | None) -> Document:
    text, _ = read_text(path, encoding)
    if not text.strip():
        raise DocumentError(path, "empty file")
    return finish(path, FORMATS[path.suffix.lower()], text_blocks(text), text)


# ---------------------------------------------------------------- .docx (python-docx)
_DOCX_HEADING = re.compile(r"^(heading|标题|제목|titre|überschrift)\s*(\d)$", re.I)


def _docx_level(p) -> int | None:
    """Heading level of a python-docx paragraph: built-in ``Heading N`` / ``Title`` styles, else an
    outline level on the paragraph or its style chain (``w:outlineLvl``, 0-based)."""
    style = p.style
    name = (style.name or "") if style is not None else ""
    if name.lower() == "title":
        return 0
    if m := _DOCX_HEADING.match(name):
        return int(m.group(2))
    ns = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    for el in [p._p.pPr] + ([s.element.pPr for s in _style_chain(style)]):
        lvl = el.find(f"{ns}outlineLvl") if el is not None else None
        if lvl is not None and lvl.get(f"{ns}val", "9").isdigit() and int(lvl.get(f"{ns}val")) < 9:
            return int(lvl.get(f"{ns}val")) + 1
    return None


def _style_chain(style):
    seen = 0
    while style is not None and seen < 10:
        yield style
        style, seen = style.base_style, seen + 1


def _docx_breaks(p) -> tuple[int, int]:
    """(page breaks before the paragraph's first text, breaks after it): Word's
    ``w:lastRenderedPageBreak`` marks, else hard ``w:br w:type="page"`` breaks."""
    ns = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    before = after = 0
    seen_text = False
    for el in p._p.iter(f"{ns}t", f"{ns}lastRenderedPageBreak", f"{ns}br"):
        if el.tag == f"{ns}t":
            seen_text = seen_text or bool(el.text and el.text.strip())
            continue
        if el.tag == f"{ns}br" and el.get(f"{ns}type") != "page":
            continue
        if seen_text:
            after += 1
        else:
            before += 1
    return before, after


def _docx_rows(table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells, last = [], None
        for cell in row.cells:
            if cell._tc is not last:  # a merged cell is returned once per grid column
                cells.append(cell.text)
            last = cell._tc
        rows.append(cells)
    return rows


def _read_docx(path: Path) -> Document:
    docx = _need("docx", path)
    try:
        d = docx.Document(str(path))
    except Exception as e:  # python-docx raises PackageNotFoundError / KeyError / ValueError on damage
        raise DocumentError(path, f"damaged or not a Word file ({type(e).__name__}: {e})") from None
    ns = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    rendered = d.element.body.find(f".//{ns}lastRenderedPageBreak") is not None
    blocks, page = [], 1
    for item in d.iter_inner_content():
        if hasattr(item, "rows"):
            blocks += table_blocks(_docx_rows(item), page)
            continue
        before, after = _docx_breaks(item) if rendered or item._p.find(f".//{ns}br") is not None else (0, 0)
        page += before
        text = _clean(item.text)
        if text:
            level = _docx_level(item)
            is_item = item._p.pPr is not None and item._p.pPr.numPr is not None
            kind = "heading" if level is not None else "item" if is_item else "paragraph"
            blocks.append(Block(kind, text, level=level or 0, page=page))
        page += after
    core = d.core_properties
    date = core.created or core.modified
    return finish(path, "docx", blocks, title=_clean(core.title or "") or None,
                  date=date.date().isoformat() if date else None, pages=page)


# ---------------------------------------------------------------- .hwpx / .hwp (python-hwpx)
HP = "{http://www.hancom.co.kr/hwpml/2011/paragraph}"
HH = "{http://www.hancom.co.kr/hwpml/2011/head}"
_OUTLINE = re.compile(r"^(outline|개요)\s*(\d+)$", re.I)


def _hwp_heading_levels(header) -> tuple[dict, dict]:
    """``({style id: level}, {paraPr id: level})`` of outline (개요) headings in an OWPML header."""
    styles = {}
    for s in header.iter(f"{HH}style"):
        m = _OUTLINE.match(s.get("engName") or "") or _OUTLINE.match(s.get("name") or "")
        if m:
            styles[s.get("id")] = int(m.group(2))
    paras = {}
    for pr in header.iter(f"{HH}paraPr"):
        h = pr.find(f"{HH}heading")
        if h is not None and h.get("type") == "OUTLINE":
            paras[pr.get("id")] = int(h.get("level", "0")) + 1
    return styles, paras


def _hwp_text(el) -> str:
    """Text of a paragraph's runs (``hp:t``, tabs as spaces), tables and drawings excluded."""
    out = []
    for run in el.iterchildren(f"{HP}run"):
        for t in run.iterchildren(f"{HP}t"):
            out.append(t.text or "")
            for child in t:
                out.append(" " if child.tag.endswith(("tab", "lineBreak")) else "")
                out.append(child.tail or "")
    return _clean("".join(out))


def _hwp_cell_text(tc) -> str:
    return "\n".join(t for p in tc.iter(f"{HP}p") if (t := _hwp_text(p)))


def _hwp_table(tbl) -> list[list[str | None]]:
    """Cell grid of an ``hp:tbl`` by each cell's ``hp:cellAddr`` (merged-over cells None)."""
    grid: dict[tuple[int, int], str] = {}
    for tr in tbl.iterchildren(f"{HP}tr"):
        for tc in tr.iterchildren(f"{HP}tc"):
            addr = tc.find(f"{HP}cellAddr")
            if addr is not None:
                grid[(int(addr.get("rowAddr", 0)), int(addr.get("colAddr", 0)))] = _hwp_cell_text(tc)
    if not grid:
        return []
    n_rows, n_cols = max(r for r, _ in grid) + 1, max(c for _, c in grid) + 1
    return [[grid.get((r, c)) for c in range(n_cols)] for r in range(n_rows)]


class _Pager:
    """Page of each top-level paragraph from Hangul's stored layout: a page break, or a line whose
    vertical position goes back up (``hp:lineseg vertpos``), starts a new page."""

    def __init__(self):
        self.page, self.vpos = 1, -1

    def at(self, p) -> int:
        segs = p.find(f"{HP}linesegarray")
        pos = [int(s.get("vertpos", 0)) for s in segs.iterchildren(f"{HP}lineseg")] if segs is not None else []
        if p.get("pageBreak") == "1" or (pos and pos[0] < self.vpos):
            self.page += 1
        start = self.page
        for a, b in zip(pos, pos[1:]):
            self.page += b < a  # the paragraph itself runs onto a new page
        self.vpos = pos[-1] if pos else self.vpos
        return start


def _hwp_paragraph(p, levels: tuple[dict, dict], page: int) -> list[Block]:
    out = []
    text = _hwp_text(p)
    if text:
        level = levels[1].get(p.get("paraPrIDRef")) or levels[0].get(p.get("styleIDRef"))
        out.append(Block("heading" if level else "item" if _ITEM.match(text) else "paragraph", text,
                         level=level or 0, page=page))
    for tbl in p.iterchildren(f"{HP}run"):
        for t in tbl.iterchildren(f"{HP}tbl"):
            out += table_blocks(_hwp_table(t), page)
    return out


def _read_hwp(path: Path, fmt: str) -> Document:
    hwpx = _need("hwpx", path)
    from hwpx.errors import HwpxError

    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a conversion report for content we do not read (drawings)
            d = hwpx.HwpxDocument.open(str(path))
    except HwpxError as e:
        code = getattr(e, "code", "") or ""
        if code.startswith(("hwp5-password", "hwp5-drm", "hwp5-distribution")) or "encrypt" in str(e).lower():
            raise DocumentError(path, f"encrypted: {e}", "save an unprotected copy in Hancom Office") from None
        raise DocumentError(path, f"damaged or not a Hangul file ({type(e).__name__}: {e})") from None
    levels = _hwp_heading_levels(d.oxml.headers[0].element) if d.oxml.headers else ({}, {})
    blocks, pager = [], _Pager()
    for section in d.sections:
        for p in section.element.iterchildren(f"{HP}p"):
            blocks += _hwp_paragraph(p, levels, pager.at(p))
    meta = d.package.document_metadata()
    date = (meta.created_date or meta.modified_date or "")[:10] or None
    return finish(path, fmt, blocks, title=_clean(meta.title or "") or None, date=date, pages=pager.page)


# ---------------------------------------------------------------- .html (trafilatura)
def _html_blocks(body) -> list[Block]:
    out = []
    for el in body:
        tag = el.tag
        if tag == "head":
            rend = el.get("rend") or "h2"
            out.append(Block("heading", _clean("".join(el.itertext())), level=int(rend[1]) if rend[1:].isdigit() else 2))
        elif tag == "list":
            out += [Block("item", t) for item in el.iter("item") if (t := _clean("".join(item.itertext())))]
        elif tag == "table":
            rows = [[_clean("".join(c.itertext())) for c in row.iterchildren("cell")] for row in el.iter("row")]
            out += table_blocks(rows)
        elif text := _clean("".join(el.itertext())):
            out.append(Block("paragraph", text))
    return [b for b in out if b.text]


def _read_html(path: Path, encoding: str | None) -> Document:
    trafilatura = _need("trafilatura", path)
    html, _ = read_text(path, encoding)
    doc = trafilatura.bare_extraction(html, include_tables=True, include_formatting=False, include_links=False,
                                      with_metadata=True, favor_recall=True, output_format="python")
    if doc is None or getattr(doc, "body", None) is None or not len(doc.body):
        raise DocumentError(path, "no main content found in the page", "is it a navigation or script-only page?")
    date = getattr(doc, "date", None)
    return finish(path, "html", _html_blocks(doc.body), title=_clean(doc.title or "") or None,
                  date=str(date)[:10] if date else None)


# ---------------------------------------------------------------- .pdf (pdfplumber)
def _pdf_date(value) -> str | None:
    m = re.match(r"(?:D:)?(\d{4})(\d{2})?(\d{2})?", str(value or ""))
    return "-".join(g for g in m.groups() if g) if m else None


def _pdf_outline(path: Path) -> dict[tuple[int, str], int]:
    """``{(page, normalised title): level}`` from the PDF's bookmarks (pypdf), {} when it has none."""
    from pypdf import PdfReader

    out: dict[tuple[int, str], int] = {}
    try:
        reader = PdfReader(str(path))

        def walk(items, level):
            for it in items:
                if isinstance(it, list):
                    walk(it, level + 1)
                else:
                    out[(reader.get_destination_page_number(it) + 1, _norm(it.title))] = level
        walk(reader.outline, 1)
    except Exception:  # bookmarks are optional; a broken outline must not stop the text
        return {}
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text or "").lower()


def _cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7a3" or "\uff00" <= ch <= "\uffef"


def _pdf_page_items(page) -> list[tuple[float, str, object]]:
    """``(top, "line" | "table", line dict | rows)`` of one page in reading order (text inside a
    table's box belongs to the table only)."""
    tables = page.find_tables()
    boxes = [t.bbox for t in tables]

    def outside(obj) -> bool:
        x, y = (obj.get("x0", 0) + obj.get("x1", 0)) / 2, (obj.get("top", 0) + obj.get("bottom", 0)) / 2
        return not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)

    rest = page.filter(outside) if boxes else page
    items = [(ln["top"], "line", ln) for ln in rest.extract_text_lines(return_chars=True, strip=True) if ln["text"].strip()]
    items += [(t.bbox[1], "table", t.extract()) for t in tables]
    return sorted(items, key=lambda it: it[0])


def _pdf_repeated(pages: list[list]) -> set[str]:
    """Running heads and footers: line texts (digits masked) on at least half of the pages (3 or more)."""
    counts: Counter = Counter()
    for items in pages:
        counts.update({_mask(it[2]["text"]) for it in items if it[1] == "line"})
    return {t for t, c in counts.items() if len(pages) >= 3 and c >= max(3, len(pages) / 2)}


def _mask(text: str) -> str:
    return re.sub(r"\d+", "#", text.strip())


def _line_size(line: dict) -> float:
    return round(max(c["size"] for c in line["chars"]) * 2) / 2


def _bold(line: dict) -> bool:
    return all(re.search(r"bold|heavy|black|semibold", c.get("fontname", ""), re.I) for c in line["chars"] if c["text"].strip())


class _PdfHeadings:
    """Heading level of a PDF line: its bookmark's depth when the PDF has bookmarks, else a font size
    at least 1.15x the body size (the most frequent, by characters; larger sizes rank higher), or a
    short all-bold line numbered like a heading (level = numbering depth)."""

    def __init__(self, pages: list[list], outline: dict):
        sizes: Counter = Counter()
        for items in pages:
            for _, kind, obj in items:
                if kind == "line":
                    sizes[_line_size(obj)] += len(obj["text"])
        self.body = sizes.most_common(1)[0][0] if sizes else 0
        self.ranks = sorted({s for s in sizes if s >= self.body * 1.15}, reverse=True)
        self.outline = outline

    def level(self, line: dict, page: int) -> int | None:
        text = line["text"].strip()
        if self.outline:
            return self.outline.get((page, _norm(text)))
        if len(text) > 150 or text.endswith(_END_PUNCT):
            return None
        size = _line_size(line)
        if size in self.ranks:
            return self.ranks.index(size) + 1
        if _bold(line) and len(text) <= 60 and (lv := _heading_level(text)):
            return len(self.ranks) + lv
        return None


def _pdf_blocks(pages: list[list], headings: _PdfHeadings) -> list[Block]:
    repeated = _pdf_repeated(pages)
    blocks: list[Block] = []
    for pno, items in enumerate(pages, start=1):
        cur, last = None, None
        for n, (_, kind, obj) in enumerate(items):
            if kind == "table":
                carry = blocks[-1].header if n == 0 and blocks and blocks[-1].kind == "row" else None
                blocks += table_blocks(obj, pno, carry if carry and len(carry) == max(map(len, obj), default=0) else None)
                cur = None
                continue
            text = obj["text"].strip()
            if _mask(text) in repeated:
                continue
            level = headings.level(obj, pno)
            if level:
                blocks.append(Block("heading", _clean(text), level=level, page=pno))
                cur = None
            elif cur is None or _ITEM.match(text) or obj["top"] - last["bottom"] > 0.5 * (last["bottom"] - last["top"]):
                cur = Block("item" if _ITEM.match(text) else "paragraph", text, page=pno)
                blocks.append(cur)
            else:
                cur.text += ("" if _cjk(cur.text[-1]) or _cjk(text[0]) else " ") + text
            last = obj
    for b in blocks:
        b.text = _clean(b.text)
    return [b for b in blocks if b.text]


def _read_pdf_plain(path: Path) -> Document:
    """PDF text page by page through pypdf (a core dependency) when pdfplumber is not installed:
    headings only as plain-text numbering finds them, tables not detected (noted in ``notes``)."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(path, "encrypted: the PDF needs a password", "save an unprotected copy")
        texts = [p.extract_text() or "" for p in reader.pages]
    except DocumentError:
        raise
    except Exception as e:  # pypdf raises PdfReadError, ValueError, KeyError ... on damaged files
        raise DocumentError(path, f"damaged or not a PDF ({type(e).__name__}: {e})") from None
    if not "".join(texts).strip():
        raise DocumentError(path, NO_TEXT_LAYER, f"{len(texts)} pages of images; run OCR (e.g. ocrmypdf) first")
    blocks = []
    for n, text in enumerate(texts, start=1):
        for b in text_blocks(text):
            b.text, b.page = text[b.start:b.end] if b.kind != "heading" else b.text, n
            blocks.append(b)
    meta = reader.metadata or {}
    return finish(path, "pdf", blocks, title=_clean(str(meta.get("/Title") or "")) or None,
                  date=_pdf_date(meta.get("/CreationDate")), pages=len(texts),
                  notes={"reader": f"pypdf: tables not detected; {INSTALL_HINT}"})


def _read_pdf(path: Path) -> Document:
    try:
        import pdfplumber
    except ImportError:
        return _read_pdf_plain(path)
    try:
        with pdfplumber.open(str(path)) as pdf:
            meta = pdf.metadata or {}
            pages = [_pdf_page_items(p) for p in pdf.pages]
    except Exception as e:  # pdfplumber wraps pdfminer's errors (PdfminerException)
        cause = f"{type(e).__name__}: {e} {e.__cause__ or ''}"
        if re.search(r"password|encrypt", cause, re.I):
            raise DocumentError(path, "encrypted: the PDF needs a password", "save an unprotected copy") from None
        raise DocumentError(path, f"damaged or not a PDF ({cause.strip()})") from None
    if not any(pages):
        raise DocumentError(path, NO_TEXT_LAYER, f"{len(pages)} pages of images; run OCR (e.g. ocrmypdf) first")
    blocks = _pdf_blocks(pages, _PdfHeadings(pages, _pdf_outline(path)))
    title = _clean(str(meta.get("Title") or "")) or None
    return finish(path, "pdf", blocks, title=title, date=_pdf_date(meta.get("CreationDate") or meta.get("ModDate")),
                  pages=len(pages))


# ---------------------------------------------------------------- entry points
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
        check_zip(path, max_bytes)
    if fmt in TEXT_FORMATS:
        return _read_text_file(path, encoding)
    if fmt == "docx":
        return _read_docx(path)
    if fmt in ("hwpx", "hwp"):
        return _read_hwp(path, fmt)
    if fmt == "html":
        return _read_html(path, encoding)
    return _read_pdf(path)


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
        ends = [start + m.end() for m in _SENTENCE_END.finditer(text[start:cut]) if m.end() > max_chars // 2]
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


def provenance_label(title: str | None, source_file: str, section, page: int | None) -> str:
    """``"<doc> › <section path> › p. N"``: the document's title (else the file name), its heading
    path (the first heading dropped when it repeats the title) and the page, where known."""
    doc = title or Path(source_file).name
    path = list(section or [])
    if path and _norm(path[0]) == _norm(doc):
        path = path[1:]
    return " › ".join([doc, *path] + ([f"p. {page}"] if page else []))
