"""Text helpers every stage shares: language by script, HTML stripping, and the two normal forms.

- :func:`detect_language` — ``ko`` / ``zh`` / ``en`` (``unknown`` for no letters) by script counts.
- :func:`dedup_key` — the form near-duplicate and decontamination checks compare (NFKC, lower
  case, only letters and digits).
- :func:`match_form` — the form fact matching compares (NFKC, case-folded, punctuation and
  symbols as spaces, single spaces), which keeps word boundaries.
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
