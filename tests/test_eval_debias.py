"""MCQ debiasing: PriDe (Zheng et al. 2024) beside content-free calibration, on a model collapsed onto one letter."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtune.cli import app
from medtune.eval.config import McqConfig
from medtune.eval.mcq import cyclic_shift, pride_prior, run_mcq
from medtune.eval.mcq_data import MCQItem, load_mcq
from medtune.eval.report import comparisons, write_report

MIXED = Path(__file__).parent.parent / "examples" / "eval" / "mcq_mixed.jsonl"
FIX = Path(__file__).parent / "fixtures" / "eval"


class Fake:
    name, identity, is_local = "collapsed", {"model": {"toy": "prefers A"}}, True


def collapsed_logprobs(gold_text: dict[str, str], prior_a: float = 0.85, signal: float = 3.0):
    """A toy scorer that reads the options shown in each prompt: letter A gets ``prior_a`` of the mass,
    the others share the rest, and whichever letter shows the gold option text is ``signal`` times likelier.
    It prefers A so strongly that it answers A to every question."""

    def fake(backend, prompts, letters):
        out = []
        for messages, ls in zip(prompts, letters):
            text = messages[-1]["content"]
            shown = dict(re.findall(r"^([A-J])\. (.*)$", text, flags=re.M))
            right = next((v for q, v in gold_text.items() if q in text), None)  # None: the content-free "N/A" question
            out.append({k: math.log(prior_a if k == "A" else (1 - prior_a) / (len(ls) - 1))
                        + (math.log(signal) if shown[k] == right else 0.0) for k in ls})
        return out

    return fake


def test_cyclic_shift_moves_texts_and_answer_together():
    it = MCQItem(id="q", question="?", options={"A": "a", "B": "b", "C": "c", "D": "d"}, answer="C")
    s1 = cyclic_shift(it, 1)
    assert s1.options == {"A": "b", "B": "c", "C": "d", "D": "a"} and s1.answer == "B"
    assert [cyclic_shift(it, s).options[cyclic_shift(it, s).answer] for s in range(4)] == ["c"] * 4
    multi = MCQItem(id="m", question="?", options={"A": "a", "B": "b", "C": "c"}, answer="AC", multi=True)
    assert cyclic_shift(multi, 2).answer == "AB"  # a -> B, c -> A


def test_pride_prior_cancels_the_content():
    """Observed = prior x content: the mean log-probability over cyclic shifts gives back the prior exactly."""
    it = MCQItem(id="q", question="?", options={"A": "a", "B": "b", "C": "c"}, answer="B")
    prior, content = {"A": 0.6, "B": 0.3, "C": 0.1}, {"a": 0.2, "b": 0.7, "c": 0.1}
    shifts = []
    for s in range(3):
        shown = cyclic_shift(it, s).options
        z = sum(prior[k] * content[shown[k]] for k in "ABC")
        shifts.append({k: math.log(prior[k] * content[shown[k]] / z) for k in "ABC"})
    est = pride_prior([it], {"q": shifts})["ABC"]
    assert est == pytest.approx(prior, abs=1e-9)


def test_pride_recovers_accuracy_of_a_model_collapsed_on_letter_a(tmp_path, monkeypatch):
    import medtune.eval.mcq as mcq

    items, _, _ = load_mcq(MIXED)
    gold_share_a = sum(it.answer == "A" for it in items) / len(items)
    monkeypatch.setattr(mcq, "letter_logprobs", collapsed_logprobs({it.question: it.options[it.answer] for it in items}))
    res = run_mcq(McqConfig(data=MIXED, model="collapsed", pride=True, calibrate=True, output_dir=tmp_path / "out"), backend=Fake())
    dist = res["option_distribution"]
    assert dist["collapse"] and dist["predicted"] == {"A": 1.0}
    assert res["accuracy"] == pytest.approx(gold_share_a, abs=1e-4)  # raw accuracy = the gold share of A
    p = res["pride"]
    assert p["accuracy"] > gold_share_a + 0.3 and p["accuracy"] == 1.0  # prior divided out: the signal decides
    assert p["estimation_items"] == 5 and p["forward_passes"] == 20  # 5% of 30 is 2: at least 5, x 4 orders
    assert p["prior"]["ABCD"]["A"] > 0.8 and not p["option_distribution"]["collapse"]
    assert res["verdict"]["uses"] == "pride" and res["verdict"]["accuracy"] == p["accuracy"]
    rows = [json.loads(line) for line in open(tmp_path / "out" / "predictions.jsonl", encoding="utf-8")]
    assert sum(r["pride_estimation"] for r in rows) == 5 and all("correct_pride" in r for r in rows)
    write_report([tmp_path / "out"], tmp_path / "report.html")
    page = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "PriDe debiased [95% CI]" in page and "content-free debiased [95% CI]" in page
    assert f"{res['pride']['accuracy']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]" in page and "| PriDe |" in page


def test_comparison_uses_the_verdict_accuracy_with_a_paired_test(tmp_path, monkeypatch):
    import medtune.eval.mcq as mcq

    items, _, _ = load_mcq(MIXED)
    gold = {it.question: it.options[it.answer] for it in items}
    for name, signal in (("base", 1.0), ("finetuned", 3.0)):  # base: no signal at all; fine-tuned knows the answers
        monkeypatch.setattr(mcq, "letter_logprobs", collapsed_logprobs(gold, signal=signal))
        run_mcq(McqConfig(data=MIXED, model=name, pride=True, output_dir=tmp_path / name), backend=type("B", (Fake,), {"name": name})())
    results = [{**json.loads((tmp_path / n / "results.json").read_text()), "_dir": tmp_path / n} for n in ("base", "finetuned")]
    (c,) = comparisons(results)
    assert c["measure"] == "MCQ accuracy, PriDe-debiased (mcq_mixed.jsonl)"
    assert c["finetuned"][0] == 1.0 and c["base"][0] < 0.5 and c["verdict"].startswith("better") and c["paired_p"] < 0.05


def test_verdict_naming_an_accuracy_not_computed_is_a_clear_error(tmp_path, qwen_dir):
    r = CliRunner().invoke(app, ["eval", "mcq", str(FIX / "medqa.jsonl"), "--model", str(qwen_dir),
                                 "--verdict", "pride", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "verdict=pride needs the pride accuracy: set pride=true" in r.output


def test_cli_pride_and_calibration_on_a_tiny_model(tmp_path, qwen_dir):
    """Both debiasing methods through the CLI on a real (random) model; the content-free cache takes a dict identity."""
    r = CliRunner().invoke(app, ["eval", "mcq", str(FIX / "medqa.jsonl"), "--model", str(qwen_dir), "--pride",
                                 "--calibrate", "--verdict", "calibrated", "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {"debiased", "pride"} <= set(res) and res["verdict"]["uses"] == "calibrated"
    assert res["pride"]["estimation_items"] == 3 and res["pride"]["forward_passes"] == 15  # 3 questions (all), 5 options each
    assert "the verdict uses the calibrated accuracy" in r.output
