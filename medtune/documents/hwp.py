""".hwpx and .hwp (HWP 5) through python-hwpx, which opens both into the OWPML model read here."""

from __future__ import annotations

import re
from pathlib import Path

from medtune.documents.model import Block, Document, DocumentError, clean, finish, need, table_blocks
from medtune.documents.text import ITEM

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
    return clean("".join(out))


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
    """Blocks of one top-level ``hp:p``: its text (heading by outline level), then its tables (rows)
    and the paragraphs of its text boxes and other drawing objects."""
    out = []
    text = _hwp_text(p)
    if text:
        level = levels[1].get(p.get("paraPrIDRef")) or levels[0].get(p.get("styleIDRef"))
        out.append(Block("heading" if level else "item" if ITEM.match(text) else "paragraph", text,
                         level=level or 0, page=page))
    for run in p.iterchildren(f"{HP}run"):
        for obj in run:
            if obj.tag == f"{HP}tbl":
                out += table_blocks(_hwp_table(obj), page)
            elif obj.tag != f"{HP}t":  # a text box or another drawing object holding paragraphs
                out += [Block("paragraph", t, page=page) for q in obj.iter(f"{HP}p") if (t := _hwp_text(q))]
    return out


def _open(hwpx, path: Path):
    """``hwpx.HwpxDocument.open`` with its errors as :class:`DocumentError` (encrypted or damaged)."""
    import logging
    import warnings

    from hwpx.errors import HwpxError

    logging.getLogger("hwpx").setLevel(logging.ERROR)  # package repairs it makes on the way are not ours to report
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a conversion report for content we do not read (drawings)
            return hwpx.HwpxDocument.open(str(path))
    except HwpxError as e:
        code = getattr(e, "code", "") or ""
        if code.startswith(("hwp5-password", "hwp5-drm", "hwp5-distribution")) or "encrypt" in str(e).lower():
            raise DocumentError(path, f"encrypted: {e}", "save an unprotected copy in Hancom Office") from None
        raise DocumentError(path, f"damaged or not a Hangul file ({type(e).__name__}: {e})") from None
    except Exception as e:  # lxml / zip / struct errors of a damaged file
        raise DocumentError(path, f"damaged or not a Hangul file ({type(e).__name__}: {e})") from None


def read_hwp(path: Path, fmt: str) -> Document:
    """A .hwpx or .hwp (HWP 5) file through python-hwpx: outline (개요) headings, tables by cell address,
    pages from Hangul's stored line layout, title and date from the package metadata.

    Raises:
        DocumentError: encrypted (password, DRM, distribution document), damaged, no text.
    """
    d = _open(need("hwpx", path), path)
    levels = _hwp_heading_levels(d.oxml.headers[0].element) if d.oxml.headers else ({}, {})
    blocks, pager = [], _Pager()
    for section in d.sections:
        for p in section.element.iterchildren(f"{HP}p"):
            blocks += _hwp_paragraph(p, levels, pager.at(p))
    meta = d.package.document_metadata()
    date = (getattr(meta, "created_date", None) or getattr(meta, "modified_date", None) or "")[:10] or None
    return finish(path, fmt, blocks, title=clean(getattr(meta, "title", None) or "") or None, date=date, pages=pager.page)
