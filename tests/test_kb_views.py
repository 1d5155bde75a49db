"""Knowledge views of the kb generator (``data.sources[].augment``): many phrasings, both directions,
multi-fact answers, teacher paraphrases; through the real ``medtune data build`` command."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medtune.cli import app
from medtune.data import generators as G
from medtune.data.config import KbAugmentConfig
from medtune.data.readers import read_kb
from medtune.data.records import Tally
from medtune.text import item_hit, match_form
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
KB = ROOT / "examples" / "sources" / "kb" / "quickstart_drugs.jsonl"


def _views(cfg: KbAugmentConfig, seed: int = 0, extra=None):
    entries = list(read_kb(KB, Tally("read")))
    tally = Tally("views")
    out = G.kb_views(entries, G.load_templates(), G.load_view_templates(), cfg, random.Random(seed), tally, extra)
    return entries, out, tally


def test_forward_views_vary_question_statement_and_order_and_name_every_item():
    entries, out, tally = _views(KbAugmentConfig(views=6, reverse=False, passages=0))
    assert len(out) == 6 * len(entries) == tally.kept
    orders = []
    for e in entries:
        mine = [r for r in out if r.meta["doc_id"] == e.meta["doc_id"]]
        assert len(mine) == 6 and {r.meta["view"] for r in mine} == {"forward"}
        assert len({r.messages[0]["content"] for r in mine}) == 6  # no question repeated while the pool lasts
        for r in mine:  # same provenance as the kb-template generator, every item in every answer
            assert r.meta["source_file"] == str(KB) and r.meta["generator"] == "kb-template"
            assert r.meta["language"] == e.meta["language"] and r.meta["field"] == "indications"
            assert match_form(e.meta["name"]) in match_form(r.messages[0]["content"])
            assert all(item_hit(match_form(r.messages[1]["content"]), [i]) for i in e.fields["indications"])
        if len(e.fields["indications"]) >= 3:  # attribute order permuted across views
            orders.append(len({tuple(sorted(e.fields["indications"], key=r.messages[1]["content"].find)) for r in mine}))
    assert sum(n > 1 for n in orders) >= 0.8 * len(orders)


def test_reverse_views_name_every_entry_that_lists_the_item():
    entries, out, _ = _views(KbAugmentConfig(views=1, reverse=True, reverse_views=2, passages=0))
    reverse = [r for r in out if r.meta["view"] == "reverse"]
    items = {(e.meta["language"], i) for e in entries for i in e.fields["indications"]}
    assert len(reverse) == 2 * len(items)
    hypertension = [r for r in reverse if r.messages[0]["content"].startswith("治疗高血压") or "高血压" in r.messages[0]["content"]]
    assert hypertension and all("氨氯地平" in r.messages[1]["content"] and "呋塞米" in r.messages[1]["content"] for r in hypertension)
    assert all(len(r.meta["doc_ids"]) == 2 for r in hypertension)
    for r in reverse:
        assert r.meta["language"] in ("en", "zh", "ko")


def test_each_entry_is_in_the_configured_number_of_multi_fact_answers():
    entries, out, _ = _views(KbAugmentConfig(views=1, reverse=False, passages=2, passage_size=3))
    passages = [r for r in out if r.meta["view"] == "passage"]
    counts = Counter(d for r in passages for d in r.meta["doc_ids"])
    assert set(counts) == {e.meta["doc_id"] for e in entries} and set(counts.values()) == {2}
    by_id = {e.meta["doc_id"]: e for e in entries}
    for r in passages:
        assert len({by_id[d].meta["language"] for d in r.meta["doc_ids"]}) == 1  # one language per answer
        for d in r.meta["doc_ids"]:
            assert by_id[d].meta["name"] in r.messages[1]["content"]
        # one sentence per entry, in order: an entry's last item never runs into the next entry's statement
        sentences = [x for x in re.split(r"(?<=[.。])\s*", r.messages[1]["content"]) if x]
        assert len(sentences) == len(r.meta["doc_ids"]), r.messages[1]["content"]
        assert all(by_id[d].meta["name"] in x for d, x in zip(r.meta["doc_ids"], sentences)), r.messages[1]["content"]


def test_views_are_deterministic_per_seed():
    a = [r.messages for r in _views(KbAugmentConfig(), seed=3)[1]]
    assert a == [r.messages for r in _views(KbAugmentConfig(), seed=3)[1]]
    assert a != [r.messages for r in _views(KbAugmentConfig(), seed=4)[1]]


def test_korean_particles_follow_the_word_before_them():
    assert G.josa("레보티록신은(는) 오메프라졸을(를) 세티리진이(가) 물(으)로 약(으)로 Metformin은(는)") == \
        "레보티록신은 오메프라졸을 세티리진이 물로 약으로 Metformin은(는)"
    _, out, _ = _views(KbAugmentConfig(views=12, reverse=True, passages=1))
    assert not any("(는)" in m["content"] or "(를)" in m["content"] for r in out for m in r.messages)


def _recipe(tmp: Path, base_url: str, augment: dict | None) -> Path:
    kb = {"path": str(KB), "type": "kb", "validation": False}
    if augment is not None:
        kb["augment"] = augment
    recipe = {"output_dir": str(tmp / "run"), "seed": 7, "data": {
        "sources": [{"path": str(ROOT / "examples" / "sources" / "kb" / "drugs.jsonl"), "type": "kb"}, kb,
                    {"path": str(ROOT / "examples" / "sources" / "kb" / "diseases.json"), "type": "kb"}],
        "teacher": {"base_url": base_url, "model": "teacher-m", "backoff_initial_s": 0.01},
        "validation_fraction": 0.3, "filters": {"near_dup_threshold": None}}}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _paraphrases(req: dict) -> str:
    """Two paraphrases naming the entry and one that does not (dropped)."""
    import re

    first = req["messages"][-1]["content"].splitlines()[0]
    name = re.match(r"(?:Here is a question about (.+):|下面是一个关于(.+)的问题：|다음은 (.+)에 관한 질문입니다\.)$", first)
    name = next(g for g in name.groups() if g)
    return f"1. Could you remind me why {name} gets prescribed?\n2. {name} — what conditions is it for?\n3. What is this drug for?"


def test_data_build_with_augment_and_teacher_paraphrases(tmp_path):
    with FakeOpenAI(reply=_paraphrases) as srv:
        plain = CliRunner().invoke(app, ["data", "build", str(_recipe(tmp_path / "a", srv.base_url, None))])
        res = CliRunner().invoke(app, ["data", "build", str(_recipe(tmp_path / "b", srv.base_url,
                                       {"views": 14, "teacher_questions": 3, "passages": 1}))])
        calls = srv.calls
    assert plain.exit_code == 0 and res.exit_code == 0, res.output
    assert calls == 18  # one teacher call per fact
    rows = lambda d, f: [json.loads(x) for x in (tmp_path / d / "run" / "data" / f).read_text(encoding="utf-8").splitlines()]
    taught = [r for r in rows("b", "train.jsonl") if r["meta"]["source_file"] == str(KB)]
    assert Counter(r["meta"]["view"] for r in taught)["forward"] == 14 * 18
    asked = {r["messages"][0]["content"] for r in taught}
    assert any("why Metformin gets prescribed" in q or "why metformin gets prescribed" in q for q in asked)
    assert not any(q.startswith("What is this drug for?") for q in asked)  # names no entry: dropped
    stats = json.loads((tmp_path / "b" / "run" / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["steps"]["generate:kb-template"]["dropped"]["kb paraphrase does not name the entry"] == 18
    # the other sources keep their documents and answers, and the validation split is the same documents
    other = lambda d, f: sorted((r["meta"]["doc_id"], r["messages"][-1]["content"]) for r in rows(d, f)
                                if r["meta"]["source_file"] != str(KB))
    assert other("a", "train.jsonl") == other("b", "train.jsonl")
    assert other("a", "validation.jsonl") == other("b", "validation.jsonl") != []


def test_augment_on_a_kb_without_template_fields_is_counted(tmp_path):
    kb = tmp_path / "odd.jsonl"
    kb.write_text(json.dumps({"name": "X", "colour": "blue"}) + "\n", encoding="utf-8")
    tally = Tally("views")
    out = G.kb_views(list(read_kb(kb, Tally("r"))), G.load_templates(), G.load_view_templates(), KbAugmentConfig(),
                     random.Random(0), tally)
    assert out == [] and tally.dropped["kb source has no field with a template to augment"] == 1


def test_rag_qa_skips_views_of_several_entries(tmp_path):
    entries, out, _ = _views(KbAugmentConfig(views=2, reverse=True, passages=1))
    tally = Tally("rag-qa")
    rag = G.rag_qa(out, entries, k=3, not_covered=0.0, rng=random.Random(0), tally=tally)
    single = [r for r in out if len(r.meta.get("doc_ids", [r.meta["doc_id"]])) == 1]
    assert len(rag) == len(single)
    assert tally.dropped["rag-qa: view of several entries (no single gold passage)"] == len(out) - len(single)


@pytest.mark.parametrize("path", [None])
def test_shipped_view_templates_cover_each_language(path):
    views = G.load_view_templates(path)
    assert set(views) >= {"en", "zh", "ko"}
    for spec in views.values():
        assert len(spec["fields"]["indications"]["questions"]) >= 8


def test_a_table_with_its_own_columns_is_read_as_item_lists_and_augmented(tmp_path):
    """A drug table as published (its own column names, items in one cell split by '|') through the CLI."""
    table = tmp_path / "drugs.csv"
    table.write_text("药品,适应病症,备注\n甲药片,高血压|心绞痛,口服\n乙药片,心绞痛|心力衰竭|水肿,口服\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "data": {
        "sources": [{"path": str(table), "type": "kb", "name_field": "药品", "columns": {"indications": "适应病症"},
                     "item_separator": "|", "validation": False, "augment": {"views": 3, "passages": 0}}],
        "validation_fraction": 0.0, "filters": {"near_dup_threshold": None}}}, allow_unicode=True), encoding="utf-8")
    res = CliRunner().invoke(app, ["data", "build", str(recipe)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    forward = [r for r in rows if r["meta"]["view"] == "forward"]
    assert len(forward) == 6 and all(r["meta"]["field"] == "indications" for r in forward)
    assert all(all(i in r["messages"][1]["content"] for i in ("心绞痛", "心力衰竭", "水肿"))
               for r in forward if "乙药片" in r["messages"][0]["content"])
    angina = [r for r in rows if r["meta"]["view"] == "reverse" and "心绞痛" in r["messages"][0]["content"]]
    assert angina and all("甲药片" in r["messages"][1]["content"] and "乙药片" in r["messages"][1]["content"] for r in angina)
