"""Verifiable medical rewards for GRPO: plain functions a user can read, test and add to.

Each reward has trl's reward-function signature::

    reward(prompts, completions, **columns) -> list[float | None]

``completions`` are conversational (``[{"role": "assistant", "content": ...}]``) or plain text;
``columns`` are the training rows' other fields, one list entry per completion (``answer``,
``options``, ``expected``, ``synonyms`` ...). A reward returns ``None`` for a completion it
cannot score (an MCQ reward on a fact question); trl then leaves it out of the sum, so one
dataset can mix MCQ, fact and free questions. The rewards are summed (trl ``reward_weights``
default to 1).

To add one: write a function of that signature and put it in :data:`REWARDS` (then
``train.reward_funcs: [mcq_letter, mine]`` picks it), or pass it directly to
:func:`medtune.train.grpo.build_grpo_trainer` from Python.

GRPO itself: Shao et al. 2024, *DeepSeekMath* (arXiv:2402.03300), section 4.
"""

from __future__ import annotations

from typing import Callable

from medtune.config import SafetyConfig
from medtune.safety import detect_red_flags, emergency_number
from medtune.text import detect_language, find_format_tokens, item_hit, match_form, parse_answer


def completion_text(completion) -> str:
    """The text of one completion: conversational (list of messages) or plain."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _last_user(prompt) -> str:
    if isinstance(prompt, list):
        return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return str(prompt)


def mcq_letter(prompts, completions, answer=None, options=None, **_) -> list[float | None]:
    """1.0 when the letters the completion chooses (:func:`medtune.text.parse_answer`, as ``medtune eval mcq``
    reads them) equal the row's ``answer`` letters, else 0.0; None for rows without ``options``/``answer``."""
    n = len(completions)
    answer, options = answer or [None] * n, options or [None] * n
    out = []
    for c, a, opts in zip(completions, answer, options):
        if not opts or not a:
            out.append(None)
            continue
        got = parse_answer(completion_text(c), opts)
        out.append(float(got is not None and got == "".join(sorted(set(str(a).upper())))))
    return out


def fact_recall(prompts, completions, expected=None, synonyms=None, **_) -> list[float | None]:
    """Share of the row's ``expected`` items (or their ``synonyms``) that the completion mentions, matched as
    ``medtune eval fact`` matches them (:func:`medtune.text.item_hit`); None for rows without ``expected``."""
    n = len(completions)
    expected, synonyms = expected or [None] * n, synonyms or [None] * n
    out = []
    for c, items, syn in zip(completions, expected, synonyms):
        if not items:
            out.append(None)
            continue
        norm, syn = match_form(completion_text(c)), syn or {}
        out.append(sum(item_hit(norm, [e, *syn.get(e, [])]) for e in items) / len(items))
    return out


def format_reward(prompts, completions, options=None, **_) -> list[float]:
    """1.0 for a well-formed answer: non-empty, no leaked chat-template tokens, and (MCQ rows, i.e. with
    ``options``) a letter the MCQ parser can read; 0.0 otherwise."""
    options = options or [None] * len(completions)
    out = []
    for c, opts in zip(completions, options):
        text = completion_text(c).strip()
        ok = bool(text) and not find_format_tokens(text) and (not opts or parse_answer(text, opts) is not None)
        out.append(float(ok))
    return out


def urgent_care(prompts, completions, **_) -> list[float]:
    """For a prompt with a red flag (:func:`medtune.safety.detect_red_flags`): 1.0 when the completion names the
    emergency number in its first 200 characters. For a benign prompt: 1.0 when it does not (no alarm for all)."""
    cfg, out = SafetyConfig(), []
    for p, c in zip(prompts, completions):
        user = _last_user(p)
        lang = detect_language(user, "en")
        number = emergency_number(lang if lang in ("zh", "ko", "en") else "en", cfg)
        urgent = number in completion_text(c)[:200]
        out.append(float(urgent == bool(detect_red_flags(user))))
    return out


format_reward.__name__ = "format"  # the name trl logs (rewards/format/mean) and recipes use

REWARDS: dict[str, Callable] = {"mcq_letter": mcq_letter, "fact_recall": fact_recall, "format": format_reward,
                                "urgent_care": urgent_care}
