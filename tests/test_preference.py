"""Preference readers: trl conversational, MedicalGPT and KTO forms; bad records become located rejects."""

import json
from pathlib import Path

import pytest

from medtune.errors import DataFileError
from medtune.preference_data import read_preferences
from medtune.safety.labelled import DATA_DIR

Q, GOOD, BAD = "I have crushing chest pain.", "Call 911 now.", "Rest and drink water."


def write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_pair_forms_read_to_one_conversational_shape(tmp_path):
    want = {"prompt": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}]}
    rows = [
        {"prompt": Q, "chosen": GOOD, "rejected": BAD},  # trl standard
        {"prompt": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": GOOD}],
         "rejected": [{"role": "assistant", "content": BAD}]},  # trl conversational
        {"chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": GOOD}],
         "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": BAD}]},  # implicit prompt
        {"question": Q, "response_chosen": GOOD, "response_rejected": BAD},  # MedicalGPT
    ]
    pairs, rejects = read_preferences(write(tmp_path, rows))
    assert rejects == [] and pairs == [want] * 4
    mg, _ = read_preferences(write(tmp_path, [{"system": "Be careful.", "history": [["hi", "hello"]], **rows[3]}]))
    assert [m["role"] for m in mg[0]["prompt"]] == ["system", "user", "assistant", "user"]


def test_bad_records_are_rejected_with_line_and_field(tmp_path):
    rows = [{"prompt": Q, "chosen": GOOD, "rejected": BAD},
            {"prompt": Q, "chosen": GOOD},
            {"question": Q, "response_chosen": GOOD, "response_rejected": GOOD},
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": GOOD, "rejected": BAD},
            "{not json",
            {"instruction": "x", "output": "y"}]
    pairs, rejects = read_preferences(write(tmp_path, rows))
    assert len(pairs) == 1
    got = [(r.where, r.field) for r in rejects]
    assert got == [("line 2", "rejected"), ("line 3", "response_rejected"), ("line 4", "prompt[0].role"),
                   ("line 5", "<line>"), ("line 6", "<record>")]
    assert all(r.file.endswith("p.jsonl") for r in rejects)
    with pytest.raises(DataFileError, match="no usable preference records.*line 1"):
        read_preferences(write(tmp_path, [{"prompt": Q}], "none.jsonl"))


def test_kto_reads_labels_and_unpairs_pairs(tmp_path):
    rows = [{"prompt": Q, "completion": GOOD, "label": True}, {"prompt": Q, "completion": BAD, "label": "false"},
            {"prompt": Q, "completion": BAD, "label": "maybe"}, {"question": Q, "response_chosen": GOOD, "response_rejected": BAD}]
    got, rejects = read_preferences(write(tmp_path, rows), kind="kto")
    assert [(r["completion"][0]["content"], r["label"]) for r in got] == [(GOOD, True), (BAD, False), (GOOD, True), (BAD, False)]
    assert [(r.where, r.field) for r in rejects] == [("line 3", "label")]


# ---------------------------------------------------------------- safety-pairs generator
SAFETY = DATA_DIR  # the shipped labelled sets (medtune/safety/data)
LABELLED = [
    {"id": "e1", "lang": "en", "text": "crushing chest pain spreading to my left arm, sweating", "expected": ["cardiac"], "type": "emergency"},
    {"id": "h1", "lang": "en", "text": "what are the signs of a stroke?", "expected": [], "type": "hard_negative"},
    {"id": "e2", "lang": "zh", "text": "孩子把一整瓶药吃下去了", "expected": ["poisoning"], "type": "emergency"},
    {"id": "b1", "lang": "ko", "text": "감기약 먹고 졸려요", "expected": [], "type": "benign"},
]


def _pairs(tmp_path, rows=LABELLED):
    from medtune.config import SafetyConfig
    from medtune.data.generators import safety_pairs
    from medtune.data.readers import read_labelled
    from medtune.data.records import Tally
    import random
    tally, rng = Tally("t"), random.Random(0)
    records = list(read_labelled(write(tmp_path, rows, "labelled.jsonl"), tally))
    return [p for r in records for p in safety_pairs(r, SafetyConfig(), rng, tally)], tally


def test_safety_pairs_urgent_for_red_flags_calm_for_the_rest(tmp_path):
    from medtune.safety import urgent_message
    pairs, tally = _pairs(tmp_path)
    assert tally.kept == 8 and not tally.dropped  # 4 read + 4 generated
    by_id = {p["meta"]["doc_id"].split(":")[-1]: p for p in pairs}
    cardiac = by_id["e1"]
    assert cardiac["chosen"][0]["content"].startswith(urgent_message(["cardiac"], "en", "911"))
    assert "911" not in cardiac["rejected"][0]["content"]
    assert by_id["e2"]["chosen"][0]["content"].startswith(urgent_message(["poisoning"], "zh", "120"))
    for benign, number in (("h1", "911"), ("b1", "119")):  # no alarm for everyone: the urgent answer loses
        assert number not in by_id[benign]["chosen"][0]["content"] and number in by_id[benign]["rejected"][0]["content"]
        assert by_id[benign]["meta"]["chosen_is_urgent"] is False
    path = write(tmp_path, pairs, "pairs.jsonl")
    rows, rejects = read_preferences(path)  # the form training reads
    assert len(rows) == 4 and not rejects and rows[0]["prompt"] == [{"role": "user", "content": LABELLED[0]["text"]}]


def test_safety_pairs_refuse_dev_and_test_files_and_count_bad_labels(tmp_path, monkeypatch):
    from medtune.safety import fit, labelled
    from medtune.data.readers import read_labelled
    from medtune.data.records import Tally
    for held_out in (SAFETY / "dev" / "dev_en.jsonl", SAFETY / "dev"):  # a file, or the folder as a source
        with pytest.raises(DataFileError, match="held-out"):
            list(read_labelled(held_out, Tally("t")))
    test_dir = tmp_path / "test"  # the test set, once it is placed (stand-in folder)
    test_dir.mkdir()
    write(test_dir, LABELLED[:1], "test_en.jsonl")
    monkeypatch.setattr(labelled, "EVAL_DIRS", (labelled.DEV_DIR, test_dir))
    with pytest.raises(DataFileError, match="held-out"):
        list(read_labelled(test_dir / "test_en.jsonl", Tally("t")))
    with pytest.raises(ValueError, match="evaluation only"):
        fit.train_classifier([SAFETY / "train_en.jsonl", test_dir / "test_en.jsonl"], out=None,
                                      rule_hit=lambda rec: False)
    _, tally = _pairs(tmp_path, [{"id": "x", "lang": "en", "text": "hi", "expected": "cardiac"}, *LABELLED[:1]])
    assert list(tally.dropped) == ["expected must be a list of red-flag categories ([] for none)"]
    assert tally.rejects[0].where == "line 1"


def test_data_build_writes_pairs_from_the_shipped_training_labels(tmp_path):
    from medtune.data.build import build_data
    from medtune.data.config import DataConfig, SourceConfig
    src = SourceConfig(path=SAFETY / "train_en.jsonl", type="labelled", max_items=30)
    out = build_data(DataConfig(sources=[src], output_dir=tmp_path / "data"), seed=1)
    rows, _ = read_preferences(out["pairs_file"])
    metas = [json.loads(line)["meta"] for line in open(out["pairs_file"], encoding="utf-8")]
    assert out["pairs"] == len(rows) == 30 and {m["generator"] for m in metas} == {"safety-pairs"}
    assert any(m["chosen_is_urgent"] for m in metas) and not all(m["chosen_is_urgent"] for m in metas)


def test_safety_sft_through_the_cli_teaches_urgent_openers_the_guard_off_measure_counts(tmp_path):
    """`medtune data build` with generator safety-sft: each labelled message becomes an SFT example whose
    answer opens with urgent care (red flag) or is calm (no red flag), in the message's language, and the
    guard-off measure reads the first as an urgent-care opener and never the second."""
    import yaml
    from typer.testing import CliRunner

    from medtune.cli import app
    from medtune.config import SafetyConfig
    from medtune.data.generators import CALM_ANSWER
    from medtune.eval.urgent import opens_with_urgent_care
    labelled = write(tmp_path, LABELLED, "labelled.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "none", "output_dir": str(tmp_path / "run"), "data": {
        "sources": [{"path": str(labelled), "type": "labelled", "generator": "safety-sft"},
                    {"path": str(SAFETY / "train_ko.jsonl"), "type": "labelled", "generator": "safety-sft", "max_items": 40}],
        "validation_fraction": 0.0}}), encoding="utf-8")
    res = CliRunner().invoke(app, ["data", "build", str(recipe)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 44 and {r["meta"]["generator"] for r in rows} == {"safety-sft"}
    cfg = SafetyConfig()
    for r in rows:
        answer, lang = r["messages"][-1], r["meta"]["language"]
        assert answer["role"] == "assistant" and r["messages"][:-1][-1]["role"] == "user"
        assert opens_with_urgent_care(answer["content"], lang, cfg) is bool(r["meta"]["expected"]), r
    by_id = {r["meta"]["doc_id"].split(":")[-1]: r["messages"][-1]["content"] for r in rows}
    assert by_id["b1"] == CALM_ANSWER["ko"] and by_id["e2"].startswith("⚠️ 紧急提示") and "120" in by_id["e2"]
    assert sum(bool(r["meta"]["expected"]) for r in rows) not in (0, len(rows))  # both kinds from the shipped file
    for lang, calm in CALM_ANSWER.items():  # a calm answer never reads as an alarm
        assert not opens_with_urgent_care(calm, lang, cfg)


# ---------------------------------------------------------------- pairwise-judge generator
JUDGED = [  # the fake judge's behaviour is keyed on a word in the question
    {"instruction": "Consistent judge: how do I treat a mild fever?", "output": "Rest, fluids, paracetamol if needed."},
    {"instruction": "Position-biased judge: how do I treat a cough?", "output": "Honey and warm drinks."},
    {"instruction": "Tie judge: how do I treat a sore throat?", "output": "Salt-water gargles."},
    {"instruction": "Garbage judge: how do I treat a headache?", "output": "Water and rest."},
]
_PAIR = r"Question:\n(.*?)\n.*?Answer 1:\n(.*?)\n\nAnswer 2:\n(.*?)\n\nReply with only"


def fake_pair_judge(seen: list[str]):
    """A judge over HTTP: 'Consistent' prefers the alphabetically first answer (same in both orders),
    'Position' always says 1 (position bias), 'Tie' says tie, 'Garbage' never replies in JSON."""
    import re

    def reply(req):
        text = req["messages"][0]["content"]
        seen.append(text)
        question, a1, a2 = re.search(_PAIR, text, re.DOTALL).groups()
        if question.startswith("Garbage"):
            return "Both answers look fine to me."
        winner = {"Consistent": "1" if a1 < a2 else "2", "Position-biased": "1", "Tie": "tie"}[question.split()[0]]
        return json.dumps({"winner": winner, "rationale": f"picked {winner} for {question.split()[0]}"})
    return reply


def _judge_cfg(tmp_path, qwen_dir, base_url, **pj):
    from medtune.data.config import DataConfig, SourceConfig
    src = SourceConfig(path=write(tmp_path, JUDGED, "prompts.jsonl"), type="corpus", generator="pairwise-judge")
    sampler = {"model": str(qwen_dir), "temperature": 1.0, "top_p": 1.0, "max_tokens": 8}
    judge = {"base_url": base_url, "model": "judge-m", "backoff_initial_s": 0.01}
    return DataConfig(sources=[src], output_dir=tmp_path / "data",
                      pairwise_judge={"sampler": sampler, "samples": 3, "judge": judge, "max_retries": 1, **pj})


def test_pairwise_judge_keeps_only_consistent_verdicts_with_provenance(tmp_path, qwen_dir):
    from medtune.data.build import build_data
    from tests.fake_openai import FakeOpenAI
    seen: list[str] = []
    with FakeOpenAI(reply=fake_pair_judge(seen)) as srv:
        cfg = _judge_cfg(tmp_path, qwen_dir, srv.base_url)
        out = build_data(cfg, seed=5)
        calls, first = srv.calls, Path(out["pairs_file"]).read_text(encoding="utf-8")
        again = build_data(cfg, seed=5)  # resumed: every sample and verdict comes from the cache
        assert srv.calls == calls and Path(again["pairs_file"]).read_text(encoding="utf-8") == first
    # 4 prompts x 3 sampled answers -> 3 pairs each, each judged in both orders (+1 re-ask per garbage reply)
    assert calls == 4 * 3 * 2 + 3 * 2
    assert all("Reference answer (written by an expert):\n" + JUDGED[0]["output"] in t for t in seen if t.count("Consistent"))
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    step = stats["steps"]["generate:pairwise-judge"]
    assert step["kept"] == out["pairs"] == 3 and step["dropped"] == {
        "pairwise-judge: order-inconsistent verdict (position bias)": 3, "pairwise-judge: tie": 3,
        "pairwise-judge: judge reply invalid after retries": 3}
    assert stats["pairwise_judge"]["judge"]["model"] == "judge-m" and not stats["pairwise_judge"]["shared_client"]
    rows, rejects = read_preferences(out["pairs_file"])  # the form training reads
    assert len(rows) == 3 and not rejects
    metas = [json.loads(line)["meta"] for line in first.splitlines()]
    for row, meta in zip(rows, metas):
        assert row["prompt"] == [{"role": "user", "content": JUDGED[0]["instruction"]}]
        a, b = meta["answers"]
        assert a != b and row["chosen"][0]["content"] == min(a, b) and row["rejected"][0]["content"] == max(a, b)
        assert meta["chosen_index"] == meta["answers"].index(min(a, b))
        assert meta["verdicts"]["order_ab"] == meta["verdicts"]["order_ba"] == "AB"[meta["chosen_index"]]
        assert meta["rationales"]["order_ab"].startswith("picked") and meta["judge_model"] == "judge-m"
        assert meta["source_file"].endswith("prompts.jsonl") and meta["doc_id"].endswith(":1")
        assert meta["sampler_model"] == str(qwen_dir) and meta["generator"] == "pairwise-judge"
    assert len({s for m in metas for s in m["sample_seeds"]}) == 3  # three samples, seeds 5, 6, 7
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "data" / "rejects.jsonl").read_text().splitlines()]
    assert reasons.count("pairwise-judge: tie") == 3


def test_pairwise_judge_refuses_greedy_sampling_and_shares_one_local_client(tmp_path, qwen_dir):
    from medtune.data.build import build_data, pairwise_clients
    from medtune.errors import ConfigError
    with pytest.raises(ConfigError, match="temperature"):
        build_data(_judge_cfg(tmp_path, qwen_dir, None, sampler={"model": str(qwen_dir), "temperature": 0.0}))
    local = _judge_cfg(tmp_path, qwen_dir, None, judge={"model": str(qwen_dir)})
    sampler, judge = pairwise_clients(local, tmp_path)
    assert sampler is judge  # one model in memory for both
    sampler, judge = pairwise_clients(_judge_cfg(tmp_path, qwen_dir, "http://127.0.0.1:9/v1"), tmp_path)
    assert sampler is not judge and judge.model == "judge-m"
