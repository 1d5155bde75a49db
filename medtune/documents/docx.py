""".docx through python-docx: body order of paragraphs and tables, heading styles, Word's page breaks."""

from __future__ import annotations

import re
from pathlib import Path

from medtune.documents.model import Block, Document, DocumentError, clean, finish, need, table_blocks

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


def _numbered(p) -> bool:
    """A list paragraph: numbering on the paragraph or its style chain, or a ``List ...`` style."""
    if p._p.pPr is not None and p._p.pPr.numPr is not None:
        return True
    chain = list(_style_chain(p.style))
    return any(s.element.pPr is not None and s.element.pPr.numPr is not None for s in chain) or \
        any((s.name or "").lower().startswith("list ") for s in chain)


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


def read_docx(path: Path) -> Document:
    docx = need("docx", path)
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
        text = clean(item.text)
        if text:
            level = _docx_level(item)
            is_item = _numbered(item)
            kind = "heading" if level is not None else "item" if is_item else "paragraph"
            blocks.append(Block(kind, text, level=level or 0, page=page))
        page += after
    core = d.core_properties
    date = core.created or core.modified
    return finish(path, "docx", blocks, title=clean(core.title or "") or None,
                  date=date.date().isoformat() if date else None, pages=page)
