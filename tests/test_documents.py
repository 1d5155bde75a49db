"""Hospital documents: .docx, .hwpx, .hwp, .html and .pdf files written by their own writing libraries are
read into sections (heading path, page, header-labelled table rows, title/date); passages follow the
structure; files that cannot be read are named with the reason; data build, index build and chat
with --index on a mixed folder."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medtune.cli import app
from medtune.data.records import Record, Tally
from medtune.documents import Block, DocumentError, finish, passages, read_document, table_blocks, text_blocks
from tests.doc_fixtures import (DOSES, write_docx, write_encrypted_pdf, write_hangul, write_html, write_pdf,
                                write_scanned_pdf)
from tests.fake_openai import FakeOpenAI

for _module in ("docx", "hwpx", "trafilatura", "pdfplumber", "reportlab"):
    pytest.importorskip(_module)

ROWS_EN = ["drug: amoxicillin | adult dose: 500 mg | max daily dose: 3 g",
           "drug: clarithromycin | adult dose: 250 mg | max daily dose: 1 g"]


def _said(output: str, text: str) -> bool:
    """``text`` was printed (the console wraps long lines: whitespace is ignored)."""
    return "".join(text.split()) in "".join(output.split())


def _paths(doc) -> dict[str, tuple]:
    """``{block text: (section path, page)}``."""
    return {b.text: (b.section, b.page) for b in doc.blocks}


def test_docx_headings_pages_rows_and_metadata(tmp_path):
    doc = read_document(write_docx(tmp_path / "guide.docx"))
    assert (doc.format, doc.title, doc.date, doc.pages) == ("docx", "Antibiotic guide", "2024-03-01", 2)
    where = _paths(doc)
    assert where["1 Diagnosis"] == (("Antibiotic guide", "1 Diagnosis"), 1)
    rec = next(b for b in doc.blocks if b.text.startswith("Recommendation 1"))
    assert rec.kind == "item"  # List Number style: a numbered recommendation
    for row in ROWS_EN:  # after the page break, under its two headings, labelled with the header
        assert where[row] == (("Antibiotic guide", "2 Treatment", "2.1 Adult doses"), 2)
    assert [b.cells for b in doc.blocks if b.kind == "row"] == [DOSES[1], DOSES[2]]


@pytest.mark.parametrize("suffix", [".hwpx", ".hwp"])
def test_hangul_hwpx_and_hwp5_read_alike(tmp_path, suffix):
    path = write_hangul(tmp_path / f"지침{suffix}")
    if suffix == ".hwp":
        assert path.read_bytes()[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a real HWP 5 compound file
    doc = read_document(path)
    assert (doc.format, doc.title, doc.date) == (suffix[1:], "항생제 지침", "2024-05-02")
    where = _paths(doc)
    assert where["인두염이 의심되면 첫 투약 전에 인후 도말 검사를 한다."] == (("1 진단",), 1)
    assert where["2 치료"] == (("2 치료",), 2)  # the heading starts page 2
    assert where["약품: 아목시실린 | 성인 용량: 500 mg | 1일 최대 용량: 3 g"] == (("2 치료", "2.1 성인 용량"), 2)
    assert [s.heading_path for s in doc.sections()] == [("1 진단",), ("2 치료",), ("2 치료", "2.1 성인 용량")]


def test_html_main_content_without_navigation_or_footer(tmp_path):
    doc = read_document(write_html(tmp_path / "page.html"))
    assert (doc.title, doc.date, doc.pages) == ("高血压用药指南", "2024-06-01", None)
    for boilerplate in ("首页", "医院新闻", "热门文章", "版权所有", "隐私政策"):
        assert boilerplate not in doc.text
    where = _paths(doc)
    assert where["推荐意见2：ACEI与ARB不应联合使用。"] == (("高血压用药指南", "3 治疗", "3.2 药物治疗"), None)
    assert "药物: 氨氯地平 | 起始剂量: 5 mg | 每日最大剂量: 10 mg" in where


def test_pdf_dosing_table_gives_one_passage_per_row_with_its_header_and_page(tmp_path):
    doc = read_document(write_pdf(tmp_path / "dosing.pdf"))
    assert (doc.title, doc.pages) == ("Antibiotic dosing guide", 2)
    cut = passages(doc, max_chars=300)
    rows = [p for p in cut if p.row]
    assert [p.text for p in rows] == ROWS_EN
    assert all(p.page == 2 and p.section == ("2 Dosing", "2.1 Adult doses") for p in rows)
    assert rows[1].row == {"header": list(DOSES[0]), "cells": list(DOSES[2])}
    zh = next(p for p in cut if "肾功能" in p.text)
    assert zh.section == ("3 肾功能不全",) and "肌酐清除率" in zh.text and zh.page == 2


def test_pdf_table_continued_on_the_next_page_keeps_its_header(tmp_path):
    doc = read_document(write_pdf(tmp_path / "long.pdf", extra_rows=80))
    rows = [b for b in doc.blocks if b.kind == "row"]
    assert len(rows) == 82 and {b.page for b in rows} == {2, 3, 4}  # reportlab repeats the header row on each page
    assert all(b.text.startswith("drug: ") and "max daily dose: " in b.text for b in rows)
    assert rows[-1].text == "drug: drug 79 | adult dose: 79 mg | max daily dose: 158 mg"


def test_table_blocks_fill_merged_cells_and_treat_single_column_tables_as_text():
    blocks = table_blocks([["drug", "dose", None], ["amoxicillin", "500 mg", "tid"], [None, "1 g", "bid"]], page=3)
    assert [b.text for b in blocks] == ["drug: amoxicillin | dose: 500 mg | dose: tid", "drug: amoxicillin | dose: 1 g | dose: bid"]
    assert blocks[0].header == ("drug", "dose", "dose") and blocks[1].page == 3
    assert [b.kind for b in table_blocks([["One boxed note"], ["Second line"]])] == ["paragraph", "paragraph"]
    carried = table_blocks([["cefuroxime", "250 mg", "1 g"]], header=DOSES[0])  # continues a table
    assert [b.text for b in carried] == ["drug: cefuroxime | adult dose: 250 mg | max daily dose: 1 g"]


def test_passages_never_cut_a_row_or_a_numbered_recommendation():
    long_item = "1. Recommendation: " + "give the full course and review the patient at every visit. " * 20
    text = "# Guide\n\n## Doses\n\n" + long_item + "\n\n" + "A paragraph of advice. " * 60
    doc = finish(Path("g.md"), "markdown", text_blocks(text), text)
    cut = passages(doc, max_chars=300, overlap_chars=40)
    assert any(long_item.strip() in p.text for p in cut)  # longer than max_chars, still whole
    assert all(p.section == ("Guide", "Doses") for p in cut)
    assert all(text[p.start:p.end] == p.text for p in cut)
    rows = [Block("heading", "Doses", level=1)] + table_blocks([list(r) for r in DOSES], page=4)
    cut = passages(finish(Path("t.pdf"), "pdf", rows), max_chars=30)  # rows longer than max_chars
    assert [p.text for p in cut] == ROWS_EN and [p.page for p in cut] == [4, 4]


def test_unreadable_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(DocumentError, match="no text layer: OCR is not run"):
        read_document(write_scanned_pdf(tmp_path / "scan.pdf"))
    with pytest.raises(DocumentError, match="encrypted"):
        read_document(write_encrypted_pdf(tmp_path / "locked.pdf", write_pdf(tmp_path / "plain.pdf")))
    with pytest.raises(DocumentError, match=r"unsupported file type '\.xyz'"):
        (tmp_path / "notes.xyz").write_text("x")
        read_document(tmp_path / "notes.xyz")
    (tmp_path / "protected.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)
    with pytest.raises(DocumentError, match="encrypted: a password-protected .docx"):
        read_document(tmp_path / "protected.docx")


def test_size_limit_and_zip_bombs_are_refused_before_reading(tmp_path):
    big = write_pdf(tmp_path / "big.pdf")
    with pytest.raises(DocumentError, match=r"file too large: .* MB > limit 0\.0 MB"):
        read_document(big, max_bytes=1_000)
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:  # 50 MB of zeros deflate to ~50 KB
        z.writestr("word/document.xml", b"\0" * 50_000_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DocumentError, match="zip bomb refused: word/document.xml compressed"):
        read_document(bomb)
    with pytest.raises(DocumentError, match=r"zip bomb refused: 47\.7 MB uncompressed > limit 1\.0 MB"):
        read_document(bomb, max_bytes=2**20)


def test_kb_template_asks_about_a_table_row_grounded_in_it(tmp_path):
    from medtune.data.generators import kb_template, load_templates
    from medtune.data.readers import read_guidelines, read_kb

    pdf = write_pdf(tmp_path / "dosing.pdf")
    tally = Tally("read")
    entries = list(read_kb(pdf, tally))
    assert [e.meta["name"] for e in entries] == ["amoxicillin", "clarithromycin"]
    assert entries[1].fields == {"adult dose": "250 mg", "max daily dose": "1 g"} and entries[1].meta["page"] == 2
    row = next(r for r in read_guidelines(pdf, Tally("read")) if (r.meta.get("table") or {}).get("cells", [""])[0] == "clarithromycin")
    for source in (entries[1], row):  # a kb entry from the table, and the guideline's row passage
        out = kb_template(source, load_templates(), 3, random.Random(0), Tally("gen"))
        pairs = {m.messages[0]["content"]: m.messages[1]["content"] for m in out}
        assert pairs["What is the max daily dose of clarithromycin?"] == "max daily dose of clarithromycin: 1 g"
        assert all(m.meta["page"] == 2 and m.meta["table"]["cells"][0] == "clarithromycin" for m in out)
    prose = Record(id="x", kind="passage", text="Doses assume normal kidney function.", meta={"source_file": "f"})
    tally = Tally("gen")
    assert kb_template(prose, load_templates(), 1, random.Random(0), tally) == []
    assert "not a table row" in tally.rejects[0].reason


# ---------------------------------------------------------------- the whole folder through the CLI
@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    src = tmp_path / "hospital"
    src.mkdir()
    write_docx(src / "antibiotics.docx")
    write_hangul(src / "항생제.hwp")
    write_hangul(src / "항생제.hwpx", [("약품", "성인 용량", "1일 최대 용량"), ("세팔렉신", "500 mg", "4 g")], " (HWPX 판)")
    write_html(src / "高血压.html")
    write_pdf(src / "dosing.pdf")
    (src / "notes.txt").write_text("3 Follow-up\n\nSee every patient again after four weeks of treatment.\n", encoding="utf-8")
    (src / "budget.xyz").write_bytes(b"\x00\x01 not a document")
    return src


SUPPORTED = {"antibiotics.docx": 2, "항생제.hwp": 2, "항생제.hwpx": 2, "高血压.html": None, "dosing.pdf": 2, "notes.txt": None}


def _teacher(req: dict) -> str:
    """One question per passage and an answer, both unique to the prompt (no duplicate is filtered)."""
    import hashlib

    c = req["messages"][-1]["content"]
    tag = hashlib.sha256(c.encode()).hexdigest()[:8]
    if "Question:" not in c and "问题：" not in c and "질문:" not in c:
        return f"1. What does passage {tag} say?"
    return f"The passage answers it ({tag})."


def test_data_build_reads_every_document_and_names_the_unsupported_file(tmp_path, mixed_folder):
    prompts = []
    with FakeOpenAI(reply=lambda req: prompts.append(req["messages"][-1]["content"]) or _teacher(req)) as srv:
        recipe = {"output_dir": str(tmp_path / "run"), "data": {
            "sources": [{"path": str(mixed_folder), "type": "guideline", "questions_per_item": 1}],
            "teacher": {"base_url": srv.base_url, "model": "t", "backoff_initial_s": 0.01},
            "filters": {"language_check": False, "near_dup_threshold": None}, "validation_fraction": 0.0}}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        res = CliRunner().invoke(app, ["data", "build", str(tmp_path / "r.yaml")])
    assert res.exit_code == 0, res.output
    assert _said(res.output, "skipped") and _said(res.output, "budget.xyz: unsupported file type '.xyz': no guideline reader")
    out = tmp_path / "run" / "data"
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(Path(r["file"]).name, r["where"]) for r in rejects] == [("budget.xyz", "<file>")]  # nothing else dropped
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    by_file = {}
    for r in rows:
        by_file.setdefault(Path(r["meta"]["source_file"]).name, []).append(r["meta"])
    assert set(by_file) == set(SUPPORTED)
    for name, page in SUPPORTED.items():
        assert all(m["section"] for m in by_file[name]), name  # every passage has its heading path
        assert (max(m.get("page", 0) for m in by_file[name]) or None) == page, name
    # a question about a table row: the teacher read the row under its section path
    assert any("2 Dosing › 2.1 Adult doses\ndrug: clarithromycin | adult dose: 250 mg | max daily dose: 1 g" in p for p in prompts)
    row_qa = [m for m in by_file["dosing.pdf"] if m.get("table")]
    assert len(row_qa) == 2 and all(m["page"] == 2 for m in row_qa)


@pytest.fixture
def dosing_index(tmp_path, mixed_folder) -> tuple[Path, object]:
    index = tmp_path / "index"
    res = CliRunner().invoke(app, ["index", "build", "--source", f"guideline:{mixed_folder}", "--index-dir", str(index),
                                   "--set", "rag.dense=false"])
    return index, res


def test_index_build_keeps_section_and_page_and_names_the_unsupported_file(dosing_index):
    index, res = dosing_index
    assert res.exit_code == 0, res.output
    assert _said(res.output, "skipped") and _said(res.output, "budget.xyz: unsupported file type '.xyz'")
    rejects = [json.loads(x) for x in (index / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [Path(r["file"]).name for r in rejects] == ["budget.xyz"]
    rows = [json.loads(x) for x in (index / "passages.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {Path(p["source_file"]).name for p in rows} == set(SUPPORTED)
    assert all(p["section"] for p in rows)
    pdf_rows = [p for p in rows if p["text"] in ROWS_EN and p["source_file"].endswith("dosing.pdf")]
    assert len(pdf_rows) == 2 and all(p["page"] == 2 and p["title"] == "Antibiotic dosing guide" for p in pdf_rows)


def test_chat_with_index_cites_the_row_and_its_page(dosing_index, qwen_dir):
    index, res = dosing_index
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["chat", "--model", str(qwen_dir), "--index", str(index), "--prompt",
                                   "What is the max daily dose of clarithromycin?", "--set", "chat.generation.max_new_tokens=4",
                                   "--set", "chat.rag.top_k=2"])
    assert res.exit_code == 0, res.output
    sources = res.output[res.output.index("Sources:"):]
    # the PDF's row and the Word file's copy of the same table tie; both are cited at their page
    assert _said(sources, "Antibiotic dosing guide › 2 Dosing › 2.1 Adult doses › p. 2 (") and _said(sources, "dosing.pdf, dosing.pdf#p")
    assert _said(sources, "Antibiotic guide › 2 Treatment › 2.1 Adult doses › p. 2 (")


def test_chat_with_rag_candidates_samples_that_many_answers_and_prints_one(dosing_index, qwen_dir, monkeypatch):
    """`chat --set chat.rag.candidates=3`: three sampled answers (the model's own sampling), one printed."""
    import medtune.chat
    from medtune.generation import stream_chat

    index, res = dosing_index
    assert res.exit_code == 0, res.output
    answers = []

    def counted(*args, **kwargs):
        text = "".join(stream_chat(*args, **kwargs))
        answers.append(text)
        yield text

    monkeypatch.setattr(medtune.chat, "stream_chat", counted)
    res = CliRunner().invoke(app, ["chat", "--model", str(qwen_dir), "--index", str(index), "--prompt",
                                   "What is the max daily dose of clarithromycin?", "--set", "chat.generation.max_new_tokens=6",
                                   "--set", "chat.generation.temperature=1.0", "--set", "chat.rag.candidates=3"])
    assert res.exit_code == 0, res.output
    assert len(answers) == 3 and "Sources:" in res.output
    assert any(a.strip() and a in res.output for a in answers)
