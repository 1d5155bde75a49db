"""LLM-as-judge core shared by ``medtune eval judge`` and the data stage's ``pairwise-judge`` generator.

- strict reply parsing: a reply must hold one JSON object with exactly the expected fields; an
  off-format reply is re-asked with the reason (:func:`ask`), then counted invalid;
- the judge prompts ``judge_prompts/<kind>_<lang>.txt`` (``rubric``, ``pairwise``; en, zh, ko),
  replaceable from a ``prompts_dir`` with the same file names (:func:`load_template`);
- order-swapped pairwise judging (:func:`judge_swapped`): A vs B is judged as (A, B) and as
  (B, A); a verdict counts only when both orders agree, otherwise it is a tie and an order
  inconsistency (position bias; Zheng et al., "Judging LLM-as-a-judge with MT-Bench and Chatbot
  Arena", NeurIPS 2023).

A judge is anything with ``async complete(messages, **params)`` returning an object with
``.text``: in medtune always the shared client :class:`medtune.llm.LLMClient` (limits, retries,
SQLite cache).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from string import Template

from medtune.errors import ConfigError

PROMPTS_DIR = Path(__file__).parent / "judge_prompts"
REFERENCE = {"en": "\nReference answer (written by an expert):\n", "zh": "\n参考答案（专家撰写）：\n",
             "ko": "\n참고 답변(전문가 작성):\n"}


class InvalidReply(ValueError):
    """A judge reply that is not the required JSON object; the message says what is wrong."""


def json_object(reply: str) -> dict:
    """The JSON object between the first ``{`` and the last ``}`` of ``reply``.

    Raises:
        InvalidReply: no object, or it does not parse.
    """
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end < start:
        raise InvalidReply("no JSON object in the reply")
    try:
        obj = json.loads(reply[start:end + 1])
    except json.JSONDecodeError as e:
        raise InvalidReply(f"the JSON object does not parse ({e.msg})") from None
    if not isinstance(obj, dict):
        raise InvalidReply("the reply is not a JSON object")
    return obj


def parse_verdict(reply: str) -> dict:
    """``{"winner": "1"|"2"|"tie", "rationale": str}`` from a pairwise judge reply.

    Raises:
        InvalidReply: a winner other than "1", "2" or "tie".
    """
    obj = json_object(reply)
    winner = str(obj.get("winner", "")).strip().lower()
    if winner not in ("1", "2", "tie"):
        raise InvalidReply(f"'winner' must be \"1\", \"2\" or \"tie\", got {obj.get('winner')!r}")
    return {"winner": winner, "rationale": str(obj.get("rationale", "")).strip()}


def load_template(kind: str, lang: str, prompts_dir: Path | None = None) -> Template:
    """The ``<kind>_<lang>.txt`` judge prompt (``$question``, ``$answer`` / ``$answer_1``, ``$answer_2``,
    ``$reference`` placeholders), from ``prompts_dir`` first, then the shipped ones.

    Raises:
        ConfigError: the file exists in neither folder.
    """
    for folder in filter(None, (prompts_dir, PROMPTS_DIR)):
        path = Path(folder) / f"{kind}_{lang}.txt"
        if path.is_file():
            return Template(path.read_text(encoding="utf-8"))
    raise ConfigError(f"no judge prompt {kind}_{lang}.txt in {prompts_dir or PROMPTS_DIR} (shipped: {PROMPTS_DIR})")


def reference_block(reference: str | None, lang: str) -> str:
    """The ``$reference`` text of a judge prompt: a labelled expert answer, or "" when there is none."""
    return REFERENCE.get(lang, REFERENCE["en"]) + reference + "\n" if reference else ""


async def ask(judge, messages: list[dict], parse, max_retries: int, **params) -> tuple[dict | None, int]:
    """One judgement with strict parsing; off-format replies are re-asked with the reason.

    Args:
        judge: the client; ``params`` (``seed``, ``max_tokens``, ``temperature`` ...) go to its ``complete``.
        parse: reply text -> dict, raising :class:`InvalidReply`.
        max_retries: re-asks after an invalid reply.

    Returns:
        ``(parsed or None when still invalid, attempts used)``.
    """
    for attempt in range(max_retries + 1):
        reply = (await judge.complete(messages, **params)).text
        try:
            return parse(reply), attempt + 1
        except InvalidReply as e:
            messages = messages + [{"role": "assistant", "content": reply},
                                   {"role": "user", "content": f"Your reply was not valid: {e}. "
                                                               "Reply again with only the JSON object."}]
    return None, max_retries + 1


async def sampled(judge, messages: list[dict], parse, samples: int, max_retries: int, seed: int,
                  **params) -> tuple[list[dict], int]:
    """``samples`` judgements (sample i sent with ``seed + i``): ``(valid parsed replies, calls made)``."""
    got = await asyncio.gather(*(ask(judge, messages, parse, max_retries, seed=seed + i, **params) for i in range(samples)))
    return [g for g, _ in got if g is not None], sum(n for _, n in got)


async def _one_order(judge, template: Template, question: str, first: tuple[str, str], second: tuple[str, str],
                     reference: str, samples: int, max_retries: int, seed: int, params: dict) -> tuple[str | None, str | None]:
    """``(winner label | "tie" | None when invalid, its rationale)`` for one order; majority over samples."""
    prompt = template.substitute(question=question, answer_1=first[1], answer_2=second[1], reference=reference)
    valid, _ = await sampled(judge, [{"role": "user", "content": prompt}], parse_verdict, samples, max_retries, seed, **params)
    if not valid:
        return None, None
    counts = Counter(v["winner"] for v in valid).most_common()
    win = "tie" if len(counts) > 1 and counts[0][1] == counts[1][1] else counts[0][0]
    rationale = next((v["rationale"] for v in valid if v["winner"] == win), valid[0]["rationale"])
    return {"1": first[0], "2": second[0], "tie": "tie"}[win], rationale


async def judge_swapped(judge, template: Template, question: str, answers: dict[str, str], reference: str = "", *,
                        samples: int = 1, max_retries: int = 2, seed: int = 0, **params) -> dict:
    """Order-swapped pairwise verdict of two answers (Zheng et al. 2023).

    Args:
        judge: the client (``async complete``).
        template: a ``pairwise_<lang>`` template (:func:`load_template`).
        question: the question shown to the judge.
        answers: exactly two ``{label: answer text}``, A first.
        reference: the ``$reference`` block (:func:`reference_block`), "" for none.
        samples: judgements per order (majority verdict; > 1 only makes sense with temperature > 0).
        max_retries: re-asks of an off-format reply.
        seed: seed of the first judgement (sample i uses ``seed + i``).
        **params: further sampling parameters for the judge (``max_tokens``, ``temperature`` ...).

    Returns:
        ``{"verdict": label | "tie" | None, "order_ab", "order_ba": label | "tie" | None,
        "consistent": bool | None, "rationale_ab", "rationale_ba": str | None}``; ``verdict`` is
        the label both orders chose, "tie" when they disagree or both say tie, None when either
        order got no valid reply.

    Raises:
        ValueError: ``answers`` does not hold exactly two answers.
    """
    if len(answers) != 2:
        raise ValueError(f"pairwise judging needs exactly two answers, got {len(answers)}")
    a, b = answers.items()
    args = (reference, samples, max_retries, seed, params)
    (ab, why_ab), (ba, why_ba) = await asyncio.gather(_one_order(judge, template, question, a, b, *args),
                                                      _one_order(judge, template, question, b, a, *args))
    valid = ab is not None and ba is not None
    return {"verdict": (ab if ab == ba else "tie") if valid else None, "order_ab": ab, "order_ba": ba,
            "consistent": ab == ba if valid else None, "rationale_ab": why_ab, "rationale_ba": why_ba}
