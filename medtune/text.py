"""Text helpers every stage shares: language by script, HTML stripping, and the two normal forms.

- :func:`detect_language` — ``ko`` / ``zh`` / ``en`` (``unknown`` for no letters) by script counts.
- :func:`dedup_key` — the form near-duplicate and decontamination checks compare (NFKC, lower
  case, only letters and digits).
- :func:`match_form` — the form fact matching compares (NFKC, case-folded, punctuation and
  symbols as spaces, single spaces), which keeps word boundaries.
- :func:`find_format_tokens` / :func:`strip_format_tokens` — chat-template and special tokens
  (``</s>``, ``<|im_end|>``, ``[INST]``, ``<user>:`` ...) left in data by an earlier export.
- :func:`dangling_reference` — a question that points at a document ("this report") it does not contain.
- :func:`parse_answer` — the option letters a free-text reply chooses (MCQ evaluation and GRPO rewards).
- :func:`item_hit` — whether an expected item (or a synonym) occurs in an answer (fact recall and rewards).
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_LATIN = re.compile(r"[A-Za-z]")
LANGS = ("zh", "ko", "en")


def detect_language(text: str, default: str = "unknown") -> str:
    """``ko`` / ``zh`` / ``en`` by script counts (Hangul, Han, Latin letters); ``default`` if none.

    Korean text may contain Hanja, so any substantial Hangul share (>= 20% of Hangul + Han) wins
    over Han; Chinese wins over Latin when Han characters are at least a third of Latin letters
    (drug names and units in Latin letters are common in Chinese text).
    """
    ko, zh, en = len(_HANGUL.findall(text)), len(_HAN.findall(text)), len(_LATIN.findall(text))
    if ko + zh + en == 0:
        return default
    if ko and ko >= 0.2 * (ko + zh):
        return "ko"
    if zh and zh * 3 >= en:
        return "zh"
    return "en" if en else "zh"


_TAG = re.compile(r"<[^>]+>")
_BR = re.compile(r"<\s*(br|/p|/li|/div|/h[1-6])\s*/?\s*>", re.I)


def strip_html(value: str) -> str:
    """Remove HTML tags and decode entities; line-breaking tags become newlines."""
    if "<" not in value and "&" not in value:
        return value.strip()
    text = html.unescape(_TAG.sub("", _BR.sub("\n", value)))
    return re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n", text)).strip()


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@lru_cache(maxsize=64)
def dedup_key(text: str) -> str:
    """NFKC, lower case, everything but letters and digits removed (cached: the filters of one record compute it in turn)."""
    return _NON_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


def match_form(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols replaced by spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return " ".join(text.split())


# Special and chat-template tokens of common model formats (Llama 2, ChatML, GPT-2, Llama 3, Gemma,
# Phi-3, ChatGLM, Baichuan) and the role markers of exported chats (Huatuo, BELLE, MOSS).
FORMAT_TOKEN = re.compile(
    r"</s>|<s>|<\|(?:im_start|im_end|endoftext|eot_id|end_of_text|begin_of_text|start_header_id|end_header_id"
    r"|end|user|assistant|system|eos|bos|pad|sep|cls)\|>|\[/?INST\]|<</?SYS>>|<(?:eos|bos|pad|unk|sep|cls)>"
    r"|<(?:start|end)_of_turn>|\[(?:gMASK|sop|eop)\]|<reserved_\d+>"
    r"|<\s*/?\s*(?:user|bot|human|assistant|gpt|system)\s*>\s*[:：]?", re.I)


def find_format_tokens(text: str) -> list[str]:
    """The format tokens in ``text`` (see :data:`FORMAT_TOKEN`), in order, as written."""
    return FORMAT_TOKEN.findall(text)


def strip_format_tokens(text: str) -> tuple[str, int]:
    """``(text without format tokens, how many were removed)``; whitespace at the cuts is tidied."""
    new, n = FORMAT_TOKEN.subn(" ", text)
    if not n:
        return text, 0
    return re.sub(r"[ \t]{2,}", " ", new).strip(), n


_DANGLING = re.compile(
    r"\b(?:this|the above|the following|given|above|that)\s+(?:radiology\s+|medical\s+|clinical\s+)?"
    r"(?:report|passage|guideline|text|document|article|paragraph|excerpt|findings|case)\b"
    r"|(?:该|此|这份|这篇|这段|上述|以上|本)(?:报告|段落|文段|指南|文章|文本|原文|材料|病例|影像报告)"
    r"|(?:이|위|해당|다음)\s?(?:보고서|판독문|지침|문단|글|본문|기사|증례)", re.I)


# a document given in the prompt under a label: "문서: ...", "지문:\n...", "Passage: ...", "原文：..."
_DOC_LABEL = re.compile(
    r"(?:^|\n)\s*(?:문서|지문|본문|원문|글|기사|보고서|판독문|지침|자료|document|passage|text|article|context|excerpt|"
    r"report|radiology report|guideline passage|原文|文章|文本|材料|资料|段落|报告|影像报告|指南原文|病例|背景资料?)\s*[:：]", re.I)


def dangling_reference(question: str, context: str = "") -> str | None:
    """The phrase by which ``question`` refers to a document ("this report", "该报告", "이 글"), when
    the prompt does not hold that document; else None.

    The document counts as present when ``context`` (the rest of the prompt) together with the lines
    of ``question`` other than the one with the phrase is 200 characters or more, or when a label such
    as ``문서:``, ``Passage:``, ``原文：`` (:data:`_DOC_LABEL`) introduces at least 20 characters of text.
    """
    m = _DANGLING.search(question)
    if m is None:
        return None
    start, end = question.rfind("\n", 0, m.start()) + 1, question.find("\n", m.end())
    rest = context + "\n" + question[:start] + question[len(question) if end < 0 else end:]
    if len(rest.strip()) >= 200:
        return None
    whole = context + "\n" + question
    for label in _DOC_LABEL.finditer(whole):
        body = whole[label.end():].split("\n\n")[0]
        body = body[:body.find(m.group(0))] if m.group(0) in body else body
        if len(re.sub(r"\s", "", body)) >= 20:
            return None
    return m.group(0)


_ANSWER_RE = re.compile(r"(?i:answer|correct answer|最终答案|正确答案|答案|정답)\s*(?:(?i:is)|是|为|은|는)?\s*[:：]?\s*"
                        r"[\*\(（\[]*([A-J](?:\s*(?:,|、|，|和|及|and)?\s*[A-J])*)(?![A-Za-z])")
_LEADING_RE = re.compile(r"^[\*\(（\[]*([A-J](?:\s*[,、，]?\s*[A-J])*)\s*(?:$|[\.\)）\]．:：、\n*])")


def parse_answer(reply: str, options: dict[str, str]) -> str | None:
    """Letters chosen in a free-text reply, or None when none can be found.

    Tries, in order: the last ``Answer: X`` / ``答案：X`` / ``정답: X`` statement; letters at
    the very start (``"C"``, ``"(B)"``, ``"A, C."``); a reply that is exactly one option's text.

    Returns:
        Sorted letters (e.g. ``"AC"``) that are all among ``options``, else None.
    """
    text = reply.strip()
    found = [m.group(1) for m in _ANSWER_RE.finditer(text)]
    letters = found[-1] if found else (m.group(1) if (m := _LEADING_RE.match(text)) else None)
    if letters is None:
        exact = [k for k, v in options.items() if v.strip().lower() == text.rstrip(".。").lower()]
        letters = exact[0] if len(exact) == 1 else None
    if letters is None:
        return None
    letters = "".join(sorted(set(re.sub(r"[^A-J]", "", letters))))
    return letters if letters and all(c in options for c in letters) else None


def item_hit(answer_norm: str, names: list[str]) -> bool:
    """True when any normalised name occurs in the normalised answer (word-bounded for Latin script)."""
    for name in filter(None, (match_form(n) for n in names)):
        pattern = re.escape(name)
        if re.search(r"[a-z0-9]", name):
            pattern = rf"(?<![a-z0-9]){pattern}(?![a-z0-9])"
        if re.search(pattern, answer_norm):
            return True
    return False


_SUPPORT_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+|[a-z0-9]+(?:[.,][0-9]+)*")


def support_units(text: str) -> set[str]:
    """Content units of ``text`` for a lexical support check: character bigrams inside each run of
    CJK / Hangul characters (a lone character is too common to count), and lower-cased Latin words and
    numbers ("7.0", "135") elsewhere. NFKC first, so full-width digits match ASCII ones. Unlike the
    index's ``ngram`` terms (:func:`medtune.retrieval.tokenize`) a lone character is no unit, so "是" has
    no support, and decimals stay whole."""
    units: set[str] = set()
    for m in _SUPPORT_UNIT.finditer(unicodedata.normalize("NFKC", text).lower()):
        run = m.group()
        if run[0].isascii():
            units.add(run)
        else:
            units.update(run[i:i + 2] for i in range(len(run) - 1))
    return units


def answer_support(answer: str, source: str) -> float:
    """Share of the answer's content units (:func:`support_units`) that occur in ``source``, in [0, 1].

    An extractive grounding check: an answer written from the source reuses its words and numbers,
    an invented one does not ("提高免疫力" for a passage that never says it), and an answer with no
    content unit at all ("是", "Yes") scores 0. Linear in the two lengths. Cheap and offline; a judge
    (``data.judge``) checks meaning, this checks wording."""
    units = support_units(answer)
    return len(units & support_units(source)) / len(units) if units else 0.0
