"""The knowledge recipes end to end at tiny size: ``knowledge_rag`` (views + RAFT data, closed-book and
RAG fact recall, citation support, not-covered questions) and ``knowledge_table`` (a published table
read by its own columns, asked in its own wording, bleed reported)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import medtune.embed
from medtune import retrieval
from medtune.recipe import load_recipe
from medtune.run import run_recipe
from tests.fake_openai import FakeOpenAI
from tests.test_recipes import lines, teacher_reply

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_encoder(monkeypatch):
    """e5 replaced by a seeded vector per text (the retrieval code path is real)."""
    def vec(text: str) -> np.ndarray:
        v = np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(384).astype(np.float32)
        return v / np.linalg.norm(v)

    monkeypatch.setattr(medtune.embed, "embed", lambda texts, kind="query": np.stack([vec(t) for t in texts])
                        if texts else np.zeros((0, 384), np.float32))
    retrieval.query_vector_of.cache_clear()
    retrieval._cached_index.cache_clear()
    yield
    retrieval.query_vector_of.cache_clear()
    retrieval._cached_index.cache_clear()


def _overrides(tmp_path: Path, model_dir: Path) -> list[str]:
    return [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.bf16=false",
            "eval.max_fact_items=2", "eval.fact_generation.max_new_tokens=4"]


def test_knowledge_rag_recipe_trains_on_views_and_raft_and_scores_both_ways(tmp_path, monkeypatch, qwen_dir, fake_encoder):
    monkeypatch.chdir(ROOT)
    with FakeOpenAI(reply=teacher_reply) as srv:
        recipe = load_recipe(ROOT / "recipes" / "knowledge_rag.yaml", _overrides(tmp_path, qwen_dir) + [
            f"data.teacher.base_url={srv.base_url}", "data.teacher.model=fake-teacher", "data.teacher.backoff_initial_s=0.01",
            "rag.index_dir=" + str(tmp_path / "run" / "index")])
        res = run_recipe(recipe)
    assert res["rag"]["status"] == "ran"
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text(encoding="utf-8"))
    rows = lines(tmp_path / "run" / "data" / "train.jsonl")
    gens = {r["meta"]["generator"] for r in rows}
    assert {"kb-template", "rag-qa", "guideline-qa"} <= gens
    views = {r["meta"].get("view") for r in rows if r["meta"]["generator"] == "kb-template"}
    assert views == {"forward", "reverse", "passage"}
    rag = [r for r in rows if r["meta"]["generator"] == "rag-qa"]
    assert {r["meta"]["covered"] for r in rag} == {True, False} and {r["meta"]["qa_generator"] for r in rag} == {"kb-template", "guideline-qa"}
    index_ids = {json.loads(x)["passage_id"] for x in (tmp_path / "run" / "index" / "passages.jsonl").read_text(encoding="utf-8").splitlines()}
    assert all(set(r["meta"]["context"]) <= index_ids for r in rag)  # distractors come from what the index holds
    for name in ("base", "finetuned"):
        assert {"hit_any", "bleed", "unanswerable_said_so", "answerable_said_not_covered"} <= set(summary[name]["fact"])
        assert {"hit_any", "bleed", "citation_support", "unanswerable_said_so"} <= set(summary[name]["fact_rag"])
    got = json.loads((tmp_path / "run" / "eval" / "fact" / "finetuned+rag" / "results.json").read_text(encoding="utf-8"))
    assert got["n"] == 2 and got["unanswerable"]["n"] == 12  # max_fact_items caps the answerable questions only
    manifest = json.loads((tmp_path / "run" / "eval" / "fact" / "finetuned+rag" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["rag"]["min_answer_support"] == 0.3 and manifest["config"]["rag"]["candidates"] == 1  # the recipe's
    assert "unanswerable: the model says not covered" in (tmp_path / "run" / "eval" / "report.md").read_text(encoding="utf-8")


def test_knowledge_table_recipe_reads_a_published_table_by_its_own_columns(tmp_path, monkeypatch, qwen_dir):
    table = tmp_path / "table.csv"  # the published layout: drug, label text, expert-marked items, question
    table.write_text("药品,药品适应症,医学专家标注的适应病症,instruction\n"
                     "甲药片,<p>本品用于高血压、心绞痛。</p>,高血压|心绞痛,甲药片的适应病症\n"
                     "乙药片,<p>本品用于心力衰竭和水肿。</p>,心力衰竭|水肿,乙药片的适应病症\n"
                     "丙药片,<p>本品用于2型糖尿病。</p>,2型糖尿病,丙药片的适应病症\n", encoding="utf-8")
    spec = yaml.safe_load((ROOT / "recipes" / "knowledge_table.yaml").read_text(encoding="utf-8"))
    spec["data"]["sources"][0]["path"] = str(table)
    spec["data"]["filters"]["decontam_files"] = [str(table)]
    spec["eval"].update(fact_file=str(table), fact_entities=str(table))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "run"
    res = run_recipe(load_recipe(path, _overrides(tmp_path, qwen_dir)[:4] + ["eval.fact_generation.max_new_tokens=4"]))
    assert [s for s, r in res.items() if r["status"] == "ran"] == ["data", "train", "merge", "eval"]
    summary = json.loads((out / "eval" / "summary.json").read_text(encoding="utf-8"))
    rows = lines(out / "data" / "train.jsonl")
    assert not any("适应病症" in r["messages"][0]["content"] for r in rows)  # the table's own wording is held out
    assert any(r["meta"]["view"] == "reverse" and "心绞痛" in r["messages"][0]["content"] for r in rows)
    preds = lines(out / "eval" / "fact" / "finetuned" / "predictions.jsonl")
    assert [p["question"] for p in preds] == ["甲药片的适应病症", "乙药片的适应病症", "丙药片的适应病症"]
    assert preds[1]["expected"] == ["心力衰竭", "水肿"]
    for name in ("base", "finetuned"):
        assert set(summary[name]["fact"]) == {"hit_any", "hit_half", "hit_two_thirds", "bleed"}
