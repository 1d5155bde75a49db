"""`medtune data build` end to end against a real local teacher server; kill/resume; the run stage."""

from __future__ import annotations

import pytest

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from medtune.cli import app
from medtune.recipe import load_recipe, resolve
from medtune.data.readers import read_text
from medtune.run import STAGES
from tests.fake_openai import FakeOpenAI, cache_rows

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "examples" / "sources"


def teacher_reply(req: dict) -> str:
    """Questions for question prompts, YES for judge prompts, an answer otherwise; NO for 'pleural'."""
    c = req["messages"][-1]["content"]
    if "YES or NO" in c or "YES 或 NO" in c:
        return "NO" if "pleural" in c.split("Answer:")[-1] else "YES"
    if "<passage>" in c and "Question:" not in c and "问题：" not in c and "질문:" not in c or "<report>" in c and "Question:" not in c:
        return "1. What does this say about the main topic?\n2. What should a patient do?"
    if "new, different tasks" in c:
        return "1. How much water should an adult drink when they have a fever?\n2. How do I tell a cold from the flu?"
    if "Translate the following text into" in c:  # a translation shares no shingles with its source
        return "译文：" + hashlib.sha256(c.encode()).hexdigest()[:12] + "，请按时服药并定期复诊。"
    if "Patient:" in c:
        return "Patient: I feel dizzy.\nDoctor: Since when?\nPatient: Two days.\nDoctor: Drink water and see a doctor if it persists."
    body = c.split(">", 1)[-1][:80] if ("<passage>" in c or "<report>" in c) else c[-80:]
    return "Answer from the source: " + body.replace("\n", " ") + (" pleural" if "effusion" in c else "")


def write_recipe(tmp: Path, base_url: str, **data) -> Path:
    recipe = {"output_dir": str(tmp / "run"), "seed": 7, "data": {
        "sources": [{"path": str(SOURCES / "guidelines"), "type": "guideline", "questions_per_item": 2},
                    {"path": str(SOURCES / "kb" / "drugs.jsonl"), "type": "kb"},
                    {"path": str(SOURCES / "qa_tree"), "type": "qa_tree"},
                    {"path": str(SOURCES / "reports"), "type": "report", "sensitive": True, "questions_per_item": 1}],
        "teacher": {"base_url": base_url, "model": "teacher-m", "backoff_initial_s": 0.01, "concurrency": 4},
        "validation_fraction": 0.2, **data}}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_build_grounded_outputs_with_provenance(tmp_path):
    prompts = []
    with FakeOpenAI(reply=lambda req: prompts.append(req["messages"][-1]["content"]) or teacher_reply(req),
                    faults=["429", "500"]) as srv:
        res = CliRunner().invoke(app, ["data", "build", str(write_recipe(tmp_path, srv.base_url)), "--set", "data.judge=true"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "data"
    train, val = lines(out / "train.jsonl"), lines(out / "validation.jsonl")
    assert train and val
    assert not {r["meta"]["doc_id"] for r in train} & {r["meta"]["doc_id"] for r in val}  # split by document
    grounded = [r for r in train + val if r["meta"]["generator"] == "guideline-qa"]
    assert grounded and all(r["meta"]["teacher_model"] == "teacher-m" and r["meta"]["prompt_template_hash"] for r in grounded)
    for r in grounded:  # the span points to the passage, and the answer prompt contained that passage
        s, e = r["meta"]["char_span"]
        passage = read_text(Path(r["meta"]["source_file"]))[0][s:e]
        q = r["messages"][0]["content"]
        assert any(passage in p and q in p for p in prompts)
    stats = json.loads((out / "stats.json").read_text())
    # 5 usable reports x 1 question; the judge says NO to the 2 answers about effusions (reports 001, 002)
    assert stats["steps"]["generate:report-qa"]["dropped"] == {"judge: answer not supported by the source": 2}
    assert stats["steps"]["generate:report-qa"]["kept"] == 3
    assert stats["teacher"]["retries"] == 2 and stats["records"]["train"] == len(train)
    assert {"kb-template", "guideline-qa", "qa_tree", "report-qa"} <= set(stats["generators"])
    assert "## Counts per step" in (out / "DATA_CARD.md").read_text() and (out / "rejects.jsonl").read_text().count("\n") >= 2


def test_sensitive_source_is_refused_for_a_remote_teacher(tmp_path):
    recipe = write_recipe(tmp_path, "http://203.0.113.9:9/v1")  # TEST-NET address: never contacted
    res = CliRunner().invoke(app, ["data", "build", str(recipe), "--set", "data.sources=[{path: "
                                   f"{SOURCES / 'reports'}, type: report, sensitive: true}}]"])
    assert res.exit_code == 2 and "allow_sensitive_remote" in res.output


def test_dialogue_translate_and_alpaca_output(tmp_path):
    with FakeOpenAI(reply=teacher_reply) as srv:
        recipe = write_recipe(tmp_path, srv.base_url, sources=[], format="alpaca", translate_to="zh", translate_max=1,
                              dialogue={"seed_file": str(SOURCES / "seed" / "seed_tasks.jsonl"), "consultations": 1},
                              filters={"language_check": False}, validation_fraction=0.0)
        res = CliRunner().invoke(app, ["data", "build", str(recipe)])
    assert res.exit_code == 0, res.output
    rows = lines(tmp_path / "run" / "data" / "train.jsonl")
    gens = [r["meta"]["generator"] for r in rows]
    assert gens.count("dialogue") == 1  # the copy of a seed task was dropped by ROUGE-L
    assert "consultation" in gens and "dialogue+translate" in gens and all("instruction" in r for r in rows)
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    assert stats["steps"]["generate:dialogue"]["dropped"] == {"ROUGE-L >= 0.7 to an existing task": 1}



def test_multi_turn_report_chat_keeps_the_report_in_the_first_turn(tmp_path):
    src = [{"path": str(SOURCES / "reports_cxr"), "type": "report", "sensitive": True, "questions_per_item": 2,
            "multi_turn": True, "max_items": 2}]
    with FakeOpenAI(reply=teacher_reply) as srv:
        res = CliRunner().invoke(app, ["data", "build", str(write_recipe(tmp_path, srv.base_url, sources=src,
                                                                          validation_fraction=0.0))])
    assert res.exit_code == 0, res.output
    rows = lines(tmp_path / "run" / "data" / "train.jsonl")
    assert len(rows) == 2 and all(r["meta"]["generator"] == "report-qa+context" for r in rows)
    for r in rows:  # one conversation per report: report + question 1, answer 1, question 2, answer 2
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant", "user", "assistant"] and r["meta"]["turns"] == 2
        first = r["messages"][0]["content"]
        assert first.startswith("Radiology report:\nFINDINGS: ") and "IMPRESSION: " in first
        assert first.endswith("What does this say about the main topic?")
        assert r["messages"][2]["content"] == "What should a patient do?"  # later turns: the question only


@pytest.mark.slow
def test_killed_build_resumes_with_no_repeated_call_and_no_lost_record(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "medtune", "data", "build"]
    with FakeOpenAI(reply=teacher_reply) as srv:  # reference: an uninterrupted build
        recipe = write_recipe(tmp_path / "ref", srv.base_url)
        subprocess.run(cmd + [str(recipe)], env=env, check=True, capture_output=True, timeout=120)
        total = srv.calls
    with FakeOpenAI(reply=teacher_reply, hang_after=5) as srv:
        recipe = write_recipe(tmp_path / "kill", srv.base_url)
        cache = tmp_path / "kill" / "run" / "data" / "teacher_cache.sqlite"
        proc = subprocess.Popen(cmd + [str(recipe)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while cache_rows(cache) < 5 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert cache_rows(cache) == 5 and not (cache.parent / "train.jsonl").exists()  # really killed mid-way
        srv.hang_after = None
        subprocess.run(cmd + [str(recipe)], env=env, check=True, capture_output=True, timeout=120)
    assert set(srv.ok.values()) == {1} and sum(srv.ok.values()) == total  # nothing paid twice
    for name in ("train.jsonl", "validation.jsonl"):  # nothing lost
        assert lines(tmp_path / "kill" / "run" / "data" / name) == lines(tmp_path / "ref" / "run" / "data" / name)


def test_train_stage_defaults_to_the_data_stage_outputs(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, "http://127.0.0.1:9/v1"), ["train.max_steps=1"])
    config, _, _ = STAGES["train"](resolve(recipe), tmp_path / "run" / "adapter")
    assert config["train_file"] == str(tmp_path / "run" / "data" / "train.jsonl")
    assert config["validation_file"] == str(tmp_path / "run" / "data" / "validation.jsonl")
    explicit = load_recipe(write_recipe(tmp_path, "http://127.0.0.1:9/v1"), ["train.train_file=mine.jsonl"])
    assert STAGES["train"](resolve(explicit), tmp_path / "a")[0]["train_file"] == "mine.jsonl"
    assert list(STAGES)[:4] == ["data", "rag", "pretrain", "train"]  # the optional index and pretrain stages sit between them


def test_single_turn_report_qa_carries_its_report_and_max_items_caps_the_read_tally(tmp_path):
    src = [{"path": str(SOURCES / "reports_cxr"), "type": "report", "sensitive": True, "questions_per_item": 2,
            "max_items": 2}]
    with FakeOpenAI(reply=teacher_reply) as srv:
        res = CliRunner().invoke(app, ["data", "build", str(write_recipe(tmp_path, srv.base_url, sources=src,
                                                                          validation_fraction=0.0))])
    assert res.exit_code == 0, res.output
    rows = lines(tmp_path / "run" / "data" / "train.jsonl")
    assert rows and all(r["meta"]["generator"] == "report-qa" for r in rows)
    for r in rows:  # "What does this say ...?" is answerable: the report is in the prompt
        first = r["messages"][0]["content"]
        assert first.startswith("Radiology report:\nFINDINGS: ") and first.endswith("?")
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    read = next(v for k, v in stats["steps"].items() if k.startswith("read:report"))
    assert read["seen"] == 2 and read["kept"] == 2


def test_dialogue_seed_json_array_in_chinese_uses_zh_prompts_and_rejects_bad_seeds(tmp_path):
    seeds = ROOT / "tests" / "fixtures" / "data" / "seed_tasks_zh.json"
    prompts = []

    def reply(req):
        c = req["messages"][-1]["content"]
        prompts.append(c)
        return "1. 孕妇感冒了可以吃什么药？\n2. 儿童咳嗽一周需要去医院吗？" if "编号" in c else "建议咨询医生，按说明书用药。"

    with FakeOpenAI(reply=reply) as srv:
        recipe = write_recipe(tmp_path, srv.base_url, sources=[], validation_fraction=0.0,
                              dialogue={"seed_file": str(seeds), "language": "zh"})
        res = CliRunner().invoke(app, ["data", "build", str(recipe)])
    assert res.exit_code == 0, res.output
    assert prompts and all("Write" not in p for p in prompts)  # no English prompt
    rows = lines(tmp_path / "run" / "data" / "train.jsonl")
    assert len(rows) == 2 and all(r["meta"]["language"] == "zh" for r in rows)
    rejects = lines(tmp_path / "run" / "data" / "rejects.jsonl")
    assert sorted(r["where"] for r in rejects) == ["record 3", "record 4"]


def test_unusable_seed_file_fails_with_reasons_and_a_rejects_file(tmp_path):
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps([{"instruction": "", "output": "x"}, {"task": "no instruction"}]), encoding="utf-8")
    with FakeOpenAI(reply=lambda req: "1. x") as srv:
        res = CliRunner().invoke(app, ["data", "build", str(write_recipe(tmp_path, srv.base_url, sources=[],
                                                                          dialogue={"seed_file": str(seeds)}))])
    assert res.exit_code != 0 and "no usable seed task" in res.output and "record 1" in res.output
    assert len(lines(tmp_path / "run" / "data" / "rejects.jsonl")) == 2


def test_dialogue_in_a_language_without_prompts_fails_early_naming_them(tmp_path):
    with FakeOpenAI(reply=lambda req: "1. x") as srv:
        recipe = write_recipe(tmp_path, srv.base_url, sources=[],
                              dialogue={"seed_file": str(SOURCES / "seed" / "seed_tasks.jsonl"), "language": "ko"})
        res = CliRunner().invoke(app, ["data", "build", str(recipe)])
    assert res.exit_code != 0 and "dialogue_tasks" in res.output and "prompts_dir" in res.output


def test_audit_flags_dangling_references_in_stats_and_card_and_strict_fails(tmp_path):
    src = [{"path": str(ROOT / "tests" / "fixtures" / "data" / "flawed_corpus.jsonl"), "type": "corpus"}]
    with FakeOpenAI(reply=teacher_reply) as srv:
        recipe = write_recipe(tmp_path, srv.base_url, sources=src, validation_fraction=0.0)
        res = CliRunner().invoke(app, ["data", "build", str(recipe)])
        assert res.exit_code == 0, res.output
        assert "DATA QUALITY WARNING" in res.output
        data = tmp_path / "run" / "data"
        a = json.loads((data / "stats.json").read_text())["audit"]
        assert a["dangling_references"]["records"] == 2 and a["format_tokens"]["records"] == 0  # [/INST] stripped at read
        assert json.loads((data / "stats.json").read_text())["steps"]["read:corpus:" + src[0]["path"]]["fixed"]
        assert a["languages"] == {"en": 0.75, "zh": 0.25} and a["answers_cut"]["share"] == 0.0
        assert a["top_reject_reasons"][0]["reason"] == "not a QA record" and a["top_reject_reasons"][0]["examples"]
        card = (data / "DATA_CARD.md").read_text()
        assert "## Audit" in card and "WARNING" in card and "this radiology report" in card
        res = CliRunner().invoke(app, ["data", "build", str(recipe), "--set", "data.strict=true"])
    assert res.exit_code != 0 and "data.strict" in res.output


def test_audit_is_clean_on_grounded_data(tmp_path):
    src = [{"path": str(SOURCES / "reports_cxr"), "type": "report", "sensitive": True, "questions_per_item": 2, "max_items": 2}]
    with FakeOpenAI(reply=teacher_reply) as srv:
        res = CliRunner().invoke(app, ["data", "build", str(write_recipe(tmp_path, srv.base_url, sources=src,
                                                                          validation_fraction=0.0)), "--set", "data.strict=true"])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "run" / "data" / "DATA_CARD.md").read_text()
    assert "clean: no format tokens" in card
def _request_key(req: dict) -> str:
    from medtune.llm import cache_key

    return cache_key(req["model"], req["messages"], {k: v for k, v in req.items() if k not in ("model", "messages")})


def _cached_keys(db: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return {row[0] for row in con.execute("SELECT key FROM replies")}


@pytest.mark.slow
def test_kill_at_random_points_never_asks_a_saved_answer_again(tmp_path):
    """issue 11: kill -9 a data build at several random points; a reply in the cache is never requested again.

    The only calls a resumed build may repeat are those whose answers were still on the wire when the
    process died (at most ``teacher.concurrency`` per kill); every reply is committed before it is used.
    """
    import random

    rng, asked = random.Random(11), []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "medtune", "data", "build"]

    def reply(req):
        asked.append(_request_key(req))
        return teacher_reply(req)

    with FakeOpenAI(reply=reply, latency_s=0.02) as srv:
        recipe = write_recipe(tmp_path, srv.base_url)
        cache = tmp_path / "run" / "data" / "teacher_cache.sqlite"
        saved_at_kill: list[tuple[int, set[str]]] = []
        for _ in range(3):
            target = cache_rows(cache) + rng.randint(2, 12)
            proc = subprocess.Popen(cmd + [str(recipe)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while cache_rows(cache) < target and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            saved_at_kill.append((len(asked), _cached_keys(cache)))
        subprocess.run(cmd + [str(recipe)], env=env, check=True, capture_output=True, timeout=120)
    assert _cached_keys(cache) == set(asked)  # the request keys are the client's cache keys
    for n, saved in saved_at_kill:
        assert not saved & set(asked[n:]), "a reply saved before the kill was asked for again"
    repeats = len(asked) - len(set(asked))
    assert repeats <= 4 * len(saved_at_kill)  # only answers in flight at a kill
    assert (tmp_path / "run" / "data" / "train.jsonl").is_file()


def test_a_source_with_validation_false_stays_whole_in_training():
    from medtune.data.build import split_by_document
    from medtune.data.records import Record

    def rec(src, doc):
        return Record(id=f"{doc}/0", kind="qa", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                      meta={"source_file": src, "doc_id": doc})
    facts = [rec("kb/facts.jsonl", f"facts:{i}") for i in range(10)]
    qa = [rec("corpus/qa.jsonl", f"qa:{i}") for i in range(10)]
    for seed in range(5):
        train, val = split_by_document(facts + qa, 0.5, seed, train_only=(Path("kb"),))
        assert val and all(r.meta["source_file"] == "corpus/qa.jsonl" for r in val)
        assert all(f in train for f in facts) and len(train) + len(val) == 20
    train, val = split_by_document(facts + qa, 0.5, 0)
    assert any(r.meta["source_file"] == "kb/facts.jsonl" for r in val)  # without it, facts can be held out
