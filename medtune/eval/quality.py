"""Generation quality of free-text answers: do they stop, do they loop, are they in the asker's language.

The three complaints peers raise most about small fine-tuned models are answers that never
stop, answers stuck in a loop after LoRA, and answers in the wrong language. Each answer gets
three flags and a set of answers gets their shares with 95% Wilson intervals:

- ``stopped``: the reply ended with an end-of-turn token before ``max_new_tokens`` (reported by
  the generation call; None when unknown, e.g. an endpoint, and then left out of the share);
- ``loop``: degenerate repetition, some n-gram occurring ``>= min_count`` times
  (:func:`degenerate_repetition`);
- ``language_match``: :func:`medtune.text.detect_language` of the answer equals that of the question.
"""

from __future__ import annotations

import re
from collections import Counter

from medtune.eval.stats import proportion
from medtune.text import detect_language

_CJK = re.compile(r"[\u3400-\u9fff\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_WORD = re.compile(r"\w+", re.UNICODE)
WORD_N, CHAR_N, MIN_COUNT = 4, 8, 3


def units(text: str) -> tuple[list[str], int]:
    """The units n-grams are built from and the n used: characters (no spaces or punctuation) and
    n = 8 for text that is mostly Chinese/Korean script, lower-cased words and n = 4 otherwise
    (8 CJK characters are about 4 words; shorter character n-grams repeat in normal prose, e.g. 高血压患者)."""
    cjk = len(_CJK.findall(text))
    if cjk and cjk >= 0.25 * len(re.sub(r"\s", "", text)):
        return [c for c in text if c.isalnum()], CHAR_N
    return [w.lower() for w in _WORD.findall(text)], WORD_N


def degenerate_repetition(text: str, n: int | None = None, min_count: int = MIN_COUNT) -> bool:
    """True when some n-gram of :func:`units` occurs at least ``min_count`` times in ``text``.

    Args:
        text: one answer.
        n: n-gram length in units (default 4 words, or 8 characters for Chinese/Korean).
        min_count: occurrences that make a loop (3: a phrase said three times).
    """
    toks, default_n = units(text)
    n = n or default_n
    grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    return bool(grams) and max(grams.values()) >= min_count


def answer_quality(question: str, answer: str, stopped: bool | None) -> dict:
    """``{"stopped", "loop", "language_match"}`` flags of one answer (see the module doc)."""
    return {"stopped": stopped, "loop": degenerate_repetition(answer),
            "language_match": detect_language(answer) == detect_language(question)}


def quality_summary(rows: list[dict]) -> dict:
    """Shares over rows carrying :func:`answer_quality` flags.

    Returns:
        ``{"stops", "loops", "language_match"}``, each ``{"n", "k", "rate", "ci95"}`` (stops over
        the rows whose ``stopped`` is known).
    """
    known = [r["stopped"] for r in rows if r.get("stopped") is not None]
    return {"stops": proportion(sum(known), len(known)),
            "loops": proportion(sum(bool(r.get("loop")) for r in rows), len(rows)),
            "language_match": proportion(sum(bool(r.get("language_match")) for r in rows), len(rows))}
