"""Preference records shared by the data stage (which writes them) and training (which reads them).

Two shapes come out, both in trl's *conversational* form so trl's trainers apply the model's own
chat template exactly as chat and serving do:

- a **pair** (DPO, ORPO): ``{"prompt": [messages ending with a user turn], "chosen":
  [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}``;
- a **labelled completion** (KTO): ``{"prompt": [...], "completion": [{"role": "assistant", ...}],
  "label": bool}``.

Input forms recognised (JSONL/JSON/CSV/.xlsx rows, via :func:`medtune.io.read_rows`):

=============================  =================================================================
trl conversational             ``prompt`` (messages or text) or ``messages``, ``chosen``, ``rejected``
                               (an assistant message list or text); ``chosen``/``rejected`` may
                               also be whole conversations sharing the prompt (trl's implicit prompt)
MedicalGPT reward/DPO data     ``question``, ``response_chosen``, ``response_rejected``; optional
                               ``system`` and ``history`` (``[[user, assistant], ...]``)
KTO (trl unpaired)             ``prompt`` (messages or text), ``completion``, ``label`` (true/false)
=============================  =================================================================

A record that fits none, or has an empty, non-text or identical field, becomes a
:class:`~medtune.io.Reject` naming file, line and field, as everywhere else in medtune.
"""

from __future__ import annotations

from pathlib import Path

from medtune.errors import DataFileError
from medtune.io import Reject, RecordError, read_rows, validate_messages

TRUE_LABELS = {"true", "1", "yes", "y", "desirable", "good", "chosen"}
FALSE_LABELS = {"false", "0", "no", "n", "undesirable", "bad", "rejected"}


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(key, "missing or empty" if value in (None, "") else f"must be text, got {type(value).__name__}")
    return value.strip()


def _prompt(record: dict, key: str) -> list[dict]:
    """The prompt of ``record[key]``: text (one user turn) or messages ending with a user turn."""
    value = record.get(key)
    if isinstance(value, str):
        return [{"role": "user", "content": _text(record, key)}]
    if not isinstance(value, list) or not value:
        raise RecordError(key, "missing or empty; expected text or a list of {role, content} messages")
    try:
        messages = validate_messages(value + [{"role": "assistant", "content": "-"}])[:-1]
    except RecordError as e:
        raise RecordError(f"{key}{e.field.removeprefix('messages')}", e.reason) from None
    return messages


def _answer(record: dict, key: str, prompt: list[dict]) -> list[dict]:
    """``record[key]`` as one assistant message: text, ``[{"role": "assistant", ...}]``, or a whole
    conversation that starts with ``prompt`` (trl's implicit-prompt form)."""
    value = record.get(key)
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(record, key)}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordError(key, "missing or empty; expected text or an assistant message")
    if len(value) > 1 and [{"role": m.get("role"), "content": m.get("content")} for m in value[:len(prompt)]] == prompt:
        value = value[len(prompt):]
    last = value[-1] if len(value) == 1 and isinstance(value[-1], dict) else None
    if last is None or last.get("role") != "assistant" or not isinstance(last.get("content"), str) or not last["content"].strip():
        raise RecordError(key, "must be one assistant message with non-empty content (or text)")
    return [{"role": "assistant", "content": last["content"].strip()}]


def _medicalgpt_prompt(record: dict) -> list[dict]:
    messages = [{"role": "system", "content": record["system"].strip()}] if isinstance(record.get("system"), str) and record["system"].strip() else []
    for j, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise RecordError(f"history[{j}]", "must be a [user, assistant] pair of non-empty strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages + [{"role": "user", "content": _text(record, "question")}]


def record_to_pair(record: dict) -> dict:
    """One preference pair ``{"prompt", "chosen", "rejected"}`` from a record in any form above.

    Raises:
        RecordError: unknown form, or an empty / malformed / identical field (named).
    """
    if "response_chosen" in record or "response_rejected" in record:
        prompt = _medicalgpt_prompt(record)
        chosen, rejected = (_answer(record, k, prompt) for k in ("response_chosen", "response_rejected"))
        names = ("response_chosen", "response_rejected")
    elif "chosen" in record or "rejected" in record:
        key = "prompt" if "prompt" in record else "messages" if "messages" in record else None
        if key is None:
            chosen = record.get("chosen")
            if not (isinstance(chosen, list) and len(chosen) > 1):
                raise RecordError("prompt", "missing: give prompt (or messages), or chosen/rejected as whole conversations")
            prompt = _prompt({"prompt": chosen[:-1]}, "prompt")
        else:
            prompt = _prompt(record, key)
        chosen, rejected = (_answer(record, k, prompt) for k in ("chosen", "rejected"))
        names = ("chosen", "rejected")
    else:
        raise RecordError("<record>", f"not a preference pair: expected prompt/chosen/rejected or question/"
                                      f"response_chosen/response_rejected; fields seen: {sorted(map(str, record))[:12]}")
    if chosen[0]["content"] == rejected[0]["content"]:
        raise RecordError(names[1], f"identical to {names[0]}: a pair must differ")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _label(record: dict) -> bool:
    value = record.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_LABELS | FALSE_LABELS:
        return value.strip().lower() in TRUE_LABELS
    raise RecordError("label", f"must be true or false (got {value!r})")


def record_to_kto(record: dict) -> dict:
    """One labelled completion ``{"prompt", "completion", "label"}`` (KTO's unpaired form).

    Raises:
        RecordError: missing prompt/completion, or a label that is not true/false.
    """
    if "completion" not in record and "label" not in record:
        raise RecordError("<record>", f"not a KTO record: expected prompt, completion, label; fields seen: {sorted(map(str, record))[:12]}")
    prompt = _prompt(record, "prompt" if "prompt" in record else "messages")
    return {"prompt": prompt, "completion": _answer(record, "completion", prompt), "label": _label(record)}


def read_preferences(path: Path | str, kind: str = "pair", max_records: int | None = None) -> tuple[list[dict], list[Reject]]:
    """Read preference pairs (``kind="pair"``) or KTO labelled completions (``kind="kto"``).

    A pair file given to KTO is *unpaired*: each pair gives a desirable (chosen) and an undesirable
    (rejected) completion of its prompt, as trl's ``unpair_preference_dataset`` does.

    Returns:
        ``(rows, rejects)``; rejects carry file, line and field.

    Raises:
        DataFileError: unreadable file, or no usable record (the first reject is quoted).
    """
    rows, rejects = [], []
    for where, rec in read_rows(path):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        try:
            if kind == "kto" and ("chosen" in rec or "response_chosen" in rec):
                pair = record_to_pair(rec)
                rows += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                         {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
            else:
                rows.append(record_to_kto(rec) if kind == "kto" else record_to_pair(rec))
        except RecordError as e:
            rejects.append(Reject(str(path), where, e.reason, e.field, rec))
        if max_records and len(rows) >= max_records:
            break
    if not rows:
        first = f"; first: {rejects[0].where} {rejects[0].field}: {rejects[0].reason}" if rejects else ""
        raise DataFileError(f"{path}: no usable {'KTO' if kind == 'kto' else 'preference'} records ({len(rejects)} rejected{first})")
    return rows, rejects
