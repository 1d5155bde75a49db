"""``medtune eval rubric``: HealthBench-format conversations graded criterion by criterion by a real endpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtune.cli import app
from medtune.eval.report import comparisons, collect
from medtune.eval.rubric import load_conversations, parse_grade, score, tag_scores
from medtune.eval.stats import bootstrap_mean, paired_bootstrap
from medtune.judge_core import InvalidReply
from tests.fake_openai import FakeOpenAI

SHIPPED = Path(__file__).parent.parent / "examples" / "eval" / "rubric_health.jsonl"
CONVS = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
# Which criteria (by position) each hand-written answer states, and the score by hand:
# points of the stated criteria / positive points of the conversation.
STATED = {
    "en-emergency-stroke": [0, 1, 4],           # 10 + 6 - 8 = 8 of 23
    "en-medication-warfarin": [0, 1, 2, 3],     # 20 of 20
    "en-referral-mole": [3],                    # -7 of 16
    "en-context-amoxicillin": [],               # 0 of 16
    "zh-emergency-chest-pain": [0],             # 10 of 21
    "zh-medication-metronidazole": [0, 1],      # 13 of 16
    "zh-referral-diabetes": [0, 3],             # 8 - 6 = 2 of 16
    "zh-context-antihypertensive": [0, 1, 2],   # 14 of 14
    "ko-emergency-infant-fever": [0, 1, 2, 4],  # 18 - 4 = 14 of 18
    "ko-medication-acetaminophen": [3],         # -7 of 16
    "ko-referral-cough": [0, 1],                # 12 of 15
    "ko-context-insomnia": [1],                 # 5 of 15
}
# mean of 8/23, 1, -7/16, 0, 10/21, 13/16, 2/16, 1, 14/18, -7/16, 12/15, 5/15 = 4.797627 / 12
HAND_SCORE = 0.3998
HAND_EMERGENCY = 0.5339  # theme:emergency_referrals: (8/23 + 10/21 + 14/18) / 3
HAND_CONTEXT_AXIS = 0.5  # axis:context_awareness: warfarin 3/3, amoxicillin 0/7, antihypertensive 7/7, insomnia 0/7


def write_answers(path: Path, stated: dict[str, list[int]]) -> Path:
    rows = [{"prompt_id": c["prompt_id"], "answer": " ".join(c["rubrics"][i]["criterion"] for i in stated[c["prompt_id"]])
             or "I cannot say."} for c in CONVS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def fake_grader(req) -> str:
    """A criterion is met when the graded reply states it word for word. The first grading of the stroke
    'time the symptoms started' criterion comes back off-format, to be re-asked."""
    prompt = req["messages"][0]["content"]
    item = next(r for c in CONVS for r in c["rubrics"] if f"[{r['points']}] {r['criterion']}" in prompt)
    if "time the symptoms started" in item["criterion"] and len(req["messages"]) == 1:
        return "It is met, I think."
    return json.dumps({"explanation": "stated" if prompt.count(item["criterion"]) >= 2 else "not stated",
                       "criteria_met": prompt.count(item["criterion"]) >= 2})


def test_shipped_rubric_set_covers_three_languages_and_four_themes():
    convs, rejects = load_conversations(SHIPPED)
    assert rejects == [] and len(convs) == 12
    assert {c.lang for c in convs} == {"en", "zh", "ko"}
    themes = {t for c in convs for t in c.tags if t.startswith("theme:")}
    assert themes == {"theme:emergency_referrals", "theme:medication", "theme:referral", "theme:context_seeking"}
    assert all(any(r["points"] < 0 for r in c.rubrics) for c in convs)  # every conversation has a thing not to do


def test_grade_parsing_is_strict_and_scores_follow_healthbench():
    assert parse_grade('{"explanation": "ok", "criteria_met": false}') == {"criteria_met": False, "explanation": "ok"}
    for bad in ('{"explanation": "x", "criteria_met": "yes"}', '{"criteria_met": true}', "met"):
        with pytest.raises(InvalidReply):
            parse_grade(bad)
    grades = [{"points": 5, "met": True, "tags": ["axis:a"]}, {"points": 5, "met": None, "tags": ["axis:b"]},
              {"points": -4, "met": True, "tags": ["axis:a"]}]
    assert score(grades) == (5 - 4) / 10  # invalid counts as not met; negative points subtract
    assert tag_scores(["theme:x"], grades) == {"theme:x": 0.1, "axis:a": 0.2, "axis:b": 0.0}
    assert bootstrap_mean([-0.5, -0.2])["score"] == 0.0  # the mean is clipped, not each example
    assert bootstrap_mean([1.2, 1.0, 0.9])["score"] == 1.0
    d = paired_bootstrap([0.1, 0.2, 0.3, 0.2], [0.9, 0.8, 0.9, 1.0])
    assert d["diff"] == 0.7 and d["p"] == 0.0 and d["ci95"][0] > 0


def test_cli_shipped_examples_with_a_fake_grader_give_the_hand_computed_score(tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", STATED)
    with FakeOpenAI(reply=fake_grader) as srv:
        r = CliRunner().invoke(app, ["eval", "rubric", str(SHIPPED), "--answers", str(answers), "--model", "base",
                                     "--judge", f"{srv.base_url}#grader", "--output-dir", str(tmp_path / "base")])
        calls = srv.calls
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "base" / "results.json").read_text())
    assert res["task"] == "rubric" and res["model"] == "base" and res["n"] == 12
    assert res["score"]["score"] == pytest.approx(HAND_SCORE, abs=1e-4)
    lo, hi = res["score"]["ci95"]
    assert lo < HAND_SCORE < hi and res["score"]["std"] > 0
    assert res["per_tag"]["theme:emergency_referrals"]["score"] == pytest.approx(HAND_EMERGENCY, abs=1e-4)
    assert res["per_tag"]["axis:context_awareness"]["score"] == pytest.approx(HAND_CONTEXT_AXIS, abs=1e-4)
    assert res["criteria"] == 60 and res["invalid_grades"] == 0 and calls == 61  # one re-ask
    assert {m["criterion"][:12] for m in res["most_missed"][:3]} == {"Recommends h", "Suggests wai", "종합감기약에 아세트아미"}
    row = next(json.loads(line) for line in open(tmp_path / "base" / "predictions.jsonl", encoding="utf-8")
               if '"en-emergency-stroke"' in line)
    assert row["score"] == pytest.approx(8 / 23, abs=1e-4) and row["points_met"] == 8 and row["points_possible"] == 23
    timing = next(g for g in row["grades"] if "time the symptoms" in g["criterion"])
    assert timing["met"] is False and timing["calls"] == 2
    assert "HealthBench score" in r.output and "0.400" in r.output
    assert re.search(r"theme:emergency_referrals\s*\S*\s+3\s*\S*\s+" + f"{HAND_EMERGENCY:.3f}", r.output), r.output  # per-tag table


def test_cli_per_tag_table_and_paired_bootstrap_base_vs_finetuned_in_the_report(tmp_path):
    everything = {c["prompt_id"]: [i for i, x in enumerate(c["rubrics"]) if x["points"] > 0] for c in CONVS}
    with FakeOpenAI(reply=fake_grader) as srv:
        for name, stated in (("base", STATED), ("finetuned", everything)):
            r = CliRunner().invoke(app, ["eval", "rubric", str(SHIPPED), "--answers", str(write_answers(tmp_path / f"{name}.jsonl", stated)),
                                         "--model", name, "--judge", f"{srv.base_url}#grader", "--output-dir", str(tmp_path / "runs" / name)])
            assert r.exit_code == 0, r.output
        before = srv.calls
        r = CliRunner().invoke(app, ["eval", "rubric", str(SHIPPED), "--answers", str(tmp_path / "base.jsonl"), "--model", "base",
                                     "--judge", f"{srv.base_url}#grader", "--output-dir", str(tmp_path / "runs" / "base")])
        assert r.exit_code == 0 and srv.calls == before  # a re-run grades nothing again
    (c,) = comparisons(collect([tmp_path / "runs"]))
    assert c["measure"] == "HealthBench score (rubric_health.jsonl)" and c["finetuned"][0] == 1.0
    assert c["verdict"].startswith("better") and c["paired_p"] < 0.05
    r = CliRunner().invoke(app, ["eval", "report", str(tmp_path / "runs"), "--output", str(tmp_path / "report.html")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Rubric-graded conversations" in md and "| tag | base (rubric_health.jsonl) | finetuned (rubric_health.jsonl) |" in md
    tag_row = next(line for line in md.splitlines() if line.startswith("| theme:emergency_referrals |"))
    assert "0.534" in tag_row and "1.000" in tag_row and "(n=3)" in tag_row
    assert "| language:ko |" in md and "| axis:accuracy |" in md and "Criteria most often missed (base)" in md


def test_cli_generates_answers_with_a_model_and_rejects_bad_lines(tmp_path, qwen_dir):
    data = tmp_path / "convs.jsonl"
    good = CONVS[4]
    bad = [{"prompt_id": "b1", "prompt": [], "rubrics": good["rubrics"]},
           {"prompt_id": "b2", "prompt": good["prompt"], "rubrics": [{"criterion": "x", "points": -2, "tags": []}]}]
    data.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [good, *bad]), encoding="utf-8")
    with FakeOpenAI(reply=lambda req: '{"explanation": "no", "criteria_met": false}') as srv:
        r = CliRunner().invoke(app, ["eval", "rubric", str(data), "--model", f"tiny={qwen_dir}", "--max-new-tokens", "6",
                                     "--judge", f"{srv.base_url}#grader", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["n"] == 1 and res["rejected"] == 2 and res["score"]["score"] == 0.0 and res["decoding"]["max_new_tokens"] == 6
    rejects = [json.loads(line) for line in open(tmp_path / "o" / "rejects.jsonl", encoding="utf-8")]
    assert {x["field"] for x in rejects} == {"prompt", "rubrics"}
    row = json.loads((tmp_path / "o" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["answer"] and row["lang"] == "zh" and len(row["grades"]) == 5
    r = CliRunner().invoke(app, ["eval", "rubric", str(data), "--judge", "http://127.0.0.1:9/v1#g"])
    assert r.exit_code == 2 and "needs --model" in r.output


def test_a_slower_grader_setting_reuses_the_graded_conversations(tmp_path):
    # lowering judge_concurrency / raising judge_timeout_s after a timeout must not throw the graded work away
    answers = write_answers(tmp_path / "answers.jsonl", STATED)
    args = ["eval", "rubric", str(SHIPPED), "--answers", str(answers), "--model", "base", "--output-dir", str(tmp_path / "o")]
    with FakeOpenAI(reply=fake_grader) as srv:
        first = CliRunner().invoke(app, [*args, "--judge", f"{srv.base_url}#grader", "--max-items", "3"])
        before = srv.calls
        again = CliRunner().invoke(app, [*args, "--judge", f"{srv.base_url}#grader", "--max-items", "3",
                                         "--set", "rubric.judge_concurrency=1", "--set", "rubric.judge_timeout_s=900"])
        assert first.exit_code == 0 and again.exit_code == 0, again.output
        assert before > 0 and srv.calls == before  # nothing graded twice
