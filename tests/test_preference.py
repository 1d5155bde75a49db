"""Preference readers: trl conversational, MedicalGPT and KTO forms; bad records become located rejects."""

import json

import pytest

from medtune.errors import DataFileError
from medtune.preference import read_preferences

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
