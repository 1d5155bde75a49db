"""Filters: keep/drop with reasons, PHI placeholders, near-dup on CJK, decontamination."""

from __future__ import annotations

import json

from medtune.data.filters import (Decontaminator, ExactDedup, NearDedup, PHIScrubber, check_answer, cn_id_valid,
                                  language_filter, length_filter, run_filters)
from medtune.data.generators import parse_consultation, parse_list, rouge_l
from medtune.data.records import Record, Tally


def qa(q: str, a: str, lang: str | None = None, rid: str = "r") -> Record:
    return Record(id=rid, kind="qa", messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                  meta={"language": lang, "source_file": "f.jsonl"} if lang else {"source_file": "f.jsonl"})


def test_answer_length_and_language_checks():
    assert check_answer(qa("What is gout?", "  ")) == (False, "empty answer")
    assert check_answer(qa("What is gout?", "what is GOUT")) == (False, "answer == question")
    assert length_filter(5, 50)(qa("Hi?", "A long enough answer.")) == (False, "question shorter than 5 chars")
    assert length_filter(1, 10)(qa("Why?", "x" * 11)) == (False, "answer longer than 10 chars")
    assert language_filter(qa("高血压怎么办？", "Take your medicine daily.", "zh"))[0] is False
    assert language_filter(qa("고혈압?", "약을 꾸준히 드세요.", "ko")) == (True, "")


def test_exact_and_near_dedup_on_chinese():
    base = "高血压患者应该减少食盐摄入，每天不超过五克，并且规律运动、控制体重、戒烟限酒。"
    near = base.replace("五克", "5克")
    other = "哮喘患者使用吸入剂后应漱口，以减少口腔念珠菌感染的风险，并定期复诊评估控制情况。"
    tallies: dict[str, Tally] = {}
    recs = [qa("如何管理高血压？", base, rid="a"), qa("如何管理高血压？", base, rid="b"),
            qa("如何管理高血压？", near, rid="c"), qa("哮喘吸入剂怎么用？", other, rid="d")]
    kept = list(run_filters(recs, [("exact", ExactDedup()), ("near", NearDedup(0.7, ngram=3, num_perm=128))], tallies))
    assert [r.id for r in kept] == ["a", "d"]
    assert tallies["exact"].dropped == {"exact duplicate": 1} and tallies["near"].dropped == {"near duplicate": 1}
    assert tallies["near"].rejects[0].where == "c"


def test_near_dedup_keeps_kb_template_paraphrases_and_look_alike_entries():
    """Two drugs with the same indication and two phrasings of one question are distinct training
    facts; a corpus pair of the same shape is still removed."""
    def kb(rid, q, a):
        r = qa(q, a, rid=rid)
        r.meta["generator"] = "kb-template"
        return r
    recs = [kb("amlodipine/0", "What is amlodipine used for?", "Indications of amlodipine: hypertension, angina"),
            kb("amlodipine/1", "When is amlodipine prescribed?", "Indications of amlodipine: hypertension, angina"),
            kb("nifedipine/0", "What is nifedipine used for?", "Indications of nifedipine: hypertension, angina"),
            qa("What is amlodipine used for?", "Indications of amlodipine: hypertension, angina", rid="c1"),
            qa("What is nifedipine used for?", "Indications of nifedipine: hypertension, angina", rid="c2")]
    near = NearDedup(0.7, ngram=5, num_perm=128)
    tallies: dict[str, Tally] = {}
    kept = [r.id for r in run_filters(recs, [("near", near)], tallies)]
    assert kept == ["amlodipine/0", "amlodipine/1", "nifedipine/0", "c1"]
    assert near.exempt == 3 and tallies["near"].dropped == {"near duplicate": 1}


def test_phi_placeholders_by_type():
    s = PHIScrubber(mrn_patterns=[r"住院号\s*[:：]?\s*(\d{6,})", r"MRN[:#]?\s*(\d+)"])
    text = ("患者姓名：王小明，身份证11010519491231002X，手机138 1234 5678，2023年5月3日入院，住院号：2023001。"
            "환자명: 김민수, 주민등록번호 900101-1234567, 010-1234-5678. Dr. Jones, MRN# 778899, a.b@clinic.org, "
            "+44 20 7946 0958. XXXX-year-old, seen ___.")
    out = s.scrub(text)
    for leaked in ("王小明", "11010519491231002X", "138 1234 5678", "2023年5月3日", "2023001", "김민수", "900101-1234567",
                   "010-1234-5678", "Jones", "778899", "a.b@clinic.org", "7946"):
        assert leaked not in out, leaked
    assert "XXXX-year-old" in out and "___" in out
    assert s.counts == {"NAME": 3, "ID": 4, "PHONE": 3, "DATE": 1, "EMAIL": 1}


def test_phi_keeps_invalid_ids_and_plain_numbers():
    assert cn_id_valid("11010519491231002X") and not cn_id_valid("110105194912310021")
    s = PHIScrubber()
    text = "ID 110105194912310021; dose 500 mg twice daily; eGFR 45; 991399-1234567"
    assert s.scrub(text) == text and not s.counts


def test_decontamination_char_and_word_ngrams(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in [
        {"question": "空腹血糖达到多少毫摩尔每升可以诊断为糖尿病？请说明标准。"},
        {"messages": [{"role": "user", "content": "Which two classes of blood pressure medicine should never be combined in one patient?"}]},
        {"question": "Short one?"}]), encoding="utf-8")
    d = Decontaminator([bench], word_ngram=8, char_ngram=12)
    assert d.questions == 3 and d.too_short == 1
    assert d(qa("请问：空腹血糖达到多少毫摩尔每升可以诊断为糖尿病", "7.0"))[0] is False
    assert d(qa("Tell me: which two classes of blood pressure medicine should never be combined?", "ACEi + ARB"))[0] is False
    assert d(qa("空腹血糖正常值是多少？", "3.9到6.1。")) == (True, "")
    assert d(qa("short ONE", "An answer.")) == (False, "benchmark question (whole, too short for n-grams)")
    assert d(qa("Short one, please explain?", "An answer.")) == (True, "")


def test_rouge_l_and_teacher_reply_parsing():
    assert rouge_l("How do I tell a cold from the flu?", "How do I tell a cold from the flu?") == 1.0
    assert rouge_l("高血压怎么治疗", "糖尿病如何预防") < 0.3
    assert 0.5 < rouge_l("What are the symptoms of flu?", "What are the symptoms of a cold?") < 1.0
    assert parse_list("Here are questions:\n1. What is A?\n2) What is B?\n- What is A?\n", 5) == ["What is A?", "What is B?"]
    msgs = parse_consultation("Patient: I have a cough.\nDoctor: How long?\nPatient: A week.\nDoctor: Rest and fluids.\nPatient: ok")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert parse_consultation("Doctor: hello") is None


def test_one_character_chinese_answers_are_kept_by_min_chars():
    check = length_filter(2, 100)
    for answer in ("是", "无", "氧"):
        assert check(qa("高血压患者需要长期服药吗？", answer)) == (True, "")
    assert check(qa("Is it?", "y")) == (False, "answer shorter than 2 chars")


def test_phi_dates_only_when_about_a_person():
    s = PHIScrubber()
    law = "《中华人民共和国药品管理法》自2004年12月1日起施行。该药于2019-06-30批准上市。The rule was effective 2020-01-01."
    assert s.scrub(law) == law and not s.counts
    person = "患者2023年5月3日入院，出生日期1950-02-01。환자는 2022년 3월 4일 내원했다. Admitted 03/04/2021."
    out = s.scrub(person)
    assert out.count("[DATE]") == 4 and s.counts == {"DATE": 4}
