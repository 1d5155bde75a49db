"""``medtune eval lm-eval``: lm-evaluation-harness tasks on models medtune loads, offline, folded into the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtune.cli import app

pytest.importorskip("lm_eval", reason="needs the lm-eval extra: pip install 'medtune[lm-eval]'")

ROOT = Path(__file__).parent.parent
LOCAL_TASK = ROOT / "examples" / "eval" / "lm_eval" / "medtune_mcq_mixed.yaml"
FIX = ROOT / "tests" / "fixtures" / "eval"
MEDQA_ROWS = [  # the columns of the harness's medqa_4options dataset (sent1, ending0-3, label), written by us
    {"sent1": "A 60-year-old man has crushing chest pain for 30 minutes. What should be done first?",
     "ending0": "Call emergency services", "ending1": "Drink water", "ending2": "Go to sleep", "ending3": "Take a walk", "label": 0},
    {"sent1": "Which vitamin deficiency causes scurvy?", "ending0": "Vitamin A", "ending1": "Vitamin B12",
     "ending2": "Vitamin C", "ending3": "Vitamin D", "label": 2},
    {"sent1": "Which organ produces insulin?", "ending0": "Liver", "ending1": "Pancreas", "ending2": "Kidney",
     "ending3": "Spleen", "label": 1},
]


def lm_eval_cli(*args: str):
    return CliRunner().invoke(app, ["eval", "lm-eval", *args])


def test_local_task_yaml_on_a_tiny_model_writes_results_that_appear_in_the_report(tmp_path, qwen_dir):
    out = tmp_path / "lm"
    r = lm_eval_cli("--tasks", str(LOCAL_TASK), "--model", f"base={qwen_dir}", "--limit", "6", "--batch-size", "4",
                    "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    res = json.loads((out / "medtune_mcq_mixed" / "results.json").read_text())
    assert res["task"] == "lm_eval" and res["model"] == "base" and res["n"] == 6 and res["n_documents"] == 30
    assert res["metric"] == "acc" and 0 <= res["value"] <= 1 and res["stderr"] > 0
    lo, hi = res["ci95"]
    assert lo <= res["value"] <= hi and res["apply_chat_template"] is True and res["dataset"].startswith("local json")
    rows = [json.loads(line) for line in open(out / "medtune_mcq_mixed" / "predictions.jsonl")]
    assert [r["id"] for r in rows] == [str(i) for i in range(6)]
    assert sum(r["correct"] for r in rows) / 6 == pytest.approx(res["value"], abs=1e-4)
    assert all(r["prediction"] in range(4) and r["correct"] == (r["prediction"] == r["target"]) for r in rows)
    assert list(out.glob("lm_cache-*"))  # the harness's request cache: a re-run scores nothing twice
    r = CliRunner().invoke(app, ["eval", "report", str(out), "--output", str(tmp_path / "report.html")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## lm-evaluation-harness" in md and "medtune_mcq_mixed" in md
    assert f"{res['value']:.3f} ± {res['stderr']:.3f}" in md


@pytest.mark.slow  # a server or trainer in a child process (seconds): full tier
def test_harness_task_on_a_local_copy_of_its_dataset_and_base_plus_adapter(tmp_path, qwen_dir):
    """medqa_4options, the harness's own YAML and prompt code, on a local JSONL; the model is base + a LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = tmp_path / "medqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MEDQA_ROWS), encoding="utf-8")
    adapter = tmp_path / "adapter"
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(adapter)
    out = tmp_path / "lm"
    r = lm_eval_cli("--tasks", "medqa_4options", "--data", f"medqa_4options={data}", "--model", str(qwen_dir),
                    "--adapter", str(adapter), "--no-apply-chat-template", "--num-fewshot", "1", "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    res = json.loads((out / "medqa_4options" / "results.json").read_text())
    assert res["n"] == 3 and set(res["metrics"]) == {"acc", "acc_norm"} and res["apply_chat_template"] is False
    assert res["num_fewshot"] == 1
    assert res["model_identity"]["adapter"]["files"] and str(data.resolve()) in res["dataset"]
    assert "medqa_4options: acc" in r.output


def test_generative_harness_task_keeps_its_filter_and_replies(tmp_path, qwen_dir):
    """kormedmcqa_doctor (generate, then the harness's answer-extraction filter) on our KorMedMCQA-form CSV."""
    out = tmp_path / "lm"
    args = ["--tasks", "kormedmcqa_doctor", "--data", f"kormedmcqa_doctor={FIX / 'kormedmcqa.csv'}", "--model", str(qwen_dir),
            "--limit", "2", "--output-dir", str(out)]
    r = lm_eval_cli(*args)  # the task asks for 1024 new tokens; the tiny model holds 512 positions
    assert r.exit_code == 2 and "refused the run" in r.output and "(set --max-new-tokens)" in r.output
    r = lm_eval_cli(*args, "--max-new-tokens", "8")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "kormedmcqa_doctor" / "results.json").read_text())
    assert res["metric"] == "exact_match [extract_answer]" and res["n"] == 2
    rows = [json.loads(line) for line in open(out / "kormedmcqa_doctor" / "predictions.jsonl", encoding="utf-8")]
    assert [x["target"] for x in rows] == ["C", "A"] and all(isinstance(x["prediction"], str) for x in rows)
    assert all(x["correct"] == (x["exact_match"] == 1.0) for x in rows)


def test_a_group_of_local_tasks_from_an_include_path(tmp_path, qwen_dir):
    """--include-path indexes a folder of task YAMLs by name (here a group of two); the group's aggregate has its own row."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    body = LOCAL_TASK.read_text(encoding="utf-8").replace("../mcq_mixed.jsonl", str(ROOT / "examples" / "eval" / "mcq_mixed.jsonl"))
    for name in ("demo_a", "demo_b"):
        (tasks / f"{name}.yaml").write_text(body.replace("task: medtune_mcq_mixed", f"task: {name}"), encoding="utf-8")
    (tasks / "demo.yaml").write_text("group: demo\ntask: [demo_a, demo_b]\naggregate_metric_list:\n  - metric: acc\n"
                                     "    aggregation: mean\n    weight_by_size: true\nmetadata:\n  version: 1.0\n", encoding="utf-8")
    out = tmp_path / "lm"
    r = lm_eval_cli("--tasks", "demo", "--include-path", str(tasks), "--model", str(qwen_dir), "--limit", "2", "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    a, b, group = (json.loads((out / n / "results.json").read_text()) for n in ("demo_a", "demo_b", "demo"))
    assert a["n"] == b["n"] == 2 and group["n"] == 4 and group["dataset"] == "group of demo_a, demo_b"
    assert group["value"] == pytest.approx((a["value"] + b["value"]) / 2, abs=1e-4)


def test_a_task_whose_data_is_not_local_fails_offline_naming_the_dataset(tmp_path, qwen_dir):
    r = lm_eval_cli("--tasks", "mmlu_clinical_knowledge", "--model", str(qwen_dir), "--output-dir", str(tmp_path / "o"))
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "'mmlu_clinical_knowledge': its dataset cais/mmlu (config clinical_knowledge) is not on this machine" in text
    assert "--data mmlu_clinical_knowledge=FILE.jsonl" in text and "Traceback" not in r.output


def test_unknown_task_group_data_and_missing_extra_are_clear_errors(tmp_path, qwen_dir, monkeypatch):
    r = lm_eval_cli("--tasks", "medqa_4option", "--model", str(qwen_dir))
    assert r.exit_code == 2 and "unknown lm-eval task 'medqa_4option'; did you mean medqa_4options" in r.output
    r = lm_eval_cli("--tasks", "kormedmcqa", "--data", f"kormedmcqa={tmp_path / 'x.jsonl'}", "--model", str(qwen_dir))
    assert r.exit_code == 2 and "is a group; give a file per task" in " ".join(r.output.split())
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    r = lm_eval_cli("--tasks", "medqa_4options", "--model", str(qwen_dir))
    assert r.exit_code == 2 and "pip install 'medtune[lm-eval]'" in r.output


@pytest.mark.slow
def test_acceptance_local_task_on_smollm2(tmp_path):
    """The issue's acceptance form: `medtune eval lm-eval --tasks <a local task> --model smollm2-135m-instruct`."""
    from medtune.models import PACKS, pack_status

    if not pack_status(PACKS["smollm2-135m-instruct"])["installed"]:
        pytest.skip("the smollm2-135m-instruct pack is not installed")
    out = tmp_path / "lm"
    r = lm_eval_cli("--tasks", str(LOCAL_TASK), "--model", "smollm2-135m-instruct", "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    res = json.loads((out / "medtune_mcq_mixed" / "results.json").read_text())
    assert res["n"] == 30 and res["model_identity"]["model"]["pack"] == "smollm2-135m-instruct"
    r = CliRunner().invoke(app, ["eval", "report", str(out), "--output", str(tmp_path / "report.html")])
    assert r.exit_code == 0 and "medtune_mcq_mixed" in (tmp_path / "report.html").read_text(encoding="utf-8")
