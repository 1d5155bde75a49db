import copy
import json

import pytest

from medtune.chat_tokens import IGNORE_INDEX, build_sft_examples, tokenize_messages
from medtune.errors import DataFileError
from medtune.io import RecordError, record_to_messages

MULTI = [
    {"role": "system", "content": "You are a careful medical assistant."},
    {"role": "user", "content": "I have wheezing."},
    {"role": "assistant", "content": "How long have you had it?"},
    {"role": "user", "content": "Two days."},
    {"role": "assistant", "content": "A salbutamol inhaler relieves symptoms; see a doctor."},
]


def test_multi_turn_mask_is_exactly_the_assistant_turns(tokenizer):
    ids, labels = tokenize_messages(tokenizer, MULTI)
    assert len(ids) == len(labels)
    # The full sequence is exactly what the chat template renders (same text chat/serving use).
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(MULTI, tokenize=False)
    trained = tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert trained == "How long have you had it?<|im_end|>\nA salbutamol inhaler relieves symptoms; see a doctor.<|im_end|>\n"
    # Nothing from system or user turns is trained, and each answer ends with the end-of-turn token.
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t, l in zip(ids, labels) if l == end) == 2
    assert all(l == IGNORE_INDEX for t, l in zip(ids, labels) if t == tokenizer.convert_tokens_to_ids("<|im_start|>"))
    for piece in ("I have wheezing.", "Two days.", "careful medical assistant"):
        assert piece not in trained


def test_eos_appended_when_template_has_no_end_token(tokenizer):
    bare = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = bare
    ids, labels = tokenize_messages(tok, MULTI[1:3])
    trained = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert tok.eos_token_id in trained


def test_alpaca_conversion_with_input_system_history():
    msgs = record_to_messages({"system": "S", "history": [["q0", "a0"]], "instruction": "Do X", "input": "ctx", "output": "done"})
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[3]["content"] == "Do X\n\nctx" and msgs[4]["content"] == "done"


@pytest.mark.parametrize("record,field", [
    ({"instruction": "q"}, "output"),
    ({"instruction": "q", "output": "  "}, "output"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "doctor", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": "a"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}, "messages[1].content"),
    ({"text": "no known form"}, "<record>"),
])
def test_invalid_records_name_the_field(record, field):
    with pytest.raises(RecordError) as e:
        record_to_messages(record)
    assert e.value.field == field


def test_bad_lines_are_rejected_with_line_numbers_and_counted(tmp_path, tokenizer):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join([
        json.dumps({"instruction": "What is hypertension?", "output": "High blood pressure."}),
        "{not json",
        json.dumps({"instruction": "no output"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
    ]))
    examples, rejects, stats = build_sft_examples(f, tokenizer, max_seq_length=256)
    assert stats.read == 5 and stats.kept == 2 and len(rejects) == 3
    assert [(r.line, r.field) for r in rejects] == [(2, "<line>"), (3, "output"), (4, "<record>")]
    assert all(r.file == str(f) for r in rejects)


def test_overlong_truncate_and_drop_are_counted(tmp_path, tokenizer):
    f = tmp_path / "d.jsonl"
    long = {"instruction": "Explain.", "output": "Metformin is a first-line medicine. " * 40}
    f.write_text(json.dumps(long) + "\n" + json.dumps({"instruction": "Hi", "output": "Take it with meals."}) + "\n")
    ex, rejects, stats = build_sft_examples(f, tokenizer, max_seq_length=48, overlong="truncate")
    assert stats.truncated == 1 and len(ex) == 2 and max(len(e["input_ids"]) for e in ex) == 48
    ex, rejects, stats = build_sft_examples(f, tokenizer, max_seq_length=48, overlong="drop")
    assert len(ex) == 1 and len(rejects) == 1 and "max_seq_length" in rejects[0].reason


def test_unreadable_files_raise_clear_errors(tmp_path, tokenizer):
    with pytest.raises(DataFileError, match="not found"):
        build_sft_examples(tmp_path / "none.jsonl", tokenizer, 64)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataFileError, match="empty"):
        build_sft_examples(tmp_path / "e.jsonl", tokenizer, 64)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(DataFileError, match="no usable records.*line 1"):
        build_sft_examples(tmp_path / "bad.jsonl", tokenizer, 64)


def test_json_array_files(tmp_path, tokenizer):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"instruction": "q", "output": "a"}, 3]))
    ex, rejects, stats = build_sft_examples(f, tokenizer, 64)
    assert len(ex) == 1 and rejects[0].line == 2
