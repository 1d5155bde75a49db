"""Multiple-choice evaluation: every benchmark format, both scoring modes, bad input, resume, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import EVAL_FIXTURES
from medtune.cli import app
from medtune.eval.backends import EvalError, letter_logprobs, load_backend
from medtune.eval.config import McqConfig
from medtune.eval.mcq import build_messages, choose_letters, parse_answer, pick_shots, run_mcq
from medtune.eval.mcq_data import load_mcq
from medtune.eval.stats import wilson_interval
from medtune.errors import DataFileError
from tests.fake_openai import FakeOpenAI

FIX = EVAL_FIXTURES
GENERIC_MAP = {"id": "qid", "question": "stem", "A": "choice1", "B": "choice2", "C": "choice3", "answer": "key", "subject": "area"}
# file, loader kwargs, expected answers in file order, expected multi flags
FORMATS = [
    ("cmexam.csv", {}, ["C", "B", "ABD", "C"], [False, False, True, False]),
    ("cmb.json", {}, ["B", "C", "AC"], [False, False, True]),
    ("kormedmcqa.csv", {}, ["C", "A", "C", "B"], [False] * 4),
    ("medqa.jsonl", {}, ["C", "B", "B"], [False] * 3),
    ("medmcqa.json", {}, ["C", "A", "D"], [False] * 3),
    ("medmcqa_options.jsonl", {"fmt": "medmcqa"}, ["C", "B"], [False] * 2),
    ("pubmedqa.json", {}, ["A", "B", "C"], [False] * 3),
    ("pubmedqa_test.json", {"ground_truth": FIX / "pubmedqa_ground_truth.json"}, ["A", "B", "C"], [False] * 3),
    ("generic.csv", {"fmt": "generic", "column_map": GENERIC_MAP}, ["A", "A", "A"], [False] * 3),
]


def _cfg_kwargs(kw: dict) -> dict:
    return {"format": kw.get("fmt", "auto"), "column_map": kw.get("column_map", {}), "ground_truth": kw.get("ground_truth")}


@pytest.fixture(scope="module")
def backend(qwen_dir):
    return load_backend(f"tiny={qwen_dir}")


@pytest.mark.parametrize("name,kw,answers,multi", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_loads_with_answers_and_subjects(name, kw, answers, multi):
    items, rejects, fmt = load_mcq(FIX / name, **kw)
    assert rejects == []
    assert [i.answer for i in items] == answers and [i.multi for i in items] == multi
    assert all(len(i.options) >= 2 and i.question for i in items)
    assert len({i.id for i in items}) == len(items)
    if name.startswith("pubmedqa"):
        assert items[0].options == {"A": "yes", "B": "no", "C": "maybe"} and "812 adults" in items[0].context
    if name == "kormedmcqa.csv":
        assert items[1].subject == "nurse" and items[1].id == "nurse-2021-1-17"


def test_bad_records_are_rejected_with_reasons_and_saved(tmp_path, backend):
    items, rejects, _ = load_mcq(FIX / "bad_medqa.jsonl")
    assert [i.id for i in items] == ["b1", "b6"]
    reasons = {r.line: (r.field, r.reason) for r in rejects}
    assert reasons[2][0] == "answer_idx" and "'F'" in reasons[2][1]
    assert reasons[3][0] == "options" and "at least 2" in reasons[3][1]
    assert reasons[4][0] == "id" and "duplicate" in reasons[4][1]
    assert "malformed JSON" in reasons[5][1]
    res = run_mcq(McqConfig(data=FIX / "bad_medqa.jsonl", model="x", output_dir=tmp_path), backend=backend)
    assert res["rejected"] == 4 and res["n"] == 2
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 4


def test_mixed_encodings_error_names_the_line_unless_allowed():
    with pytest.raises(DataFileError, match=r"mixed_encoding.jsonl:2: .*--encoding"):
        load_mcq(FIX / "mixed_encoding.jsonl")
    items, _, _ = load_mcq(FIX / "mixed_encoding.jsonl", encodings=["utf-8", "gb18030"])
    assert items[1].options["A"] == "二甲双胍"


def test_unknown_format_without_mapping_is_a_clear_error(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("stem,key\nWhat?,A\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="--format or a --map"):
        load_mcq(f)


@pytest.mark.parametrize("reply,expected", [
    ("C", "C"), ("(B) because ...", "B"), ("A, C.", "AC"), ("The answer is D.", "D"),
    ("Let me think. A seems wrong.\nAnswer: B", "B"), ("答案：AC", "AC"), ("정답: E", "E"),
    ("A patient like this needs care.", None), ("I am not sure.", None), ("Answer: F", None), ("Yes", "A"),
])
def test_parse_answer(reply, expected):
    options = {"A": "yes", "B": "no", "C": "maybe", "D": "d", "E": "e"}
    assert parse_answer(reply, options) == expected


def test_multi_answer_rule_and_wilson():
    assert choose_letters({"A": -1.0, "B": -5.0, "C": -1.1, "D": -6.0}, multi=True)[0] == "AC"
    assert choose_letters({"A": -1.0, "B": -5.0, "C": -1.1, "D": -6.0}, multi=False)[0] == "A"
    assert wilson_interval(0, 10) == (0.0, 0.2775)
    assert wilson_interval(5, 10) == (0.2366, 0.7634)


def test_loglik_is_one_forward_pass_per_batch_and_matches_unbatched(backend):
    items, _, _ = load_mcq(FIX / "cmexam.csv")
    prompts = [build_messages(i, [], "zh", False) for i in items]
    calls = []
    handle = backend.model.register_forward_hook(lambda m, a, kw, out: calls.append(1), with_kwargs=True)
    try:
        batched = letter_logprobs(backend, prompts, ["".join(i.options) for i in items])
        assert len(calls) == 1
        single = [letter_logprobs(backend, [p], ["".join(i.options)])[0] for p, i in zip(prompts, items)]
    finally:
        handle.remove()
    for b, s in zip(batched, single):
        assert b.keys() == s.keys() == set("ABCDE")
        assert max(abs(b[k] - s[k]) for k in b) < 1e-4


def test_k_shot_uses_other_items_as_earlier_turns():
    items, _, _ = load_mcq(FIX / "medqa.jsonl")
    shots = pick_shots(items[0], items, 2, seed=1)
    assert items[0] not in shots and shots == pick_shots(items[0], items, 2, seed=1)
    msgs = build_messages(items[0], shots, "en", False)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == shots[0].answer
    with pytest.raises(EvalError, match="3-shot"):
        pick_shots(items[0], items, 3, seed=1)


@pytest.mark.parametrize("name,kw,answers,multi", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_scores_in_loglik_mode(tmp_path, backend, name, kw, answers, multi):
    res = run_mcq(McqConfig(data=FIX / name, model="tiny", output_dir=tmp_path, batch_size=3, **_cfg_kwargs(kw)),
                  backend=backend)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert res["mode"] == "loglik" and res["n"] == len(answers) and res["unparseable"] == 0
    assert [r["answer"] for r in rows] == answers
    assert res["correct"] == sum(r["prediction"] == r["answer"] for r in rows)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-3 for r in rows)
    assert res["ci95"][0] <= res["accuracy"] <= res["ci95"][1]
    assert json.loads((tmp_path / "manifest.json").read_text())["inputs"]["data"]


def _oracle(answers_by_question: dict[str, str], style: str):
    """A judge-free endpoint that answers from a key, in a given style, for question stems it knows."""
    def reply(req):
        text = req["messages"][-1]["content"]
        for stem, letters in answers_by_question.items():
            if stem in text:
                return {"plain": letters, "cot": f"Reasoning about the options...\nAnswer: {letters}"}[style]
        return "I cannot tell."
    return reply


@pytest.mark.parametrize("name,kw,answers,multi", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_scores_in_generate_mode_through_an_endpoint(tmp_path, name, kw, answers, multi):
    items, _, _ = load_mcq(FIX / name, **kw)
    key = {it.question: it.answer for it in items[1:]}  # the server does not know the first question
    with FakeOpenAI(reply=_oracle(key, "cot")) as srv:
        res = run_mcq(McqConfig(data=FIX / name, model=f"api={srv.base_url}#judge-free", output_dir=tmp_path,
                                cot=True, **_cfg_kwargs(kw)))
    assert res["mode"] == "generate" and res["cot"] is True
    assert res["correct"] == len(items) - 1 and res["unparseable"] == 1
    assert res["unparseable_rate"] == round(1 / len(items), 4)
    assert res["model_identity"] == {"endpoint": srv.base_url, "model": "judge-free"}


def test_same_model_same_seed_gives_identical_results(tmp_path, qwen_dir):
    outs = []
    for run in ("a", "b"):
        backend = load_backend(f"tiny={qwen_dir}")  # loaded afresh each time
        for mode in ("loglik", "generate"):
            out = tmp_path / run / mode
            run_mcq(McqConfig(data=FIX / "cmexam.csv", model="tiny", mode=mode, shots=1, output_dir=out,
                              generation={"temperature": 0.8, "max_new_tokens": 6}), backend=backend)
            outs.append(((out / "results.json").read_bytes(), (out / "predictions.jsonl").read_bytes()))
    assert outs[0] == outs[2] and outs[1] == outs[3]


def test_killed_run_resumes_only_missing_items(tmp_path, backend):
    cfg = McqConfig(data=FIX / "kormedmcqa.csv", model="tiny", output_dir=tmp_path, batch_size=1)
    first = run_mcq(cfg, backend=backend)
    pred = tmp_path / "predictions.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed while writing item 3
    calls = []
    handle = backend.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = run_mcq(cfg, backend=backend)
    finally:
        handle.remove()
    assert len(calls) == 2 and again["correct"] == first["correct"]
    with pytest.raises(EvalError, match="different run"):
        run_mcq(cfg.model_copy(update={"shots": 1}), backend=backend)


def test_endpoint_failing_mid_run_keeps_finished_items_and_resumes(tmp_path):
    items, _, _ = load_mcq(FIX / "medqa.jsonl")
    key = {it.question: it.answer for it in items}
    cfg = McqConfig(data=FIX / "medqa.jsonl", model="http://x", output_dir=tmp_path, batch_size=1)
    with FakeOpenAI(reply=_oracle(key, "plain"), faults=["ok", "400"]) as srv:
        cfg = cfg.model_copy(update={"model": f"{srv.base_url}#m"})
        with pytest.raises(EvalError, match="re-run"):
            run_mcq(cfg)
        assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 1
        res = run_mcq(cfg)
        assert res["correct"] == 3 and srv.calls == 4  # item 1 was not asked again


def test_cli_mcq_writes_results_and_reports_bad_input(tmp_path, qwen_dir):
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "mcq", str(FIX / "generic.csv"), "--model", str(qwen_dir), "--format", "generic",
                            "--map", "question=stem", "--map", "A=choice1", "--map", "B=choice2", "--map", "C=choice3",
                            "--map", "answer=key", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "results.json").read_text())["n"] == 3
    r = runner.invoke(app, ["eval", "mcq", str(FIX / "mixed_encoding.jsonl"), "--model", str(qwen_dir),
                            "--output-dir", str(tmp_path / "p")])
    assert r.exit_code == 2 and "--encoding" in r.output


def _to_xlsx(csv_path: Path, xlsx_path: Path) -> Path:
    """Write a CSV fixture as a one-sheet workbook (the form benchmarks are often distributed in)."""
    import csv

    import openpyxl

    book = openpyxl.Workbook()
    for row in csv.reader(csv_path.open(encoding="utf-8")):
        book.active.append(row)
    book.save(xlsx_path)
    return xlsx_path


def test_cmexam_spreadsheet_form_with_literal_backslash_n_options(tmp_path):
    for path in (FIX / "cmexam_sheet.csv", _to_xlsx(FIX / "cmexam_sheet.csv", tmp_path / "cmexam.xlsx")):
        items, rejects, fmt = load_mcq(path)
        assert fmt == "cmexam" and not rejects
        assert [it.answer for it in items] == ["C", "B"]
        assert items[0].options == {"A": "120 mmHg", "B": "130 mmHg", "C": "140 mmHg", "D": "150 mmHg", "E": "160 mmHg"}
        assert items[1].subject == "内分泌科"


def test_xls_without_xlrd_and_a_broken_xlsx_are_clear_errors(tmp_path, monkeypatch):
    bad = tmp_path / "broken.xlsx"
    bad.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DataFileError, match="broken.xlsx.*not a readable .xlsx"):
        load_mcq(bad)
    import sys

    monkeypatch.setitem(sys.modules, "xlrd", None)
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(DataFileError, match="pip install xlrd"):
        load_mcq(tmp_path / "old.xls")


def test_letter_collapse_is_flagged_and_content_free_calibration_recovers(tmp_path, monkeypatch):
    """A model with a strong prior for "B" (as the base pack on CMExam): raw predictions collapse on B;
    dividing by the probabilities for an "N/A" question (Zhao et al. 2021) leaves the signal."""
    import math as m

    import medtune.eval.mcq as mcq

    items, _, _ = load_mcq(FIX / "cmexam_sheet.csv")
    gold = {it.question: it.answer for it in items}

    def fake_logprobs(backend, prompts, letters):
        out = []
        for p, ls in zip(prompts, letters):
            text = p[-1]["content"]
            right = next((a for q, a in gold.items() if q in text), None)
            out.append({k: m.log(0.8 if k == "B" else 0.05) + (m.log(3) if k == right else 0) for k in ls})
        return out

    class Fake:
        name, identity, is_local = "fake", "fake-1", True

    monkeypatch.setattr(mcq, "letter_logprobs", fake_logprobs)
    res = run_mcq(McqConfig(data=FIX / "cmexam_sheet.csv", model="fake", mode="loglik", calibrate=True,
                            output_dir=tmp_path / "out"), backend=Fake())
    dist = res["option_distribution"]
    assert dist["collapse"] and dist["top"] == "B" and dist["predicted"] == {"B": 1.0} and dist["gold"] == {"B": 0.5, "C": 0.5}
    assert res["accuracy"] == 0.5 and res["debiased"]["accuracy"] == 1.0 and len(res["debiased"]["ci95"]) == 2
    assert not res["debiased"]["option_distribution"]["collapse"]
    from medtune.eval.report import write_report

    write_report([tmp_path / "out"], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "COLLAPSE on B (100%)" in page and "B 100% / 50%" in page and "debiased [95% CI]" in page


def test_cli_mcq_takes_a_recipe_and_set_like_train(tmp_path, qwen_dir):
    """`medtune eval mcq RECIPE --set mcq.FIELD=...` works the way `medtune train RECIPE --set` does."""
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"mcq:\n  data: {FIX / 'generic.csv'}\n  model: {qwen_dir}\n  format: generic\n"
                      "  column_map: {question: stem, A: choice1, B: choice2, C: choice3, answer: key}\n"
                      f"  output_dir: {tmp_path / 'o'}\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["eval", "mcq", str(recipe), "--set", "mcq.max_items=2", "--batch-size", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "results.json").read_text())["n"] == 2
    r = CliRunner().invoke(app, ["eval", "mcq", str(recipe), "--set", "mcq.max_itemz=2"])
    assert r.exit_code == 2 and "did you mean 'max_items'" in r.output


CMEXAM_VAL = FIX / "cmexam_val_shape.csv"  # CMExam's val.xlsx columns: Question, Options ("A xxx\nB yyy" with a literal \n), Answer, Explanation


def test_cli_calibrate_runs_on_a_cmexam_workbook_and_reports_both_accuracies(tmp_path, qwen_dir):
    """Issue 24.1: `eval mcq ... --calibrate` crashed (the content-free cache key held the model's identity dict)."""
    book = _to_xlsx(CMEXAM_VAL, tmp_path / "val.xlsx")
    r = CliRunner().invoke(app, ["eval", "mcq", str(book), "--model", str(qwen_dir), "--calibrate",
                                 "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["format"] == "cmexam" and res["n"] == 6 and res["rejected"] == 3  # as in the real file: 'nan', a gap
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert any("empty value as pandas writes it" in x for x in reasons) and any("not A, B, C" in x for x in reasons)
    raw, cal = res["option_distribution"]["predicted"], res["debiased"]["option_distribution"]["predicted"]
    assert abs(sum(raw.values()) - 1) < 1e-3 and abs(sum(cal.values()) - 1) < 1e-3
    assert "calibrated (content-free" in r.output and "predicted letters:" in r.output
    prior = res["debiased"]["content_free_prior"]["zh ABCDE"]  # what the calibration divided by, shown too
    assert set(prior) == set("ABCDE") and abs(sum(prior.values()) - 1) < 1e-3 and "content-free prior (zh ABCDE)" in r.output
    rows = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert all(x["prediction_debiased"] for x in rows) and any(x["multi"] for x in rows)


def test_collapse_warning_suggests_an_option_the_cli_accepts(tmp_path, qwen_dir, monkeypatch):
    """Issue 24.2: the warning said `try --set calibrate=true`, which the CLI refused (unknown key); the
    test runs exactly what the warning now suggests."""
    import math as m
    import re

    import medtune.eval.mcq as mcq

    monkeypatch.setattr(mcq, "letter_logprobs", lambda backend, prompts, letters: [
        {k: m.log(0.8 if k == "B" else 0.05) for k in ls} for ls in letters])  # a model that always says B
    base = ["eval", "mcq", str(_to_xlsx(CMEXAM_VAL, tmp_path / "val.xlsx")), "--model", str(qwen_dir)]
    r = CliRunner().invoke(app, [*base, "--output-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "letter collapse: B" in r.output
    suggested = re.search(r"rerun with (--[a-z-]+)", " ".join(r.output.split())).group(1)
    r = CliRunner().invoke(app, [*base, suggested, "--output-dir", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "calibrated (content-free" in r.output and "rerun with" not in r.output
    assert json.loads((tmp_path / "b" / "results.json").read_text())["debiased"]["accuracy"] is not None


@pytest.mark.slow
def test_cli_calibrate_on_the_default_pack(tmp_path):
    """The acceptance run: a CMExam-format workbook, the default pack, raw and calibrated accuracy with letter shares."""
    from medtune.models import PACKS, pack_status

    DEFAULT_PACK = "qwen2.5-coder-0.5b-instruct"
    if not pack_status(PACKS[DEFAULT_PACK])["cached"]:
        pytest.skip(f"{DEFAULT_PACK} is not prepared (medtune models prepare {DEFAULT_PACK})")
    book = _to_xlsx(CMEXAM_VAL, tmp_path / "val.xlsx")
    r = CliRunner().invoke(app, ["eval", "mcq", str(book), "--model", DEFAULT_PACK, "--max-items", "2", "--calibrate",
                                 "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["n"] == 2 and 0 <= res["debiased"]["accuracy"] <= 1 and res["debiased"]["option_distribution"]["predicted"]
    assert "calibrated (content-free" in r.output and "predicted letters:" in r.output
