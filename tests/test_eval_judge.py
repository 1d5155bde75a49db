"""Fact recall, LLM-as-judge (against a real local HTTP judge), answers and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path
import re

import pytest
from typer.testing import CliRunner

from medtune.cli import app
from medtune.eval.backends import load_backend
from medtune.eval.config import AnswersConfig, FactConfig, JudgeConfig, McqConfig
from medtune.eval.fact import run_fact, score_answer
from medtune.text import match_form as normalize
from medtune.eval.judge import parse_rubric, run_judge
from medtune.judge_core import InvalidReply, parse_verdict
from medtune.eval.mcq import run_mcq
from tests.fake_openai import FakeOpenAI
from tests.conftest import EVAL_FIXTURES as FIX

ROWS = [
    {"id": "q1", "prompt": "What is metformin used for?", "base_answer": "It is a vitamin.",
     "ft_answer": "Metformin treats type 2 diabetes (correct)."},
    {"id": "q2", "prompt": "高血压患者应注意什么？", "base_answer": "少盐，规律运动（correct）。", "ft_answer": "多喝咖啡。"},
    {"id": "q3", "prompt": "천식 흡입기 사용 후 무엇을 해야 하나요?", "base_answer": "입을 헹굽니다.", "ft_answer": "입을 헹구세요 (correct)."},
]


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rubric_judge(req):
    """Scores 4 for answers marked (correct)/（correct）, else 2; the first reply about 'vitamin' is off-format;
    answers with 'coffee' (咖啡) always get an out-of-range score."""
    msgs = req["messages"]
    text = msgs[0]["content"]
    answer = text.split("Answer to rate:\n")[-1].split("待评回答：\n")[-1].split("평가할 답변:\n")[-1]
    if "咖啡" in answer:
        return '{"accuracy": 7, "conciseness": 3, "understandability": 3, "rationale": "x"}'
    if "vitamin" in answer and len(msgs) == 1:
        return "Sure, this answer is quite poor."
    acc = 4 if "correct" in answer else 2
    return json.dumps({"accuracy": acc, "conciseness": 3, "understandability": 4, "rationale": "checked"})


def pair_judge(req):
    """Prefers the answer marked (correct) except for the Korean question, where it always says '1' (position bias)."""
    text = req["messages"][-1]["content"]
    if "천식" in text:
        return '{"winner": "1", "rationale": "first"}'
    a1 = re.search(r"(?:Answer 1:|回答 1：)\n(.*?)\n\n", text, re.S).group(1)
    return json.dumps({"winner": "1" if "correct" in a1 else "2", "rationale": "accuracy"})


def test_strict_parsers():
    assert parse_rubric('ok {"accuracy": 3, "conciseness": 2, "understandability": 4, "rationale": "fine"}')["accuracy"] == 3
    for bad in ['{"accuracy": "3", "conciseness": 2, "understandability": 4, "rationale": "x"}',
                '{"accuracy": 5, "conciseness": 2, "understandability": 4, "rationale": "x"}',
                '{"accuracy": 3, "conciseness": 2, "rationale": "x"}', "3/4", '{"accuracy": 3,']:
        with pytest.raises(InvalidReply):
            parse_rubric(bad)
    assert parse_verdict('{"winner": "tie", "rationale": ""}')["winner"] == "tie"
    with pytest.raises(InvalidReply):
        parse_verdict('{"winner": "A"}')


def test_rubric_judge_scores_three_criteria_retries_and_counts_invalid(tmp_path):
    data = _write_rows(tmp_path / "answers.jsonl", ROWS)
    with FakeOpenAI(reply=rubric_judge) as srv:
        cfg = JudgeConfig(data=data, judge=f"{srv.base_url}#judge-7b", answer_columns=["base_answer", "ft_answer"],
                          max_retries=1, output_dir=tmp_path / "j")
        res = run_judge(cfg)
        calls = srv.calls
        again = run_judge(cfg)  # resumed: everything cached / done, no call made
        assert srv.calls == calls
    assert res["judge"]["model"] == "judge-7b" and res["judge"]["base_url"] == srv.base_url
    base, ft = res["rubric"]["base_answer"], res["rubric"]["ft_answer"]
    assert base["invalid"] == 0 and base["accuracy"]["distribution"] == {"1": 0, "2": 2, "3": 0, "4": 1}
    assert ft["invalid"] == 1 and ft["accuracy"]["mean"] == 4.0 and ft["understandability"]["mean"] == 4.0
    rows = [json.loads(x) for x in (tmp_path / "j" / "judgements.jsonl").read_text().splitlines()]
    assert rows[0]["judgement"]["base_answer"]["judge_calls"] == 2  # off-format once, then valid
    assert rows[1]["judgement"]["ft_answer"]["judge_calls"] == 2 and rows[1]["judgement"]["ft_answer"]["scores"] is None
    assert again["rubric"] == res["rubric"]


def test_pairwise_swaps_order_and_reports_inconsistency(tmp_path):
    data = _write_rows(tmp_path / "answers.jsonl", ROWS)
    with FakeOpenAI(reply=pair_judge) as srv:
        res = run_judge(JudgeConfig(data=data, judge=f"{srv.base_url}#j", mode="pairwise",
                                    answer_columns=["ft_answer", "base_answer"], output_dir=tmp_path / "p"))
        assert srv.calls == 6  # 3 rows x 2 orders
    p = res["pairwise"]
    assert (p["win"]["k"], p["loss"]["k"], p["tie"]["k"]) == (1, 1, 1)
    assert p["order_inconsistency"]["k"] == 1 and p["order_inconsistency"]["rate"] == pytest.approx(1 / 3, abs=1e-3)
    rows = [json.loads(x)["judgement"] for x in (tmp_path / "p" / "judgements.jsonl").read_text().splitlines()]
    assert rows[2] == {"verdict": "tie", "order_ab": "ft_answer", "order_ba": "base_answer", "consistent": False,
                       "rationale_ab": "first", "rationale_ba": "first"}


def test_sampled_judge_takes_the_median(tmp_path):
    data = _write_rows(tmp_path / "answers.jsonl", ROWS[:1])

    def noisy(req):  # score = seed % 4 + 1: seeds 42, 43, 44 -> 3, 4, 1 -> median 3
        return json.dumps({"accuracy": req["seed"] % 4 + 1, "conciseness": 2, "understandability": 2, "rationale": "r"})

    with FakeOpenAI(reply=noisy) as srv:
        res = run_judge(JudgeConfig(data=data, judge=f"{srv.base_url}#j", answer_columns=["ft_answer"], temperature=0.7,
                                    samples=3, output_dir=tmp_path / "s"))
    assert res["rubric"]["ft_answer"]["accuracy"]["mean"] == 3.0 and res["judge"]["samples"] == 3


def test_fact_recall_normalisation_synonyms_and_criteria():
    assert normalize("Type-2  Diabetes，ＨＴＮ") == "type 2 diabetes htn"
    s = score_answer("Used for TYPE-2 diabetes and PCOS.", ["type 2 diabetes", "polycystic ovary syndrome", "prediabetes"],
                     {"polycystic ovary syndrome": ["PCOS"]})
    assert s["hits"] == ["type 2 diabetes", "polycystic ovary syndrome"] and s["missed"] == ["prediabetes"]
    assert (s["hit_any"], s["hit_half"], s["hit_two_thirds"]) == (True, True, True)
    s = score_answer("hypertension only", ["hypertension", "heart failure", "angina"], {})
    assert (s["hit_any"], s["hit_half"], s["hit_two_thirds"]) == (True, False, False)
    assert score_answer("diabetic diet", ["diabetes"], {})["hit_any"] is False  # word-bounded for Latin script


def test_fact_recall_through_an_endpoint_reports_three_criteria(tmp_path):
    kb = _write_rows(tmp_path / "kb.jsonl", [
        {"id": "f1", "question": "What are the indications of metformin?", "expected": ["type 2 diabetes", "prediabetes", "polycystic ovary syndrome"]},
        {"id": "f2", "question": "What are the indications of salbutamol?", "expected": ["asthma", "COPD", "bronchospasm"]},
        {"id": "f3", "question": "What are the indications of amlodipine?", "expected": ["hypertension", "angina"]},
        {"id": "f4", "question": "", "expected": ["x"]}])
    replies = {"metformin": "Type 2 diabetes.", "salbutamol": "Asthma and chronic obstructive pulmonary disease.",
               "amlodipine": "Mostly headaches."}

    def reply(req):
        return next(v for k, v in replies.items() if k in req["messages"][-1]["content"])

    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps({"COPD": ["chronic obstructive pulmonary disease"]}))
    with FakeOpenAI(reply=reply) as srv:
        res = run_fact(FactConfig(data=kb, synonyms=syn, model=f"api={srv.base_url}#m", output_dir=tmp_path / "f"))
    assert res["n"] == 3 and res["rejected"] == 1
    assert (res["hit_any"]["k"], res["hit_half"]["k"], res["hit_two_thirds"]["k"]) == (2, 1, 1)


def test_answers_columns_per_model_and_resume(tmp_path, qwen_dir):
    data = tmp_path / "prompts.csv"
    data.write_text("id,prompt\n1,What is asthma?\n2,What is hypertension?\n3,\n", encoding="utf-8")
    out = tmp_path / "answers.csv"
    with FakeOpenAI(reply=lambda req: "api says: " + req["messages"][-1]["content"]) as srv:
        cfg = AnswersConfig(data=data, models=[f"api={srv.base_url}#m", f"tiny={qwen_dir}"], output=out,
                            generation={"max_new_tokens": 4})
        res = run_answers_and_lines(cfg)
        assert res["computed"] == 4 and res["rejected"] == 1
        import csv
        rows = list(csv.DictReader(open(out, encoding="utf-8")))
        assert [r["api_answer"] for r in rows] == ["api says: What is asthma?", "api says: What is hypertension?"]
        assert all("tiny_answer" in r for r in rows)
        again = run_answers_and_lines(cfg)
        assert again["computed"] == 0 and srv.calls == 2


def run_answers_and_lines(cfg):
    from medtune.eval.answers import run_answers

    return run_answers(cfg)


def test_report_is_self_contained_html_with_plots_and_links(tmp_path, qwen_dir):
    data = _write_rows(tmp_path / "answers.jsonl", ROWS)
    for name in ("base", "ft"):
        backend = load_backend(f"{name}={qwen_dir}")
        run_mcq(McqConfig(data=FIX / "cmexam.csv", model=name, output_dir=tmp_path / "runs" / "mcq" / name), backend=backend)
    with FakeOpenAI(reply=pair_judge) as srv:
        run_judge(JudgeConfig(data=data, judge=f"{srv.base_url}#j", mode="pairwise", answer_columns=["ft_answer", "base_answer"],
                              output_dir=tmp_path / "runs" / "judge"))
    r = CliRunner().invoke(app, ["eval", "report", str(tmp_path / "runs"), "--output", str(tmp_path / "report.html")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 3  # accuracy, per-subject, pairwise
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert 'href="runs/mcq/base/predictions.jsonl"' in page and "order inconsistency" in page
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| base | cmexam.csv | loglik | 4 |" in md


def test_fact_questions_from_a_csv_with_separated_items(tmp_path):
    from medtune.eval.fact import load_facts

    fix = Path(__file__).parent / "fixtures" / "eval" / "drug_facts_zh.csv"
    items, rejects = load_facts(fix)
    assert not rejects and [it["expected"] for it in items] == [
        ["2型糖尿病", "多囊卵巢综合征"], ["冠心病", "缺血性脑卒中", "发热"], ["高血压", "心绞痛"]]
    assert items[0]["question"] == "二甲双胍的适应症有哪些？"


def test_fact_file_rejected_whole_says_why_and_writes_rejects(tmp_path):
    from medtune.errors import DataFileError
    from medtune.eval.fact import load_facts

    bad = tmp_path / "facts.csv"
    bad.write_text("drug,indications\nmetformin,type 2 diabetes\naspirin,fever\n", encoding="utf-8")
    with pytest.raises(DataFileError) as e:
        load_facts(bad, rejects_path=tmp_path / "out" / "rejects.jsonl")
    msg = str(e.value)
    assert "no question column" in msg and "indications" in msg and "--question-column" in msg
    assert len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 2
    items, _ = load_facts(bad, question_column="drug", expected_column="indications")
    assert items[1]["expected"] == ["fever"]


def test_fact_bleed_counts_another_entrys_item_but_not_the_asked_entrys_own(tmp_path):
    """Bleed through the CLI: an answer naming a neighbour's item counts; a shared item, an item the
    asked entry's KB text holds, and another source's item do not."""
    facts = _write_rows(tmp_path / "facts.jsonl", [
        {"id": "amlo", "question": "氨氯地平治什么病？", "expected": ["高血压", "心绞痛"]},
        {"id": "furo", "question": "呋塞米治什么病？", "expected": ["水肿", "心力衰竭", "高血压"], "synonyms": {"心力衰竭": ["心衰"]}},
        {"id": "warf", "question": "와파린은 어디에 쓰나요?", "expected": ["심방세동", "폐색전증"]},
        {"id": "rosu", "question": "로수바스타틴은 어디에 쓰나요?", "expected": ["고콜레스테롤혈증", "뇌졸중"]},
        {"id": "met", "question": "What is metformin for?", "expected": ["type 2 diabetes"], "source": "other.jsonl"},
        {"id": "sal", "question": "What is salbutamol for?", "expected": ["asthma"]}])
    kb = _write_rows(tmp_path / "kb.jsonl", [{"name": "와파린", "indications": ["심방세동 환자의 뇌졸중 예방", "폐색전증"]}])
    replies = {"氨氯地平": "氨氯地平用于高血压和心衰。",          # 心衰 is furosemide's, not amlodipine's: bleed
               "呋塞米": "呋塞米用于水肿、高血压。",              # 高血压 is shared: its own, not bleed
               "와파린": "와파린은 심방세동 환자의 뇌졸중 예방에 씁니다.",  # 뇌졸중 is rosuvastatin's, but in warfarin's KB text
               "로수바스타틴": "로수바스타틴은 고콜레스테롤혈증에 씁니다.",
               "metformin": "Metformin is for asthma.",       # salbutamol's item, but another source: not bleed
               "salbutamol": "Salbutamol is for type 2 diabetes."}  # metformin is in another source: not bleed

    def reply(req):
        return next(v for k, v in replies.items() if k in req["messages"][-1]["content"])

    with FakeOpenAI(reply=reply) as srv:
        res = CliRunner().invoke(app, ["eval", "fact", str(facts), "--model", f"api={srv.base_url}#m",
                                       "--set", f"fact.entities={kb}", "--output-dir", str(tmp_path / "f")])
        assert res.exit_code == 0, res.output
        rows = {r["id"]: r for r in map(json.loads, (tmp_path / "f" / "predictions.jsonl").read_text(encoding="utf-8").splitlines())}
        assert rows["amlo"]["bleed"] and rows["amlo"]["bleed_items"] == ["心衰"]
        assert [i for i, r in rows.items() if r["bleed"]] == ["amlo"]
        out = json.loads((tmp_path / "f" / "results.json").read_text(encoding="utf-8"))
        assert out["bleed"]["k"] == 1 and out["bleed"]["n"] == 6
        assert out["by_language"]["zh"] == {"n": 2, "hit_any": 1.0, "hit_half": 1.0, "bleed": 0.5}
        # without the KB, warfarin's correct "stroke prevention in AF" is counted as rosuvastatin's item
        res = CliRunner().invoke(app, ["eval", "fact", str(facts), "--model", f"api={srv.base_url}#m",
                                       "--output-dir", str(tmp_path / "g")])
        rows = {r["id"]: r for r in map(json.loads, (tmp_path / "g" / "predictions.jsonl").read_text(encoding="utf-8").splitlines())}
        assert rows["warf"]["bleed_items"] == ["뇌졸중"]


def test_fact_warns_when_most_answers_hit_the_token_limit_and_the_advice_runs(tmp_path, qwen_dir):
    """Issue 24 (also seen): on a drug-indication CSV every answer of the base pack ran into max_new_tokens and
    `eval fact` said nothing; the tiny random model never ends within 4 tokens either."""
    fix = Path(__file__).parent / "fixtures" / "eval" / "drug_facts_zh.csv"
    base = ["eval", "fact", str(fix), "--model", str(qwen_dir)]
    r = CliRunner().invoke(app, [*base, "--max-new-tokens", "4", "--output-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    stops = json.loads((tmp_path / "a" / "results.json").read_text())["quality"]["stops"]
    assert stops["n"] == 3 and stops["k"] == 0
    assert "3 of 3 answers hit the token limit (max_new_tokens 4)" in r.output
    advice = re.search(r"rerun with (--max-new-tokens \d+)", " ".join(r.output.split())).group(1).split()
    r = CliRunner().invoke(app, [*base, *advice, "--max-items", "1", "--output-dir", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "results.json").read_text())["decoding"]["max_new_tokens"] == int(advice[1])


def test_eval_help_shows_the_defaults_the_run_uses():
    """Issue 24.10: `eval fact --help` showed max_new_tokens = 256 (the class default) while the run used 64."""
    from medtune.eval.config import FactConfig

    out = CliRunner().invoke(app, ["eval", "fact", "--help"]).output
    assert "fact.generation.max_new_tokens = 64" in out and "max_new_tokens = 256" not in out
    assert FactConfig(data="x", model="m").generation.max_new_tokens == 64
    assert "mcq.generation.max_new_tokens = 16" in CliRunner().invoke(app, ["eval", "mcq", "--help"]).output
    from medtune.eval.config import EvalConfig
    from medtune.recipe import field_help

    assert "eval.fact_generation.max_new_tokens = 40" in field_help(EvalConfig, "eval")  # the recipe's eval stage
