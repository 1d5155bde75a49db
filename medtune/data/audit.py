"""Data-quality audit of a build's kept records, written to ``stats.json`` and the data card.

It looks for what silently damages training data (issue 18): model-format tokens in the text
(``</s>``, ``<|im_end|>``, ``[INST]``, ``<user>:``), questions that refer to a document absent
from the prompt ("this report", "该报告", "이 보고서"), answers cut by length limits (the teacher's
``max_tokens`` or the length filter), the language mix, and the top reject reasons with examples.
"""

from __future__ import annotations

from collections import Counter

from medtune.data.records import Record, Tally
from medtune.text import dangling_reference, find_format_tokens


def _dangling(r: Record) -> str | None:
    """The phrase of the first user turn that points at a document the prompt does not contain."""
    users = [m["content"] for m in r.messages or [] if m["role"] == "user"]
    for i, content in enumerate(users):
        *context, question = content.split("\n\n")
        phrase = dangling_reference(question, "\n\n".join(users[:i] + context))
        if phrase:
            return phrase
    return None


def audit(kept: list[Record], tallies: dict[str, Tally], n_examples: int = 3) -> dict:
    """Audit the kept records and the tallies of one build.

    Returns:
        ``{"format_tokens": {"records", "tokens", "examples", "stripped_records", "stripped_tokens"},
        "dangling_references": {"records",
        "examples"}, "answers_cut": {"records", "share", "by_teacher_limit", "by_length_filter"},
        "languages": {lang: share}, "top_reject_reasons": [{"reason", "count", "examples"}],
        "warnings": [str]}``; ``examples`` are ``{"id", "text"}``. ``format_tokens.records`` counts kept
        records that still hold format tokens; ``stripped_records`` / ``stripped_tokens`` those the readers
        cleaned (``meta.format_tokens_stripped``).
    """
    tokens, fmt_ex, dangling_ex, n_fmt, n_dangling = Counter(), [], [], 0, 0
    for r in kept:
        found = [t for m in r.messages or [] for t in find_format_tokens(m["content"])]
        if found:
            n_fmt += 1
            tokens.update(found)
            if len(fmt_ex) < n_examples:
                fmt_ex.append({"id": r.id, "text": " | ".join(m["content"][:120] for m in r.messages)})
        phrase = _dangling(r)
        if phrase:
            n_dangling += 1
            if len(dangling_ex) < n_examples:
                dangling_ex.append({"id": r.id, "text": f"{phrase!r} in: {r.messages[0]['content'][:160]}"})
    stripped = [r.meta["format_tokens_stripped"] for r in kept if r.meta.get("format_tokens_stripped")]
    by_teacher = sum(bool(r.meta.get("answer_cut")) for r in kept)
    by_filter = sum(n for t in tallies.values() for reason, n in t.dropped.items() if reason.startswith("answer longer than"))
    answers = len(kept) + by_filter
    langs = Counter(r.meta.get("language") or "unknown" for r in kept)
    rejects = Counter(x.reason for t in tallies.values() for x in t.rejects)
    top = [{"reason": reason, "count": n,
            "examples": [f"{x.file} {x.where}" + (f" [{x.field}]" if x.field else "") + (f": {str(x.record)[:120]}" if x.record else "")
                         for t in tallies.values() for x in t.rejects
                         if x.reason == reason][:n_examples]} for reason, n in rejects.most_common(5)]
    warnings = []
    if n_fmt:
        warnings.append(f"{n_fmt} kept records contain model-format tokens {dict(tokens.most_common(5))}")
    if n_dangling:
        warnings.append(f"{n_dangling} kept questions refer to a document absent from the prompt "
                        f"(e.g. {dangling_ex[0]['text'][:80]!r})")
    return {"format_tokens": {"records": n_fmt, "tokens": dict(tokens), "examples": fmt_ex,
                              "stripped_records": len(stripped), "stripped_tokens": sum(stripped)},
            "dangling_references": {"records": n_dangling, "examples": dangling_ex},
            "answers_cut": {"records": by_teacher + by_filter, "share": round((by_teacher + by_filter) / answers, 4) if answers else 0.0,
                            "by_teacher_limit": by_teacher, "by_length_filter": by_filter},
            "languages": {k: round(v / len(kept), 4) for k, v in langs.most_common()} if kept else {},
            "top_reject_reasons": top, "warnings": warnings}


def audit_lines(a: dict) -> list[str]:
    """The audit as markdown lines for the data card."""
    cut = a["answers_cut"]
    fmt = a["format_tokens"]
    lines = ["## Audit", "", "**" + ("WARNING: " + "; ".join(a["warnings"]) if a["warnings"] else "clean: no format tokens, "
                                     "no question refers to an absent document") + "**", "",
             f"- format tokens left: {fmt['records']} records {fmt['tokens'] or ''}",
             f"- format tokens stripped when read: {fmt.get('stripped_records', 0)} kept records "
             f"({fmt.get('stripped_tokens', 0)} tokens)",
             f"- questions referring to an absent document: {a['dangling_references']['records']}",
             f"- answers cut by length limits: {cut['records']} ({cut['share']:.1%}; teacher max_tokens {cut['by_teacher_limit']}, "
             f"length filter {cut['by_length_filter']})",
             f"- language mix: {a['languages']}"]
    for ex in a["format_tokens"]["examples"] + a["dangling_references"]["examples"]:
        lines.append(f"  - {ex['id']}: {ex['text'][:200]!r}")
    if a["top_reject_reasons"]:
        lines += ["", "Top reject reasons:", ""]
        for t in a["top_reject_reasons"]:
            lines.append(f"- {t['reason']} ({t['count']}): " + "; ".join(repr(e) for e in t["examples"]))
    return lines + [""]
