"""Continued pre-training (``objective: pt``): raw domain text -> token rows with loss on every token.

A textbook, guideline or corpus has no question-answer form; to absorb it the model is trained
the way it was pre-trained: next-token prediction on the text itself, no chat template, every
token labelled. Documents are split at passage boundaries (blank lines) and passages are grouped
greedily into chunks of at most ``max_seq_length`` tokens, so a chunk never starts mid-paragraph;
a single passage longer than that is cut into windows. Each chunk ends with EOS (BOS first when
the tokenizer has one). The SFT trainer then packs the chunks into rows with per-chunk position
ids (:mod:`medtune.train.speed`), so chunks of different documents never attend to each other.

Input files (read by :func:`read_documents`): ``.txt`` / ``.md`` (one document per file), or
JSONL / JSON / CSV rows with a ``text`` (or ``content``) field, one document per row -- for
instance the passages ``medtune data build`` read from guidelines and books.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterator

from medtune.chat_tokens import DataStats
from medtune.errors import DataFileError
from medtune.io import Reject, read_rows, read_text

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
TEXT_FIELDS = ("text", "content", "passage", "document")
_PASSAGE_BREAK = re.compile(r"\n[ \t]*\n+")


def read_documents(path: Path) -> Iterator[tuple[str, str | Reject]]:
    """``(where, text)`` for every document of ``path``; rows without text come out as :class:`Reject`.

    Raises:
        DataFileError: missing, empty, binary or undecodable file.
    """
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        text, _ = read_text(path)
        yield "file", text
        return
    for where, rec in read_rows(path):
        if isinstance(rec, Reject):
            yield where, rec
            continue
        key = next((k for k in TEXT_FIELDS if isinstance(rec.get(k), str) and rec[k].strip()), None)
        yield where, rec[key] if key else Reject(str(path), where, "no text", "text",
                                                 f"expected a non-empty {'/'.join(TEXT_FIELDS)} field; fields seen: {sorted(rec)[:12]}")


def split_passages(text: str) -> list[str]:
    """Passages of ``text``: runs of lines separated by blank lines, stripped, empty ones dropped."""
    return [p.strip() for p in _PASSAGE_BREAK.split(text) if p.strip()]


def chunk_document(passages: list[list[int]], budget: int) -> Iterator[tuple[list[int], bool]]:
    """Group tokenised passages greedily into chunks of at most ``budget`` tokens.

    Args:
        passages: token ids of each passage, separator tokens included.
        budget: most tokens per chunk (> 0).

    Yields:
        ``(ids, cut)``: a chunk, and whether it is a window of a passage longer than ``budget``.
    """
    current: list[int] = []
    for ids in passages:
        if current and len(current) + len(ids) > budget:
            yield current, False
            current = []
        if len(ids) > budget:
            for i in range(0, len(ids), budget):
                yield ids[i:i + budget], True
            continue
        current = current + ids
    if current:
        yield current, False


def build_pt_examples(path: Path, tokenizer, max_seq_length: int, overlong: str = "truncate",
                      max_examples: int | None = None) -> tuple[list[dict], list[Reject], DataStats]:
    """Read one text file and turn it into chunks for continued pre-training.

    Args:
        path: a ``.txt``/``.md`` file or rows with a ``text`` field (see :func:`read_documents`).
        tokenizer: any tokenizer; no chat template is used.
        max_seq_length: most tokens per chunk, BOS/EOS included (>= 8).
        overlong: unused (a passage that does not fit is cut into windows and counted as truncated);
            kept so the signature matches :func:`medtune.chat_tokens.build_sft_examples`.
        max_examples: stop after this many chunks.

    Returns:
        ``(examples, rejects, stats)``; each example is ``{"input_ids", "labels"}`` with
        ``labels == input_ids`` (loss on every token). ``stats.read`` counts documents.

    Raises:
        DataFileError: unreadable file, or no document with text.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    budget = max_seq_length - len(bos) - len(eos)
    examples, rejects, stats = [], [], DataStats()
    for where, doc in read_documents(path):
        stats.read += 1
        if isinstance(doc, Reject):
            rejects.append(doc)
            continue
        passages = split_passages(doc)
        ids = [tokenizer(p + "\n\n" if i < len(passages) - 1 else p, add_special_tokens=False)["input_ids"]
               for i, p in enumerate(passages)]
        for chunk, cut in chunk_document(ids, budget):
            row = bos + chunk + eos
            examples.append({"input_ids": row, "labels": list(row)})
            stats.truncated += cut
        if max_examples and len(examples) >= max_examples:
            examples = examples[:max_examples]
            break
    stats.kept = len(examples)
    stats.tokens = stats.label_tokens = sum(len(e["input_ids"]) for e in examples)
    stats.rejected = Counter(r.reason for r in rejects)
    if not examples:
        raise DataFileError(f"{path}: no text to pre-train on ({stats.read} documents read, {len(rejects)} rejected); "
                            f"give .txt/.md files or rows with a {'/'.join(TEXT_FIELDS)} field")
    return examples, rejects, stats
