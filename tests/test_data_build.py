"""`medtune data build` end to end against a real local teacher server; kill/resume; the run stage."""

from __future__ import annotations

import pytest

import hashlib
import json
import os
import re
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
    advice = re.search(r"--set (\S+=\S+)", " ".join(res.output.split())).group(1)  # the override it names is a real key
    assert advice == "data.teacher.allow_sensitive_remote=true"
    assert load_recipe(recipe, [advice]).data.teacher.allow_sensitive_remote is True


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


# ----------------------------------------------------------------------------- issue 24: real public files, second pass
FIXTURES = ROOT / "tests" / "fixtures" / "data"


def assert_one_count_table(output: str, out: Path) -> dict:
    """Every count of every step (seen, kept, dropped, fixed, cut, skipped, not returned) is in the printed
    summary, in stats.json and in DATA_CARD.md, rendered from the same rows; returns stats["steps"]."""
    from medtune.data.records import COUNTS, count_rows

    steps = json.loads((out / "stats.json").read_text(encoding="utf-8"))["steps"]
    card = (out / "DATA_CARD.md").read_text(encoding="utf-8")
    for step, seen, kept, *cells in count_rows(steps):
        assert "| " + " | ".join([step, seen, kept, *(c.replace("|", "\\|") for c in cells)]) + " |" in card
        printed = f"  {step}: seen {seen}, kept {kept}" + "".join(f", {k} {c}" for k, c in zip(COUNTS.values(), cells) if c)
        assert printed in output.splitlines(), (printed, output)
    return steps


def _build(tmp: Path, teacher, sets: list[str] = (), **data):
    with FakeOpenAI(reply=teacher) as srv:
        recipe = write_recipe(tmp, srv.base_url, validation_fraction=0.0, **data)
        res = CliRunner().invoke(app, ["data", "build", str(recipe), *sets])
    assert res.exit_code == 0, res.output
    return res, tmp / "run" / "data"


def test_stripped_format_tokens_are_in_the_audit_the_card_and_the_summary(tmp_path):
    """24.3: a Korean QA CSV whose cells end in </s>: the read step fixed them, but the audit said 0 and the card nothing."""
    res, out = _build(tmp_path, teacher_reply, sources=[{"path": str(FIXTURES / "ko_qa_eos.csv"), "type": "corpus"}])
    a = json.loads((out / "stats.json").read_text())["audit"]["format_tokens"]
    assert a["records"] == 0 and a["stripped_records"] == 3 and a["stripped_tokens"] == 5
    assert "format tokens stripped when read: 3 kept records (5 tokens)" in (out / "DATA_CARD.md").read_text()
    steps = assert_one_count_table(res.output, out)
    assert steps[f"read:corpus:{FIXTURES / 'ko_qa_eos.csv'}"]["fixed"] == {"format tokens stripped": 3}
    assert all(r["meta"]["format_tokens_stripped"] for r in lines(out / "train.jsonl"))


def _dialogue_teacher(seen: list[str], tasks: str, answer: str):
    def reply(req):
        c = req["messages"][-1]["content"]
        seen.append(c)
        return tasks if "{" not in c and ("示例任务" in c or "example tasks" in c) else answer
    return reply


def test_chinese_seeds_get_chinese_prompts_and_missing_and_cut_answers_are_counted(tmp_path):
    """24.4 + 24.5: Chinese seeds (no `language`) got English prompts; "Task 1:" stayed in the task; 1 of 2 tasks
    came back uncounted; an answer that used all of max_tokens was kept without being counted as cut."""
    seen: list[str] = []
    cut_answer = "1. 多喝水并注意休息。2. 按时服用退烧药。3. 观察精神状态。4. **注意"  # ends mid-phrase
    teacher = _dialogue_teacher(seen, "Task 1: 孩子发烧到38.5度，需要马上去医院吗？", cut_answer)
    res, out = _build(tmp_path, teacher, ["--set", f"data.teacher.max_tokens={len(cut_answer)}"], sources=[],
                      dialogue={"seed_file": str(FIXTURES / "dialogue_seeds_zh.json"), "tasks_per_round": 2})
    assert "请写出2个新的" in seen[0] and "Write" not in seen[0]  # the Chinese template
    rows = lines(out / "train.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == ["孩子发烧到38.5度，需要马上去医院吗？"]
    assert rows[0]["meta"]["answer_cut"] and rows[0]["meta"]["language"] == "zh"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["audit"]["answers_cut"]["by_teacher_limit"] == 1
    steps = assert_one_count_table(res.output, out)
    assert steps["generate:dialogue"]["not_returned"] == {"tasks asked for, not in the teacher's reply": 1}
    assert steps["generate:dialogue"]["cut"] == {"answer reached the teacher's max_tokens": 1}


def test_chinese_dialogue_skips_category_headers_and_keeps_multi_line_tasks(tmp_path):
    """24.6: "**给出医学建议**" became a task, a numbered task on two lines became two, and seeds without a
    category put the English word "general" into the Chinese prompt."""
    seen: list[str] = []
    tasks = "**给出医学建议**\n1. 我有高血压，\n最近头晕得厉害，需要换药吗？\n2. 老人夜里总是咳嗽，要注意什么？"
    res, out = _build(tmp_path, _dialogue_teacher(seen, tasks, "建议尽快就医，由医生评估后调整治疗。"), sources=[],
                      dialogue={"seed_file": str(FIXTURES / "dialogue_seeds_zh.json"), "tasks_per_round": 2, "language": "zh"})
    assert "general" not in seen[0] and "常见健康咨询" in seen[0]
    asked = sorted(r["messages"][0]["content"] for r in lines(out / "train.jsonl"))
    assert asked == ["我有高血压，\n最近头晕得厉害，需要换药吗？", "老人夜里总是咳嗽，要注意什么？"]
    assert not assert_one_count_table(res.output, out)["generate:dialogue"]["not_returned"]


def test_a_guideline_source_with_generator_none_is_counted_and_warned_about(tmp_path):
    """24.7: 30 guideline records read, 0 generated, no warning."""
    src = [{"path": str(FIXTURES / "guideline_update_zh.txt"), "type": "guideline", "generator": "none", "max_chars": 120},
           {"path": str(FIXTURES / "zh_wenda.txt"), "type": "corpus"}]
    res, out = _build(tmp_path, teacher_reply, sources=src)
    steps = assert_one_count_table(res.output, out)
    read = steps[f"read:guideline:{FIXTURES / 'guideline_update_zh.txt'}"]["kept"]
    assert read >= 2 and f"guideline_update_zh.txt: {read} guideline records read, none used" in res.output
    assert steps["generate:none"]["skipped"] == {"guideline records with generator none (only qa_tree / corpus records pass through)": read}


def test_a_guideline_update_date_is_not_phi_but_an_admission_date_is(tmp_path):
    """24.8: "该指南于2020年3月1日更新" (a guideline's update date) became [DATE]."""
    def teacher(req):
        c = req["messages"][-1]["content"]
        if "问题：" not in c:
            return "1. 这段内容说了什么？"
        return "原文：" + c.split("<passage>")[1].split("</passage>")[0].strip()
    res, out = _build(tmp_path, teacher, sources=[{"path": str(FIXTURES / "guideline_update_zh.txt"), "type": "guideline",
                                                   "questions_per_item": 1, "max_chars": 2000}])
    answers = [r["messages"][-1]["content"] for r in lines(out / "train.jsonl")]
    assert any("该指南于2020年3月1日更新" in a for a in answers)
    assert any("患者于[DATE]入院" in a for a in answers) and not any("2021年5月3日" in a for a in answers)
    assert json.loads((out / "stats.json").read_text())["phi_replacements"] == {"DATE": 1}
    assert assert_one_count_table(res.output, out)["filter:phi"]["fixed"] == {"[DATE] placeholders written": 1}


def test_a_question_about_a_document_in_the_same_prompt_is_not_flagged(tmp_path):
    """24.9: a KQMA-style row ("문서: ...\\n질문: 이 글에서 ...") was flagged as referring to an absent document."""
    res, out = _build(tmp_path, teacher_reply, sources=[{"path": str(FIXTURES / "kqma_documents_ko.csv"), "type": "corpus"}])
    d = json.loads((out / "stats.json").read_text())["audit"]["dangling_references"]
    assert d["records"] == 1 and "불면증" in d["examples"][0]["text"]  # only the row without its document


def test_filter_rejects_name_the_field_and_show_the_record(tmp_path):
    """24.11: rejects of the filters had an empty `field` and `record`; the audit's examples ended in ": "."""
    res, out = _build(tmp_path, teacher_reply, ["--set", "data.filters.max_chars=15"],
                      sources=[{"path": str(FIXTURES / "zh_wenda.txt"), "type": "corpus"}])
    rejects = [r for r in lines(out / "rejects.jsonl") if r["step"] == "filter:length"]
    assert len(rejects) == 2 and all(r["field"] == "answer" and r["record"].startswith("Q: ") and " | A: " in r["record"]
                                     for r in rejects)
    top = json.loads((out / "stats.json").read_text())["audit"]["top_reject_reasons"][0]
    assert top["reason"] == "answer longer than 15 chars"
    assert all("[answer]: Q: " in e and not e.endswith(": ") for e in top["examples"])
    assert_one_count_table(res.output, out)


def test_min_answer_support_drops_teacher_answers_the_passage_does_not_support(tmp_path):
    def reply(req: dict) -> str:
        c = req["messages"][-1]["content"]
        if "What should a patient do?" in c:
            return "Yes."  # no word of the passage: unsupported
        return teacher_reply(req)  # questions, or an answer quoting the passage

    recipe = write_recipe(tmp_path, "http://unused", sources=[
        {"path": str(SOURCES / "guidelines"), "type": "guideline", "questions_per_item": 2}])
    with FakeOpenAI(reply=reply) as srv:
        res = CliRunner().invoke(app, ["data", "build", str(recipe), "--set", f"data.teacher.base_url={srv.base_url}",
                                       "--set", "data.min_answer_support=0.5"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "data"
    kept = lines(out / "train.jsonl") + lines(out / "validation.jsonl")
    step = json.loads((out / "stats.json").read_text())["steps"]["generate:guideline-qa"]
    assert step["kept"] == len(kept) > 0 and all(r["messages"][-1]["content"] != "Yes." for r in kept)
    assert step["dropped"] == {"answer wording not in the source (support < 0.5)": len(kept)}  # one of each two
    rejects = lines(out / "rejects.jsonl")
    assert sum("not in the source" in r["reason"] for r in rejects) == len(kept)
