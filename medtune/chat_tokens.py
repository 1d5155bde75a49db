"""Conversations -> token ids with assistant-only labels, using the tokenizer's own chat template.

Shared by training (SFT, and the methods built on it) and held-out evaluation, so both see the
same tokens. Records are rendered with the tokenizer's own chat template (the one chat and
serving use), and the loss mask is derived from the rendered text itself: for every assistant
turn ``i`` the template is rendered for ``messages[:i]`` with the generation prompt and for
``messages[:i+1]``; the characters in between are that turn's answer, including the template's
end-of-turn token. Tokens whose character offsets fall in those spans get labels; everything
else gets -100. This works for any template whose rendering of a prefix of the conversation is
a prefix of the full rendering (ChatML, Llama-3, Gemma, Mistral ...).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import DataFileError
from medtune.io import Reject, RecordError, read_rows, record_to_messages

IGNORE_INDEX = -100


@dataclass
class DataStats:
    """Counts of one data build: records read, kept, truncated, rejected (by reason)."""

    read: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0
    rejected: Counter = field(default_factory=Counter)


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
    for where, rec in read_rows(path):
        stats.read += 1
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        try:
            ids, labels = tokenize_messages(tokenizer, record_to_messages(rec))
        except RecordError as e:
            rejects.append(Reject(str(path), where, e.reason, e.field, rec))
            continue
        if len(ids) > max_seq_length:
            if overlong == "drop":
                rejects.append(Reject(str(path), where, f"{len(ids)} tokens > max_seq_length {max_seq_length} (overlong=drop)", "<length>"))
                continue
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            stats.truncated += 1
        if all(x == IGNORE_INDEX for x in labels):
            rejects.append(Reject(str(path), where, f"no answer tokens within max_seq_length {max_seq_length}", "<length>"))
            continue
        examples.append({"input_ids": ids, "labels": labels})
        stats.tokens += len(ids)
        stats.label_tokens += sum(x != IGNORE_INDEX for x in labels)
        if max_examples and len(examples) >= max_examples:
            break
    stats.kept = len(examples)
    stats.rejected = Counter(r.reason.split(" (")[0] if r.field != "<length>" else "length" for r in rejects)
    if not examples:
        first = f"; first: {rejects[0].where} {rejects[0].field}: {rejects[0].reason}" if rejects else ""
        raise DataFileError(f"{path}: no usable records ({stats.read} read, {len(rejects)} rejected{first})")
    return examples, rejects, stats
