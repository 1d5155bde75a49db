"""Readers on realistic files, including encoding and layout traps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.data.readers import (parse_report, read_corpus, read_guidelines, read_kb, read_qa_tree, read_reports,
                                  split_passages)
from medtune.data.records import Tally
from medtune.errors import DataFileError
from medtune.io import read_text

SOURCES = Path(__file__).resolve().parents[1] / "examples" / "sources"
ZH = "高血压是一种常见的慢性疾病，需要长期随访和规律服药，同时减少食盐摄入。"
KO = "고혈압은 흔한 만성 질환으로 꾸준한 관리와 규칙적인 복약이 필요합니다."


@pytest.mark.parametrize("enc,text", [("utf-8", ZH), ("utf-8-sig", KO), ("gb18030", ZH), ("cp949", KO)])
def test_encodings_are_detected(tmp_path, enc, text):
    p = tmp_path / "doc.txt"
    p.write_bytes((text + "\n") .encode(enc))
    decoded, _ = read_text(p)
    assert decoded.strip() == text and not decoded.startswith("\ufeff")


def test_forced_wrong_encoding_is_a_located_error(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_bytes(ZH.encode("gb18030"))
    with pytest.raises(DataFileError, match="doc.txt.*utf-8"):
        read_text(p, "utf-8")
    assert read_text(p, "gb18030")[0] == ZH


def test_passages_keep_spans_and_respect_max_length():
    text = "# Title\n\nIntro paragraph.\n\n## Part A\n" + "One sentence here. " * 80 + "\n\n## Part B\nShort."
    spans = split_passages(text, max_chars=300, overlap_chars=40)
    assert all(e - s <= 300 for s, e in spans)
    assert text[spans[-1][0]:spans[-1][1]] == "## Part B\nShort."
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # the long paragraph's windows overlap
    assert "Part A" in text[spans[1][0]:spans[1][1]]  # a heading starts a passage


def test_guideline_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["第一段指南内容。", "第二段指南内容。"], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"id": "g1", "text": "Take with food.", "title": "T", "date": "2024"}\n{broken\n'
                                      '{"title": "no text"}\n', encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"")
    tally = Tally("read")
    recs = list(read_guidelines(tmp_path, tally))
    assert [r.text for r in recs] == ["第一段指南内容。", "第二段指南内容。", "Take with food."]
    assert recs[2].meta["doc_id"] == "b.jsonl:g1" and recs[2].meta["title"] == "T" and recs[0].meta["language"] == "zh"
    reasons = sorted(r.reason for r in tally.rejects)
    assert reasons == ["empty file", "malformed JSON line", "no `text` string"]
    assert next(r for r in tally.rejects if r.reason == "malformed JSON line").where == "line 2"


def test_guideline_examples_spans_point_into_the_document():
    recs = list(read_guidelines(SOURCES / "guidelines", Tally("read")))
    assert {r.meta["language"] for r in recs} == {"en", "zh", "ko"}
    for r in recs:
        s, e = r.meta["char_span"]
        assert read_text(Path(r.meta["source_file"]))[0][s:e] == r.text


def test_pdf_with_and_without_text_layer(tmp_path):
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(200, 200)
    w.write(tmp_path / "scan.pdf")
    tally = Tally("read")
    assert list(read_guidelines(tmp_path / "scan.pdf", tally)) == []
    assert "no text layer" in tally.rejects[0].reason


def test_kb_mongo_export_html_lists_and_bad_fields():
    tally = Tally("read")
    drugs = list(read_kb(SOURCES / "kb" / "drugs.jsonl", tally))
    assert drugs[0].id == "drugs.jsonl:65a1f0c2e4b0a1a2b3c4d5e1" and "_id" not in drugs[0].fields
    assert drugs[0].fields["indications"].startswith("First-line") and "<p>" not in drugs[0].fields["indications"]
    assert drugs[0].fields["contraindications"] == ["severe kidney impairment", "acute metabolic acidosis"]
    assert drugs[2].fields["adverse_reactions"].startswith("과량") and drugs[2].meta["language"] == "ko"
    diseases = list(read_kb(SOURCES / "kb" / "diseases.json", tally))
    assert [d.meta["name"] for d in diseases] == ["高血压", "Gout"] and "recommand_drug" not in diseases[1].fields
    assert {r.reason for r in tally.rejects} == {"field is a dict, expected a string or a list of strings",
                                                   "no name field (name, title, drug_name...)"}


def test_kb_csv_in_gb18030():
    recs = list(read_kb(SOURCES / "kb" / "drugs_zh_gb18030.csv", Tally("read")))
    assert [r.meta["name"] for r in recs] == ["布洛芬", "氯雷他定"] and recs[0].meta["language"] == "zh"


def test_report_sections_any_case_order_and_colon():
    s = parse_report("impression\nSmall effusion, new since ___.\nfindings\nBlunted angle.\nMild cardiomegaly.\n"
                     "history: XXXX dyspnea\nRECOMMENDATION: follow-up")
    assert s == {"impression": "Small effusion, new since ___.", "findings": "Blunted angle. Mild cardiomegaly.",
                 "history": "XXXX dyspnea", "other": "RECOMMENDATION: follow-up"}


def test_reports_text_and_csv_with_rejects():
    tally = Tally("read")
    recs = list(read_reports(SOURCES / "reports", tally))
    ids = [r.id for r in recs]
    assert "report_004.txt" not in ids and "reports.csv:r-101" in ids and "reports.csv:r-102" in ids
    assert recs[ids.index("report_003.txt")].fields["history"] == "fall, on anticoagulation"
    assert recs[ids.index("report_001.txt")].fields["indication"].startswith("XXXX-year-old")
    assert [r.reason for r in tally.rejects] == ["report has neither FINDINGS nor IMPRESSION"]


def test_qa_tree_pairs_by_path_and_id_and_joins_parts_in_order():
    tally = Tally("read")
    recs = {r.id: r for r in read_qa_tree(SOURCES / "qa_tree", tally)}
    fruit = recs["당뇨병/식이/000101"].messages
    assert fruit[0]["content"] == "당뇨병이 있으면 과일을 먹어도 되나요?"
    assert fruit[1]["content"].startswith("과일은 먹을 수") and fruit[1]["content"].endswith("양을 조절하세요.")
    assert recs["당뇨병/식이/000102"].messages[1]["content"].startswith("밥의 양은")  # its own answer, not the folder's first
    assert [(r.reason, r.where) for r in tally.rejects] == [("answer without a question", "id 000299")]


def test_qa_tree_without_answer_folder_is_a_clear_error(tmp_path):
    (tmp_path / "1.질문").mkdir()
    with pytest.raises(DataFileError, match="2.답변"):
        list(read_qa_tree(tmp_path, Tally("read")))


def test_corpus_forms(tmp_path):
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Define fever.", "input": "", "output": "A raised temperature."}]))
    (tmp_path / "sharegpt.jsonl").write_text(json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                                                           {"from": "gpt", "value": "Hello"}]}) + "\n"
                                             + json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    (tmp_path / "mapped.csv").write_text("问题,回答\n感冒吃什么药？,多休息，多喝水。\n", encoding="gb18030")
    tally = Tally("read")
    assert len(list(read_corpus(tmp_path / "alpaca.json", tally))) == 1
    share = list(read_corpus(tmp_path / "sharegpt.jsonl", tally))
    assert share[0].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tally.rejects[0].where == "line 2" and "end with an assistant" in tally.rejects[0].record
    mapped = list(read_corpus(tmp_path / "mapped.csv", tally, columns={"question": "问题", "answer": "回答"}))
    assert mapped[0].messages[1]["content"] == "多休息，多喝水。"


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"


def test_format_tokens_are_stripped_at_read_time_and_counted():
    tally = Tally("read")
    recs = list(read_corpus(FIXTURES / "ko_qa_eos.csv", tally))
    assert len(recs) == 3
    for r in recs:
        for m in r.messages:
            assert "</s>" not in m["content"] and "<|endoftext|>" not in m["content"]
    assert recs[0].messages[-1]["content"] == "매일 같은 시간에 복용하세요."
    assert tally.fixed["format tokens stripped"] == 3  # records repaired (5 tokens in all)
    assert sum(r.meta["format_tokens_stripped"] for r in recs) == 5 and tally.summary()["fixed"]


def test_inline_user_bot_turns_become_real_turns():
    recs = list(read_corpus(FIXTURES / "huatuo_multiturn.jsonl", Tally("read")))
    roles = [m["role"] for m in recs[0].messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert recs[0].messages[0]["content"] == "我最近总是头痛，怎么办？"
    assert recs[0].messages[2]["content"] == "大概一周了，早上更严重。"
    assert not any("<user>" in m["content"] or "<bot>" in m["content"] for m in recs[0].messages)
    assert len(recs[1].messages) == 2


def test_common_field_names_and_jsonl_saved_as_txt():
    tally = Tally("read")
    recs = list(read_corpus(FIXTURES / "zh_wenda.txt", tally))
    assert len(recs) == 3 and tally.dropped == {}
    assert recs[0].messages[0]["content"].startswith("阿司匹林") and recs[0].meta["language"] == "zh"
    from medtune.io import record_to_messages

    for q, a in [("问题", "回答"), ("질문", "답변"), ("Question", "Answer"), ("Q", "A"), ("prompt", "response"),
                 ("input", "output"), ("instruction", "output")]:
        assert record_to_messages({q: "what is it?", a: "an answer"})[1]["content"] == "an answer"


def test_whole_file_rejection_names_fields_and_columns_mapping():
    tally = Tally("read")
    assert list(read_corpus(FIXTURES / "unmapped_fields.jsonl", tally)) == []
    whole = [r for r in tally.rejects if r.where == "<file>"]
    assert len(whole) == 1 and "提问者" in whole[0].reason and "医生回复" in whole[0].reason
    assert "columns:" in whole[0].reason
    mapped = list(read_corpus(FIXTURES / "unmapped_fields.jsonl", Tally("read"), columns={"question": "提问者", "answer": "医生回复"}))
    assert len(mapped) == 2


def test_xlsx_is_read_wherever_csv_is(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    for row in [["질문", "답변"], ["고혈압 약은 언제 먹나요?", "매일 같은 시간에 드세요.</s>"], [None, None],
                ["숫자 답은?", 3.0]]:
        book.active.append(row)
    book.save(tmp_path / "qa.xlsx")
    recs = list(read_corpus(tmp_path / "qa.xlsx", Tally("read")))
    assert [r.messages[-1]["content"] for r in recs] == ["매일 같은 시간에 드세요.", "3"]
    assert recs[1].meta["doc_id"] == "qa.xlsx:4"  # spreadsheet row number
    book = openpyxl.Workbook()
    for row in [["name", "indication"], ["metformin", "type 2 diabetes"]]:
        book.active.append(row)
    book.save(tmp_path / "kb.xlsx")
    kb = list(read_kb(tmp_path / "kb.xlsx", Tally("read")))
    assert kb[0].meta["name"] == "metformin" and kb[0].fields["indication"] == "type 2 diabetes"
