"""Extraction quality of :mod:`medtune.documents` on public documents it was not written against, and
read time against file size.

Quality (``quality``): each folder is read recursively; every file is compared with a reference
extraction made without medtune's reader:

* .docx: every ``w:t`` of ``word/document.xml``; table cells = the text of each ``w:tc``;
* .hwpx: every ``hp:t`` of ``Contents/section*.xml``; table cells = the text of each ``hp:tc``;
* .hwp: the ``PrvText`` stream Hangul stores in the file (the first ~1,000 characters as Hangul
  itself rendered them; cells are written there as ``<cell>``);
* .pdf: pypdf's text of every page (a second extractor; table cells have no independent reference);
* .html: trafilatura's evaluation set (``tests/evaldata.json``: per page, snippets that belong to
  the main text and boilerplate that must not be kept).

Characters recovered = sum over characters c of min(ours[c], reference[c]) / sum reference[c], on
non-space characters (precision: the same over ours); cells recovered = share of non-empty
reference cells whose text (spaces removed) occurs in what we extracted. Language by
:func:`medtune.text.detect_language` on the reference.

Usage::

    python bench/documents.py quality --docx DIR --hwpx DIR --hwp DIR --pdf DIR --html-eval DIR
    python bench/documents.py linear          # read time of generated files at 1x, 4x and 16x size
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medtune.documents import DocumentError, read_document  # noqa: E402
from medtune.text import detect_language  # noqa: E402

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
HP = "{http://www.hancom.co.kr/hwpml/2011/paragraph}"


def _chars(text: str) -> Counter:
    return Counter(c for c in text if not c.isspace())


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text or "")


def _xml_reference(path: Path, parts: str, t_tag: str, cell_tag: str) -> tuple[str, list[str]]:
    from lxml import etree

    texts, cells = [], []
    with zipfile.ZipFile(path) as z:
        for name in sorted(n for n in z.namelist() if re.fullmatch(parts, n)):
            root = etree.fromstring(z.read(name))
            texts += [t.text or "" for t in root.iter(t_tag)]
            cells += ["".join(t.text or "" for t in tc.iter(t_tag)) for tc in root.iter(cell_tag)]
    return "\n".join(texts), cells


def reference(path: Path) -> tuple[str, list[str] | None]:
    """``(reference text, reference cells or None)`` of one file (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix == ".docx":
        return _xml_reference(path, r"word/document\.xml", f"{W}t", f"{W}tc")
    if suffix == ".hwpx":
        return _xml_reference(path, r"Contents/section\d+\.xml", f"{HP}t", f"{HP}tc")
    if suffix == ".hwp":
        from hwpx.hwp5.cfb import CompoundFile

        raw = CompoundFile(path.read_bytes()).read("PrvText").decode("utf-16-le", "ignore")
        return raw.replace("<", " ").replace(">", " "), None
    from pypdf import PdfReader

    return "\n".join(p.extract_text() or "" for p in PdfReader(str(path)).pages), None


def score_file(path: Path) -> dict:
    """Per-file scores, or ``{"refused": reason}`` when the reader refused the file."""
    try:
        ref, cells = reference(path)
    except Exception as e:  # a reference we cannot make: the file is reported, not scored
        return {"file": str(path), "no_reference": f"{type(e).__name__}: {e}"[:200]}
    t0 = time.perf_counter()
    try:
        doc = read_document(path)
    except DocumentError as e:
        return {"file": str(path), "refused": e.reason, "ref_chars": sum(_chars(ref).values())}
    seconds = time.perf_counter() - t0
    # recall over everything we output; precision over the content, a table row counted as its cells and each
    # table's header once (the labels a row repeats are ours, not extra text)
    ours_text = doc.text + "\n" + "\n".join(" ".join(b.cells) for b in doc.blocks if b.cells)
    content, last_header = [], None
    for b in doc.blocks:
        if b.cells is not None and b.header != last_header:
            content.append(" ".join(b.header))
        content.append(" ".join(b.cells) if b.cells is not None else b.text)
        last_header = b.header
    ours, theirs, own = _chars(ours_text), _chars(ref), _chars("\n".join(content))
    hit = sum((ours & theirs).values())
    out = {"file": str(path), "language": detect_language(ref, default="other"), "ref_chars": sum(theirs.values()),
           "our_chars": sum(own.values()), "recall": hit / max(sum(theirs.values()), 1),
           "precision": sum((own & theirs).values()) / max(sum(own.values()), 1), "seconds": seconds, "bytes": path.stat().st_size,
           "rows": sum(b.kind == "row" for b in doc.blocks), "headings": sum(b.kind == "heading" for b in doc.blocks),
           "pages": doc.pages}
    if cells is not None:
        squashed = _squash(ours_text)
        ref_cells = [_squash(c) for c in cells if _squash(c)]
        out.update(ref_cells=len(ref_cells), cells_found=sum(c in squashed for c in ref_cells))
    return out


def html_eval(root: Path) -> list[dict]:
    """trafilatura's evaluation pages: main-text snippets kept and boilerplate snippets dropped, per page."""
    gold = json.loads((root / "tests" / "evaldata.json").read_text(encoding="utf-8"))
    out = []
    for spec in gold.values():
        path = next((root / "tests" / d / spec["file"] for d in ("eval", "cache") if (root / "tests" / d / spec["file"]).is_file()), None)
        if path is None or not spec.get("with"):
            continue
        try:
            text = _squash(read_document(path).text)
            refused = None
        except DocumentError as e:
            text, refused = "", e.reason
        found = [_squash(s) in text for s in spec["with"]]
        leaked = [_squash(s) in text for s in spec.get("without", [])]
        out.append({"file": str(path), "language": detect_language(" ".join(spec["with"]), default="other"),
                    "with": len(found), "with_found": sum(found), "without": len(leaked), "without_leaked": sum(leaked),
                    "refused": refused})
    return out


def summarise(rows: list[dict], fmt: str) -> list[str]:
    by_lang = defaultdict(list)
    for r in rows:
        if "recall" in r:
            by_lang[r["language"]].append(r)
    lines = []
    for lang, rs in sorted(by_lang.items()):
        ref = sum(r["ref_chars"] for r in rs)
        hit = sum(r["recall"] * r["ref_chars"] for r in rs)
        ours = sum(r["our_chars"] for r in rs)
        prec = sum(r["precision"] * r["our_chars"] for r in rs) / max(ours, 1)
        cells = [r for r in rs if "ref_cells" in r]
        cell_s = (f"{sum(r['cells_found'] for r in cells)}/{sum(r['ref_cells'] for r in cells)} "
                  f"({sum(r['cells_found'] for r in cells) / max(sum(r['ref_cells'] for r in cells), 1):.1%})") if cells else "n/a"
        lines.append(f"| {fmt} | {lang} | {len(rs)} | {ref} | {hit / max(ref, 1):.1%} | {prec:.1%} | {cell_s} | "
                     f"{sum(r['rows'] for r in rs)} | {sum(r['headings'] for r in rs)} |")
    refused = Counter(r["refused"] + (" (reference has text)" if r["ref_chars"] else " (reference empty too)")
                      for r in rows if r.get("refused"))
    noref = sum(1 for r in rows if r.get("no_reference"))
    if refused or noref:
        lines.append(f"| {fmt} | refused | {sum(refused.values())} | {dict(refused)} | | | | | (no reference: {noref}) |")
    return lines


def quality(args) -> None:
    rows, table = {}, ["| format | language | files | reference chars | chars recovered | precision | table cells recovered | rows | headings |",
                       "|---|---|---|---|---|---|---|---|---|"]
    for fmt, folder in (("docx", args.docx), ("hwpx", args.hwpx), ("hwp", args.hwp), ("pdf", args.pdf)):
        if folder:
            files = sorted(p for p in Path(folder).rglob(f"*.{fmt}") if p.is_file() and p.stat().st_size)
            rows[fmt] = [score_file(p) for p in files]
            table += summarise(rows[fmt], fmt)
    if args.html_eval:
        rows["html"] = html_eval(Path(args.html_eval))
        by_lang = defaultdict(list)
        for r in rows["html"]:
            by_lang[r["language"]].append(r)
        table += ["", "| html (trafilatura eval set) | language | pages | main-text snippets kept | boilerplate snippets leaked | refused |",
                  "|---|---|---|---|---|---|"]
        for lang, rs in sorted(by_lang.items()):
            w, wf = sum(r["with"] for r in rs), sum(r["with_found"] for r in rs)
            wo, wl = sum(r["without"] for r in rs), sum(r["without_leaked"] for r in rs)
            table.append(f"| html | {lang} | {len(rs)} | {wf}/{w} ({wf / max(w, 1):.1%}) | {wl}/{wo} ({wl / max(wo, 1):.1%}) | "
                         f"{sum(1 for r in rs if r['refused'])} |")
    print("\n".join(table))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


def linear(args) -> None:
    """Read time of generated .docx / .pdf / .hwpx / .html at 1x, 4x, 16x content: seconds per MB should stay flat."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from doc_fixtures import write_docx, write_hangul, write_html, write_pdf

    print("| format | scale | bytes | seconds | s/MB |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 4, 16):
            n = 50 * scale
            files = {"docx": write_docx(Path(tmp) / f"a{scale}.docx", extra_rows=n, extra_paragraphs=n),
                     "pdf": write_pdf(Path(tmp) / f"a{scale}.pdf", extra_rows=n, extra_paragraphs=n)}
            html = write_html(Path(tmp) / f"a{scale}.html")
            body = html.read_text(encoding="utf-8")
            i = body.index("<h2>")
            html.write_text(body[:i] + body[i:body.index("</article>")] * n + body[body.index("</article>"):], encoding="utf-8")
            files["html"] = html
            rows = [("약품", "성인 용량", "1일 최대 용량")] + [(f"약 {k}", f"{k} mg", f"{2 * k} mg") for k in range(n)]
            files["hwpx"] = write_hangul(Path(tmp) / f"a{scale}.hwpx", rows)
            for fmt, path in files.items():
                t0 = time.perf_counter()
                read_document(path)
                s = time.perf_counter() - t0
                size = path.stat().st_size
                print(f"| {fmt} | {scale}x | {size} | {s:.3f} | {s / (size / 2**20):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    for k in ("docx", "hwpx", "hwp", "pdf"):
        q.add_argument(f"--{k}")
    q.add_argument("--html-eval", help="a checkout of trafilatura (tests/evaldata.json, tests/eval/, tests/cache/)")
    q.add_argument("--out")
    sub.add_parser("linear")
    args = ap.parse_args()
    quality(args) if args.cmd == "quality" else linear(args)


if __name__ == "__main__":
    main()
