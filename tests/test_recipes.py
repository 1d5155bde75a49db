"""The four reference recipes (QingGeng, Ko-Radiology, HAI, QiZhen) end to end at tiny size.

Each recipe runs as written except for the overrides a smoke test needs: the tiny random model
from conftest, 2 LoRA steps, short generations and, for recipes with teacher-based generators,
a real OpenAI-compatible server on 127.0.0.1 as the teacher (a random tiny model cannot write
parseable questions). Each run must produce data, adapter, merged model and evaluation report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medtune.cli import app
from medtune.recipe import load_recipe, resolve
from medtune.llm import SensitiveDataError
from medtune.run import run_recipe
from medtune.chat_tokens import IGNORE_INDEX, tokenize_messages
from medtune.io import record_to_messages
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"qingeng_medicalgpt_zh": "THUDM/chatglm3-6b", "ko_radiology_gpt": "meta-llama/Llama-2-7b-chat-hf",
           "hai_project_ko_qa": "LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", "qizhen_drug_kb": "hfl/chinese-alpaca-2-7b"}


def teacher_reply(req: dict) -> str:
    """Replies in the form each generator parses: questions, grounded answers, YES, tasks, translations."""
    c = req["messages"][-1]["content"]
    if "YES 或 NO" in c or "YES or NO" in c:
        return "YES"
    if "Translate the following text into" in c:  # distinct Korean text per input, so dedup keeps both turns
        return f"한국어 번역 {hashlib.sha256(c.encode()).hexdigest()[:6]}: 판독 소견을 쉽게 설명합니다."
    if "<report>" in c:
        if "Question:" not in c:
            return "1. What does the impression of this report mean?\n2. Is a follow-up radiograph needed?"
        impression = c.split("IMPRESSION:")[-1].split("</report>")[0].strip()
        return f"The report's impression is: {impression}"
    if "<passage>" in c:
        passage = c.split("<passage>")[1].split("</passage>")[0].strip()
        if "问题：" not in c:
            return "1. 这段内容中提到的主要建议是什么？"
        return "根据原文：" + passage.splitlines()[-1][:60]
    if "任务" in c and "编号" in c:
        return "1. 高血压患者可以喝咖啡吗？\n2. 孩子咳嗽一周不见好，需要做哪些检查？"
    return "建议先注意休息和观察症状，如果症状加重或持续不缓解，请及时到医院就诊。"


def tiny_overrides(tmp_path: Path, model_dir: Path, base_url: str | None = None) -> list[str]:
    out = [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.bf16=false",
           "samples.generation.max_new_tokens=4", "eval.fact_generation.max_new_tokens=4"]
    if base_url:
        out += [f"data.teacher.base_url={base_url}", "data.teacher.model=fake-teacher", "data.teacher.backoff_initial_s=0.01"]
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def assert_full_run(res: dict, out: Path) -> dict:
    """Every stage ran and left its outputs; returns the eval summary."""
    assert [s for s, r in res.items() if r["status"] == "ran"] == ["data", "train", "merge", "samples", "eval"]
    assert lines(out / "data" / "train.jsonl")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "config.json").is_file() and (out / "samples" / "samples.jsonl").is_file()
    assert (out / "eval" / "report.html").is_file() and (out / "eval" / "report.md").is_file()
    return json.loads((out / "eval" / "summary.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_and_names_its_original(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = ROOT / "recipes" / f"{name}.yaml"
    recipe = load_recipe(path)
    header = path.read_text(encoding="utf-8").split("\nmodel:")[0]
    assert recipe.model == "qwen2.5-coder-0.5b-instruct"  # the offline pack by default
    assert f"medtune run recipes/{name}.yaml" in header and RECIPES[name] in header
    assert 0 < recipe.train.max_steps <= 20 and all(s.path.exists() for s in recipe.data.sources)
    assert (ROOT / "docs" / "recipes" / f"{name}.md").is_file()


def test_hai_pairs_by_path_and_id_applies_template_and_masks_prompt(tmp_path, monkeypatch, qwen_dir, tokenizer):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "hai_project_ko_qa.yaml", tiny_overrides(tmp_path, qwen_dir))
    out = tmp_path / "run"
    summary = assert_full_run(run_recipe(recipe), out)
    assert summary["base"]["mcq"]["mcq_mixed.jsonl"]["n"] == 30 and summary["finetuned"]["mcq"]["mcq_mixed.jsonl"]["n"] == 30
    train = lines(out / "data" / "train.jsonl")
    assert all(set(r) == {"instruction", "input", "output", "meta"} for r in train)  # Alpaca instruction/output
    tree = ROOT / "examples" / "sources" / "qa_tree"
    q102 = json.loads((tree / "1.질문" / "당뇨병" / "식이" / "Q_000102.json").read_text(encoding="utf-8"))["question"]
    rec = next(r for r in train if r["instruction"] == q102)
    # Q_000102 is the second question of its folder: its answer is A_000102 (same folder, same id), not A_000101
    assert Path(rec["meta"]["answer_file"]).name == "A_000102.json"
    a102 = json.loads((tree / "2.답변" / "당뇨병" / "식이" / "A_000102.json").read_text(encoding="utf-8"))["answer"]
    assert rec["output"] == "\n\n".join([a102["intro"], a102["body"], a102["conclusion"]])
    assert len(train) == 3 and not any("짝이 되는 질문" in r["output"] for r in train)  # the orphan answer is not used
    stats = json.loads((out / "data" / "stats.json").read_text(encoding="utf-8"))
    assert any("answer without a question" in (step["dropped"] or {}) for step in stats["steps"].values())

    ids, labels = tokenize_messages(tokenizer, record_to_messages(rec))
    assert tokenizer.decode(ids).startswith(f"<|im_start|>user\n{q102}<|im_end|>\n<|im_start|>assistant\n")
    answer_ids = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(answer_ids) == rec["output"] + "<|im_end|>\n"  # loss only on the answer and its end-of-turn


def test_qizhen_reports_three_criteria_on_heldout_phrasings(tmp_path, monkeypatch, qwen_dir):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "qizhen_drug_kb.yaml", tiny_overrides(tmp_path, qwen_dir))
    out = tmp_path / "run"
    summary = assert_full_run(run_recipe(recipe), out)
    train = lines(out / "data" / "train.jsonl")
    facts = lines(ROOT / "examples" / "eval" / "qizhen_facts_heldout.jsonl")
    drugs = lines(ROOT / "examples" / "sources" / "kb" / "drugs_zh_indications.jsonl")
    assert len(train) == 3 * len(drugs)  # 3 training phrasings per drug, no LLM
    trained_questions = {r["messages"][0]["content"] for r in train}
    assert not trained_questions & {f["question"] for f in facts}  # evaluation phrasings were held out
    assert all(any(d["name"] in q for q in trained_questions) for d in drugs)  # every drug was trained on
    for model in ("base", "finetuned"):
        assert set(summary[model]["fact"]) == {"hit_any", "hit_half", "hit_two_thirds", "bleed"}
        assert len(lines(out / "eval" / "fact" / model / "predictions.jsonl")) == len(facts)
    assert "Fact recall" in (out / "eval" / "report.html").read_text(encoding="utf-8")


def test_qingeng_grounds_judges_and_grows_dialogues(tmp_path, monkeypatch, qwen_dir):
    monkeypatch.chdir(ROOT)
    prompts = []
    with FakeOpenAI(reply=lambda req: prompts.append(req["messages"][-1]["content"]) or teacher_reply(req)) as srv:
        recipe = load_recipe(ROOT / "recipes" / "qingeng_medicalgpt_zh.yaml", tiny_overrides(tmp_path, qwen_dir, srv.base_url))
        out = tmp_path / "run"
        summary = assert_full_run(run_recipe(recipe), out)
    records = lines(out / "data" / "train.jsonl") + lines(out / "data" / "validation.jsonl")
    grounded = [r for r in records if r["meta"]["generator"] == "guideline-qa"]
    assert len(grounded) == 2 and all(r["meta"]["judged"] for r in grounded)
    assert sum(r["meta"]["generator"] == "dialogue" for r in records) == 2
    assert sum("YES 或 NO" in p for p in prompts) == 2  # one faithfulness check per grounded answer
    assert any("任务" in p and "编号" in p for p in prompts)  # the recipe's Chinese task prompt was used
    assert summary["base"]["heldout"]["n"] >= 1 and summary["base"]["mcq"]["mcq_mixed.jsonl"]["n"] == 30


def test_ko_radiology_keeps_reports_local_and_translates(tmp_path, monkeypatch, qwen_dir):
    monkeypatch.chdir(ROOT)
    with FakeOpenAI(reply=teacher_reply) as srv:
        recipe = load_recipe(ROOT / "recipes" / "ko_radiology_gpt.yaml", tiny_overrides(tmp_path, qwen_dir, srv.base_url))
        out = tmp_path / "run"
        summary = assert_full_run(run_recipe(recipe), out)
    records = lines(out / "data" / "train.jsonl") + lines(out / "data" / "validation.jsonl")
    assert all(r["meta"]["sensitive"] for r in records)
    assert {r["meta"]["generator"] for r in records} == {"report-qa+context", "report-qa+context+translate"}
    assert all(r["meta"]["language"] == "ko" for r in records if r["meta"]["generator"].endswith("translate"))
    chats = [r for r in records if r["meta"]["generator"] == "report-qa+context"]
    for r in chats:  # multi-turn chat with the report in context, as the original trained
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * 2
        assert r["messages"][0]["content"].startswith("Radiology report:\nFINDINGS:")
    assert summary["base"]["heldout"]["n"] >= 1  # the validation report, scored for base and fine-tuned
    assert summary["base"]["heldout"]["nll_per_token"] != summary["finetuned"]["heldout"]["nll_per_token"]

    remote = load_recipe(ROOT / "recipes" / "ko_radiology_gpt.yaml",
                         [f"output_dir={tmp_path / 'remote'}", "data.teacher.base_url=https://api.example.com/v1",
                          "data.teacher.model=remote-model", "data.teacher.max_retries=0"])
    with pytest.raises(SensitiveDataError):
        run_recipe(remote, only=["data"])


def test_medical_alignment_recipe_chains_sft_then_dpo_on_safety_pairs(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = resolve(load_recipe(ROOT / "recipes" / "medical_alignment.yaml"))
    assert recipe.train.objective == "sft" and recipe.align.objective == "dpo"
    assert recipe.align.model == str(recipe.output_dir / "merged")
    assert recipe.align.train_file == recipe.output_dir / "data" / "pairs.jsonl"
    labelled = [s for s in recipe.data.sources if s.type == "labelled"]
    assert labelled and all("dev" not in s.path.parts for s in labelled)  # trained on train_*, measured on dev
    assert "dev" in recipe.eval.safety_file.parts and recipe.eval.safety_file.exists()
    judged, pj = [s for s in recipe.data.sources if s.generator == "pairwise-judge"], recipe.data.pairwise_judge
    assert judged and all(s.type == "corpus" and s.max_items and s.max_items <= 8 for s in judged)  # a handful of prompts
    assert pj.samples == 2 and pj.sampler.temperature > 0 and pj.sampler.max_tokens <= 128 and pj.judge.base_url is None



def test_medical_alignment_sft_answers_every_labelled_training_message_and_dpo_pairs_are_balanced(tmp_path, monkeypatch):
    """The recipe's SFT sources through `medtune data build`: every labelled training message (never a dev or test
    message) becomes an urgent-care opener or a calm answer; its DPO safety pairs are about half urgent-chosen."""
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "medical_alignment.yaml")
    sft = [s for s in recipe.data.sources if s.generator == "safety-sft"]
    pairs = [s for s in recipe.data.sources if s.type == "labelled" and s.generator is None]
    assert sft and all(s.max_items is None and s.path.name.startswith("train_") for s in sft)
    flagged = [json.loads(x)["expected"] != [] for s in pairs
               for x in s.path.read_text(encoding="utf-8").splitlines()[: s.max_items]]
    assert 0.4 < sum(flagged) / len(flagged) < 0.6
    small = tmp_path / "r.yaml"
    small.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "data": {
        "sources": [{"path": str(s.path), "type": "labelled", "generator": "safety-sft"} for s in sft],
        "validation_fraction": 0.0}}), encoding="utf-8")
    res = CliRunner().invoke(app, ["data", "build", str(small)])
    assert res.exit_code == 0, res.output
    rows = lines(tmp_path / "run" / "data" / "train.jsonl")
    n_messages = sum(len(s.path.read_text(encoding="utf-8").splitlines()) for s in sft)
    assert len(rows) == n_messages and {r["meta"]["language"] for r in rows} == {"zh", "ko", "en"}
    urgent = [r for r in rows if r["meta"]["chosen_is_urgent"]]
    assert 0.3 < len(urgent) / len(rows) < 0.7
    assert all(r["meta"]["emergency_number"] in r["messages"][-1]["content"] for r in urgent)
