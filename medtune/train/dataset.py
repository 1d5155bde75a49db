"""SFT data: read Alpaca / messages records, validate them, and tokenize with assistant-only labels.

Records are rendered with the tokenizer's own chat template (the one chat and serving use),
and the loss mask is derived from the rendered text itself: for every assistant turn ``i``
the template is rendered for ``messages[:i]`` with the generation prompt and for
``messages[:i+1]``; the characters in between are that turn's answer, including the
template's end-of-turn token. Tokens whose character offsets fall in those spans get
labels; everything else gets -100. This works for any template whose rendering of a prefix
of the conversation is a prefix of the full rendering (ChatML, Llama-3, Gemma, Mistral ...).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A record that cannot be used; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class DataFileError(ValueError):
    """A data file that cannot be read at all (missing, empty, not JSON/JSONL)."""


@dataclass
class Reject:
    """One rejected record, saved to ``rejects.jsonl``."""

    file: str
    line: int
    field: str
    reason: str
    record: object = None


@dataclass
class DataStats:
    """Counts of one data build: records read, kept, truncated, rejected (by reason)."""

    read: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0
    rejected: Counter = field(default_factory=Counter)


def read_records(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    """Yield ``(line_or_index, record)`` from a JSONL file or a JSON array file.

    Malformed lines and non-object records are yielded as :class:`Reject` (1-based line or
    record numbers), so one bad line never stops the build.

    Raises:
        DataFileError: the file is missing, empty, or a ``.json`` file that is not an array.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataFileError(f"{path}: file is empty")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if not isinstance(items, list):
            raise DataFileError(f"{path}: a .json data file must hold an array of records")
        for i, item in enumerate(items, 1):
            yield i, item if isinstance(item, dict) else Reject(str(path), i, "<record>", "record is not a JSON object", item)
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            yield i, Reject(str(path), i, "<line>", f"malformed JSON: {e.msg} (column {e.colno})", line[:200])
            continue
        yield i, item if isinstance(item, dict) else Reject(str(path), i, "<record>", "record is not a JSON object", item)


def _text(record: dict, key: str, required: bool) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RecordError(key, "missing or empty")
        return ""
    if not isinstance(value, str):
        raise RecordError(key, f"must be a string, got {type(value).__name__}")
    return value


def alpaca_to_messages(record: dict) -> list[dict]:
    """Alpaca ``instruction``/``input``/``output`` (+ optional ``system``, ``history``) to messages.

    ``history`` is a list of earlier ``[user, assistant]`` pairs, as in LLaMA-Factory's Alpaca form.
    The user turn is ``instruction`` followed by a blank line and ``input`` when present.
    """
    instruction = _text(record, "instruction", True)
    extra = _text(record, "input", False)
    output = _text(record, "output", True)
    messages = []
    if system := _text(record, "system", False):
        messages.append({"role": "system", "content": system})
    for j, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise RecordError(f"history[{j}]", "must be a [user, assistant] pair of non-empty strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def validate_messages(messages: object) -> list[dict]:
    """Check a ``messages`` list: optional leading system, then user/assistant alternating, ending with assistant.

    Raises:
        RecordError: naming ``messages[i].role`` / ``messages[i].content`` and what is wrong.
    """
    if not isinstance(messages, list) or not messages:
        raise RecordError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}]", "must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise RecordError(f"messages[{i}].content", "missing or empty")
        out.append({"role": role, "content": content})
    body = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            idx = i + (len(out) - len(body))
            raise RecordError(f"messages[{idx}].role", f"expected {want!r} (turns must alternate user/assistant after an optional leading system)")
    if not body or body[-1]["role"] != "assistant":
        raise RecordError("messages", "conversation must end with an assistant turn")
    return out


def record_to_messages(record: dict) -> list[dict]:
    """Messages of one record in either supported form (``messages`` or Alpaca ``instruction``/``output``).

    Raises:
        RecordError: the record is in neither form or is invalid.
    """
    if "messages" in record:
        return validate_messages(record["messages"])
    if "instruction" in record or "output" in record:
        return alpaca_to_messages(record)
    raise RecordError("<record>", "neither 'messages' nor Alpaca 'instruction'/'output' fields present")


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` with the chat template and find each assistant answer's character span.

    Returns:
        ``(text, spans)``: the full rendered conversation and ``[(start, end), ...]`` character
        spans of each assistant turn, including its end-of-turn / EOS token.

    Raises:
        RecordError: the template does not render prefixes as prefixes of the whole.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise RecordError(f"messages[{i}]", "the chat template does not render this conversation incrementally; cannot mask prompt tokens")
        spans.append((len(before), len(through)))
    eos, shift, fixed = tokenizer.eos_token, 0, []
    for start, end in spans:  # a template without an end-of-turn token: add EOS so generation stops
        start, end = start + shift, end + shift
        if eos and eos not in full[start:end]:
            full = full[:end] + eos + full[end:]
            end += len(eos)
            shift += len(eos)
        fixed.append((start, end))
    return full, fixed


def tokenize_messages(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; labels are -100 outside assistant answers.

    Returns:
        ``(input_ids, labels)``, two lists of equal length (tokens).
    """
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tid, (a, _b) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= a < e for s, e in spans)
        labels.append(tid if inside else IGNORE_INDEX)
    return list(enc["input_ids"]), labels


def build_sft_examples(path: Path, tokenizer, max_seq_length: int, overlong: str = "truncate",
                       max_examples: int | None = None) -> tuple[list[dict], list[Reject], DataStats]:
    """Read, validate and tokenize one data file.

    Args:
        path: JSONL or JSON-array file of Alpaca or messages records.
        tokenizer: a fast tokenizer with a chat template.
        max_seq_length: maximum tokens per example.
        overlong: ``"truncate"`` (keep the first max_seq_length tokens) or ``"drop"``.
        max_examples: stop after this many kept examples.

    Returns:
        ``(examples, rejects, stats)`` where each example is ``{"input_ids", "labels"}``.

    Raises:
        DataFileError: the file cannot be read at all, or no record survives.
    """
    examples, rejects, stats = [], [], DataStats()
    for line, rec in read_records(path):
        stats.read += 1
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        try:
            ids, labels = tokenize_messages(tokenizer, record_to_messages(rec))
        except RecordError as e:
            rejects.append(Reject(str(path), line, e.field, e.reason, rec))
            continue
        if len(ids) > max_seq_length:
            if overlong == "drop":
                rejects.append(Reject(str(path), line, "<length>", f"{len(ids)} tokens > max_seq_length {max_seq_length} (overlong=drop)", None))
                continue
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            stats.truncated += 1
        if all(x == IGNORE_INDEX for x in labels):
            rejects.append(Reject(str(path), line, "<length>", f"no answer tokens within max_seq_length {max_seq_length}", None))
            continue
        examples.append({"input_ids": ids, "labels": labels})
        stats.tokens += len(ids)
        stats.label_tokens += sum(x != IGNORE_INDEX for x in labels)
        if max_examples and len(examples) >= max_examples:
            break
    stats.kept = len(examples)
    stats.rejected = Counter(r.reason.split(" (")[0] if r.field != "<length>" else "length" for r in rejects)
    if not examples:
        first = f"; first: line {rejects[0].line} {rejects[0].field}: {rejects[0].reason}" if rejects else ""
        raise DataFileError(f"{path}: no usable records ({stats.read} read, {len(rejects)} rejected{first})")
    return examples, rejects, stats


def write_rejects(rejects: list[Reject], out: Path) -> None:
    """Append rejects as JSONL (file, line, field, reason, record) to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps(r.__dict__, ensure_ascii=False, default=str) + "\n")
