""".pdf through pdfplumber (tables, font sizes) and pypdf (bookmarks; the plain-text fallback)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from medtune.documents.model import (INSTALL_HINT, NO_TEXT_LAYER, Block, Document, DocumentError, clean, finish,
                                     table_blocks)
from medtune.documents.text import END_PUNCT, ITEM, heading_level, text_blocks

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
        if len(text) > 150 or text.endswith(END_PUNCT):
            return None
        size = _line_size(line)
        if size in self.ranks:
            return self.ranks.index(size) + 1
        if _bold(line) and len(text) <= 60 and (lv := heading_level(text)):
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
                blocks.append(Block("heading", clean(text), level=level, page=pno))
                cur = None
            elif cur is None or ITEM.match(text) or obj["top"] - last["bottom"] > 0.5 * (last["bottom"] - last["top"]):
                cur = Block("item" if ITEM.match(text) else "paragraph", text, page=pno)
                blocks.append(cur)
            else:
                cur.text += ("" if _cjk(cur.text[-1]) or _cjk(text[0]) else " ") + text
            last = obj
    for b in blocks:
        b.text = clean(b.text)
    return [b for b in blocks if b.text]


def read_pdf_plain(path: Path) -> Document:
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
    return finish(path, "pdf", blocks, title=clean(str(meta.get("/Title") or "")) or None,
                  date=_pdf_date(meta.get("/CreationDate")), pages=len(texts),
                  notes={"reader": f"pypdf: tables not detected; {INSTALL_HINT}"})


def read_pdf(path: Path) -> Document:
    try:
        import pdfplumber
    except ImportError:
        return read_pdf_plain(path)
    try:
        with pdfplumber.open(str(path)) as pdf:
            meta = pdf.metadata or {}
            pages = [_pdf_page_items(p) for p in pdf.pages]
    except Exception as e:  # pdfplumber wraps pdfminer's errors (PdfminerException)
        cause = f"{type(e).__name__}: " + " ".join(f"{type(a).__name__} {a}" for a in (*e.args, e.__cause__) if a)
        if re.search(r"password|encrypt", cause, re.I):
            raise DocumentError(path, "encrypted: the PDF needs a password", "save an unprotected copy") from None
        raise DocumentError(path, f"damaged or not a PDF ({cause.strip()})") from None
    if not any(pages):
        raise DocumentError(path, NO_TEXT_LAYER, f"{len(pages)} pages of images; run OCR (e.g. ocrmypdf) first")
    blocks = _pdf_blocks(pages, _PdfHeadings(pages, _pdf_outline(path)))
    title = clean(str(meta.get("Title") or "")) or None
    return finish(path, "pdf", blocks, title=title, date=_pdf_date(meta.get("CreationDate") or meta.get("ModDate")),
                  pages=len(pages))
