""".html / .htm through trafilatura: the main content (navigation, menus, footers dropped) as blocks."""

from __future__ import annotations

from pathlib import Path

from medtune.documents.model import Block, Document, DocumentError, clean, finish, need, table_blocks
from medtune.io import read_text

def _html_blocks(body) -> list[Block]:
    out = []
    for el in body:
        tag = el.tag
        if tag == "head":
            rend = el.get("rend") or "h2"
            out.append(Block("heading", clean("".join(el.itertext())), level=int(rend[1]) if rend[1:].isdigit() else 2))
        elif tag == "list":
            out += [Block("item", t) for item in el.iter("item") if (t := clean("".join(item.itertext())))]
        elif tag == "table":
            rows = [[clean("".join(c.itertext())) for c in row.iterchildren("cell")] for row in el.iter("row")]
            out += table_blocks(rows)
        elif text := clean("".join(el.itertext())):
            out.append(Block("paragraph", text))
    return [b for b in out if b.text]


def read_html(path: Path, encoding: str | None) -> Document:
    """The main content of a web page (trafilatura, recall-oriented: navigation, menus, sidebars and
    footers dropped) as blocks, with the page's title and date. The page is decoded by trafilatura
    (its ``<meta charset>``, else detection; undecodable bytes replaced) unless ``encoding`` is forced.

    Raises:
        DocumentError: no main content found.
    """
    trafilatura = need("trafilatura", path)
    html = read_text(path, encoding)[0] if encoding else path.read_bytes()
    doc = trafilatura.bare_extraction(html, include_tables=True, include_formatting=False, include_links=False,
                                      with_metadata=True, favor_recall=True, output_format="python")
    if doc is None or getattr(doc, "body", None) is None or not len(doc.body):
        raise DocumentError(path, "no main content found in the page", "is it a navigation or script-only page?")
    date = getattr(doc, "date", None)
    return finish(path, "html", _html_blocks(doc.body), title=clean(doc.title or "") or None,
                  date=str(date)[:10] if date else None)
