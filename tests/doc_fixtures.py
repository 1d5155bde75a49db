"""Real-format documents written by their own writing libraries for the document-reader tests:
a .docx (python-docx), .hwpx and .hwp (python-hwpx), an .html page with navigation boilerplate,
and PDFs with a dosing table (reportlab), a scanned page and a password (pypdf)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

DOSES = [("drug", "adult dose", "max daily dose"), ("amoxicillin", "500 mg", "3 g"), ("clarithromycin", "250 mg", "1 g")]
DOSES_KO = [("약품", "성인 용량", "1일 최대 용량"), ("아목시실린", "500 mg", "3 g"), ("메트포르민", "500 mg", "2 g")]


def write_docx(path: Path, extra_rows: int = 0, extra_paragraphs: int = 0) -> Path:
    """Title, headings on two levels, a numbered recommendation, a page break, a dosing table."""
    from docx import Document

    d = Document()
    d.core_properties.title = "Antibiotic guide"
    d.core_properties.created = dt.datetime(2024, 3, 1)
    d.add_heading("Antibiotic guide", 0)
    d.add_heading("1 Diagnosis", 1)
    d.add_paragraph("Take a throat swab before the first dose when streptococcal pharyngitis is suspected.")
    d.add_paragraph("Recommendation 1: treat confirmed streptococcal pharyngitis for ten days.", style="List Number")
    for k in range(extra_paragraphs):
        d.add_paragraph(f"Paragraph {k} repeats the advice to review the diagnosis after two days of treatment.")
    d.add_page_break()
    d.add_heading("2 Treatment", 1)
    d.add_heading("2.1 Adult doses", 2)
    table = d.add_table(rows=0, cols=3)
    for row in DOSES + [(f"drug {k}", f"{k} mg", f"{2 * k} mg") for k in range(extra_rows)]:
        cells = table.add_row().cells
        for c, v in zip(cells, row):
            c.text = v
    d.save(path)
    return path


def write_hangul(path: Path, rows=DOSES_KO, note: str = "") -> Path:
    """A .hwpx or .hwp (by suffix): outline headings, a paragraph on a new page, a dosing table
    (``note`` is added to the paragraphs, to tell two files apart)."""
    from hwpx import HwpxDocument

    d = HwpxDocument.new()
    d.package.set_document_metadata(title="항생제 지침", created_date="2024-05-02T09:00:00Z")
    d.add_heading("1 진단", level=1)
    d.add_paragraph("인두염이 의심되면 첫 투약 전에 인후 도말 검사를 한다." + note, inherit_style=False)
    d.add_heading("2 치료", level=1, pageBreak="1")
    d.add_heading("2.1 성인 용량", level=2)
    table = d.add_table(len(rows), 3)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            table.set_cell_text(i, j, v)
    d.add_paragraph("신기능이 저하된 환자는 용량을 줄인다." + note, inherit_style=False)
    d.save_to_path(path)
    return path


NAV = "<nav><ul><li><a href='/'>首页</a></li><li><a href='/news'>医院新闻</a></li><li><a href='/about'>关于我们</a></li></ul></nav>"
FOOTER = "<footer><p>版权所有 © 2024 示例医院 保留所有权利 隐私政策 联系我们</p></footer>"


def write_html(path: Path) -> Path:
    """A hospital page: navigation and footer boilerplate around an article with headings, a numbered
    recommendation list and a dosing table."""
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>高血压用药指南</title>
<meta name="date" content="2024-06-01"></head><body>{NAV}<div class="sidebar">热门文章 专家介绍 预约挂号</div>
<main><article><h1>高血压用药指南</h1>
<p>高血压是最常见的慢性病之一，长期规律服药并定期随访可以明显降低脑卒中和心肌梗死的风险。</p>
<h2>3 治疗</h2><h3>3.2 药物治疗</h3>
<p>生活方式干预三个月后血压仍高于140/90 mmHg的患者，应开始药物治疗，并根据合并症选择药物。</p>
<ol><li>推荐意见1：首选噻嗪类利尿剂、钙通道阻滞剂、ACEI或ARB。</li><li>推荐意见2：ACEI与ARB不应联合使用。</li></ol>
<table><tr><th>药物</th><th>起始剂量</th><th>每日最大剂量</th></tr>
<tr><td>氨氯地平</td><td>5 mg</td><td>10 mg</td></tr><tr><td>赖诺普利</td><td>10 mg</td><td>80 mg</td></tr></table>
</article></main>{FOOTER}</body></html>""", encoding="utf-8")
    return path


def write_pdf(path: Path, extra_rows: int = 0, extra_paragraphs: int = 0) -> Path:
    """Two pages: a title and an introduction, then headings, a Chinese section and a ruled dosing table
    on page 2 (reportlab; the Chinese text in the built-in STSong-Light CID font)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    ss = getSampleStyleSheet()
    zh = ParagraphStyle("zh", parent=ss["BodyText"], fontName="STSong-Light")
    zh_head = ParagraphStyle("zh_head", parent=ss["Heading1"], fontName="STSong-Light")
    story = [Paragraph("Antibiotic dosing", ss["Title"]), Paragraph("1 Introduction", ss["Heading1"]),
             Paragraph("This guideline covers empirical antibiotic treatment of community-acquired infections "
                       "in adults with normal kidney function.", ss["BodyText"])]
    story += [Paragraph(f"Paragraph {k}: review the treatment after two days and stop antibiotics that are not needed.",
                        ss["BodyText"]) for k in range(extra_paragraphs)]
    story += [PageBreak(), Paragraph("2 Dosing", ss["Heading1"]), Paragraph("2.1 Adult doses", ss["Heading2"]),
              Paragraph("Doses assume normal kidney function.", ss["BodyText"])]
    table = Table([list(r) for r in DOSES] + [[f"drug {k}", f"{k} mg", f"{2 * k} mg"] for k in range(extra_rows)],
                  repeatRows=1)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
    story += [table, Spacer(1, 12), Paragraph("3 肾功能不全", zh_head),
              Paragraph("肾功能不全的患者应根据肌酐清除率调整剂量。", zh)]
    SimpleDocTemplate(str(path), pagesize=A4, title="Antibiotic dosing guide").build(story)
    return path


def write_scanned_pdf(path: Path) -> Path:
    """A PDF whose page has no text layer (as a scan without OCR)."""
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(200, 200)
    w.write(path)
    return path


def write_encrypted_pdf(path: Path, source: Path) -> Path:
    """``source`` encrypted with a user password."""
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter(clone_from=PdfReader(str(source)))
    w.encrypt("secret", algorithm="AES-128")
    w.write(path)
    return path
