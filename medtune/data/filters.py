"""Filters over ``qa`` records: each returns ``(keep, reason)``; :func:`run_filters` counts every drop.

| filter              | drops                                                                 |
|---------------------|-----------------------------------------------------------------------|
| :func:`check_answer`| empty answer, answer identical to the question                        |
| :func:`length_filter` | question or answer outside character bounds                        |
| :func:`language_filter` | answer language differs from the record's ``meta.language``      |
| :class:`ExactDedup` | the same normalised conversation seen before                          |
| :class:`NearDedup`  | Jaccard >= threshold to a kept record (MinHash LSH, character n-grams) |
| :class:`Decontaminator` | shares a long n-gram with any benchmark question                  |
| :class:`PHIScrubber`| never drops: replaces PHI/PII with typed placeholders, counted per type |

Every filter reads ``messages`` (user turns = question, assistant turns = answer).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from medtune.data.records import Record, Tally
from medtune.errors import DataFileError
from medtune.io import Reject, read_rows, read_text
from medtune.text import dedup_key, detect_language

Filter = Callable[[Record], tuple[bool, str]]


def question_of(r: Record) -> str:
    return "\n".join(m["content"] for m in r.messages or [] if m["role"] == "user")


def answer_of(r: Record) -> str:
    return "\n".join(m["content"] for m in r.messages or [] if m["role"] == "assistant")


def check_answer(r: Record) -> tuple[bool, str]:
    """Drop empty answers and answers equal to the question (after :func:`medtune.text.dedup_key`)."""
    a = dedup_key(answer_of(r))
    if not a:
        return False, "empty answer"
    if a == dedup_key(question_of(r)):
        return False, "answer == question"
    return True, ""


_CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uac00-\ud7a3\u3040-\u30ff]")


def text_length(text: str) -> int:
    """Length in characters, a Chinese, Japanese or Korean character counting 2: one Han or Hangul
    syllable carries about a word (是, 无, 氧 are whole answers), so ``min_chars: 2`` keeps them."""
    text = text.strip()
    return len(text) + len(_CJK.findall(text))


def length_filter(min_chars: int = 2, max_chars: int = 8000) -> Filter:
    """Drop records whose question or answer is shorter than ``min_chars`` or longer than ``max_chars``.

    The minimum is checked on :func:`text_length` (CJK characters count 2), the maximum on plain characters.
    """
    def check(r: Record) -> tuple[bool, str]:
        for part, text in (("question", question_of(r)), ("answer", answer_of(r))):
            if text_length(text) < min_chars:
                return False, f"{part} shorter than {min_chars} chars"
            if len(text.strip()) > max_chars:
                return False, f"{part} longer than {max_chars} chars"
        return True, ""
    return check


def language_filter(r: Record) -> tuple[bool, str]:
    """Drop a record whose answer's script-detected language differs from ``meta.language``."""
    want = r.meta.get("target_language") or r.meta.get("language")
    got = detect_language(answer_of(r))
    if want in ("zh", "ko", "en") and got in ("zh", "ko", "en") and got != want:
        return False, f"language mismatch ({got} answer, {want} expected)"
    return True, ""


class ExactDedup:
    """Drop records whose normalised conversation (all turns) was already kept."""

    def __init__(self):
        self.seen: set[bytes] = set()

    def __call__(self, r: Record) -> tuple[bool, str]:
        key = hashlib.blake2b(dedup_key(json.dumps(r.messages, ensure_ascii=False)).encode(), digest_size=16).digest()
        if key in self.seen:
            return False, "exact duplicate"
        self.seen.add(key)
        return True, ""


def char_shingles(text: str, n: int) -> set[str]:
    """Character n-grams of the normalised text (works for Chinese and Korean, which have no spaces)."""
    t = dedup_key(text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))} if t else set()


def shingle_hashes(text: str, n: int, normalized: bool = False, distinct: bool = True):
    """32-bit polynomial hashes of the character n-grams of the normalised text.

    Args:
        distinct: drop repeated hashes (a sort); callers that take a min or test membership
            can skip it.

    Returns:
        uint64 array ``(n_shingles,)`` with values < 2**32 (one value for texts shorter than ``n``).
    """
    import numpy as np

    cps = np.frombuffer((text if normalized else dedup_key(text)).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) < n:
        n = max(1, len(cps))
        if not len(cps):
            return np.zeros(1, dtype=np.uint64)
    h = np.zeros(len(cps) - n + 1, dtype=np.uint64)
    for k in range(n):  # h = sum cps[i+k] * 1000003**(n-1-k)  (mod 2**64, then folded to 32 bits)
        h = h * np.uint64(1000003) + cps[k:len(cps) - n + 1 + k]
    h = (h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return np.unique(h) if distinct else h


PRIME32 = 4294967291  # largest prime below 2**32


class NearDedup:
    """Near-duplicate removal with MinHash LSH over character n-gram shingles.

    Method: Broder, "On the resemblance and containment of documents" (1997) for MinHash;
    LSH banding as in Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3;
    implemented with ``datasketch``; shingles are hashed by :func:`shingle_hashes` (vectorised,
    deterministic across runs, several times faster than hashing each shingle with SHA-1). A record is dropped when its estimated Jaccard similarity
    to an already kept record is >= ``threshold``.

    ``kb-template`` records are not compared: they are built from structured fields, so two of them
    that look alike are either paraphrased questions about one fact (kept on purpose, ``paraphrases``)
    or different entries with similar values ("Indications of amlodipine: hypertension" vs "... of
    losartan: hypertension"), which are distinct facts. On a real 1,782-record disease KB the check
    removed 22% of them. Their exact duplicates are still removed by :class:`ExactDedup`; they are
    counted in ``exempt``. ``safety-sft`` records are not compared either: their answers are the same
    urgent-care or calm message on purpose, so two short red-flag messages about different emergencies
    would look alike through the shared answer.

    Args:
        threshold: Jaccard threshold (0-1).
        ngram: shingle length in characters.
        num_perm: MinHash permutations (more: slower, more accurate).
        seed: MinHash seed.
    """

    def __init__(self, threshold: float = 0.7, ngram: int = 5, num_perm: int = 64, seed: int = 1):
        import numpy as np
        from datasketch import LeanMinHash, MinHashLSH

        self._minhash, self.ngram, self.num_perm, self.seed, self._np = LeanMinHash, ngram, num_perm, seed, np
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        gen = np.random.RandomState(seed)  # h_i(x) = (a_i x + b_i) mod p with p = 2**32 - 5 (prime)
        self._a = gen.randint(1, PRIME32, size=num_perm, dtype=np.uint64)
        self._b = gen.randint(0, PRIME32, size=num_perm, dtype=np.uint64)
        self._scheme = {"scheme": "legacy"} if "scheme" in LeanMinHash.__init__.__code__.co_varnames else {}
        self.count = self.exempt = 0

    def signature(self, text: str):
        """A datasketch ``LeanMinHash`` whose ``(num_perm,)`` values are computed here in one vectorised step."""
        np = self._np
        hv = shingle_hashes(text, self.ngram, distinct=False)[:, None] % np.uint64(PRIME32)  # (n_shingles, 1)
        values = ((hv * self._a + self._b) % np.uint64(PRIME32)).min(axis=0)  # a, x, b < p: no uint64 overflow
        return self._minhash(seed=self.seed, hashvalues=values, **self._scheme)

    def __call__(self, r: Record) -> tuple[bool, str]:
        if r.meta.get("generator") in ("kb-template", "safety-sft"):
            self.exempt += 1
            return True, ""
        m = self.signature(question_of(r) + "\n" + answer_of(r))
        if self.lsh.query(m):
            return False, "near duplicate"
        self.lsh.insert(str(self.count), m)
        self.count += 1
        return True, ""


# ---------------------------------------------------------------- PHI / PII
def cn_id_valid(s: str) -> bool:
    """GB 11643-1999 check digit of an 18-character Chinese resident identity number."""
    if not re.fullmatch(r"\d{17}[\dXx]", s):
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(c) * w for c, w in zip(s[:17], weights)) % 11] == s[17].upper()


def kr_rrn_valid(s: str) -> bool:
    """Korean resident registration number shape: YYMMDD (a real month/day), then a 1-8 sex/century digit and 6 digits."""
    d = s.replace("-", "")
    return len(d) == 13 and 1 <= int(d[2:4]) <= 12 and 1 <= int(d[4:6]) <= 31 and d[6] in "12345678"


# A date is PHI when it is about a person: an event of a patient's care or life near it (admission,
# birth, visit ...); a date of a law, approval or publication is not (HIPAA Safe Harbor lists dates
# "directly related to an individual", 45 CFR 164.514(b)(2)(i)(C)).
PERSON_DATE = re.compile(
    r"admi|discharg|born|birth|\bDOB\b|visit|seen|present|surgery|operat|procedure|exam|scan|study|biops|diagnos|"
    r"follow|clinic|hospital|\bED\b|patient|pt\b|date of service|deliver|died|death|onset|"
    r"入院|出院|出生|生日|就诊|就医|门诊|急诊|复诊|随访|手术|检查|诊断|住院|发病|分娩|死亡|患者|病人|患儿|来院|"
    r"입원|퇴원|출생|생년월일|생일|내원|방문|진료|외래|응급|수술|검사|진단|발병|분만|사망|환자", re.I)
NOT_PERSON_DATE = re.compile(r"^\s*(?:起|开始)?\s*(?:施行|实施|生效|颁布|发布|公布|印发|批准|通过|修订|修正|废止|更新|"
                             r"시행|공포|승인|개정|발표|제정|갱신|업데이트)|"
                             r"^\s*(?:effective|enacted|approved|published|issued|amended|updated|revised)", re.I)
# the date of a document: "该指南于2020年3月1日更新", "본 지침은 2021년 ...", "guideline updated on ..."
DOCUMENT_DATE = re.compile(r"(?:指南|共识|规范|标准|指引|说明书|本版|文件|지침|가이드라인|권고안|guidelines?|consensus|statement|"
                           r"recommendations?|version|updated|revised|published)\s*(?:于|在|自|은|는|이|가|on|in|of|dated)?\s*$", re.I)


def date_about_person(m: re.Match, window: int = 24) -> bool:
    """True when the date matched by ``m`` is about a person: a care or life event word
    (:data:`PERSON_DATE`) within ``window`` characters, no law/approval/update verb right after it
    (:data:`NOT_PERSON_DATE`) and no document as its subject right before it (:data:`DOCUMENT_DATE`)."""
    text = m.string
    if NOT_PERSON_DATE.search(text[m.end():m.end() + 12]) or DOCUMENT_DATE.search(text[max(0, m.start() - 16):m.start()]):
        return False
    return PERSON_DATE.search(text[max(0, m.start() - window):m.end() + window]) is not None


_D = r"(?<![\dA-Za-z])"
_E = r"(?![\dA-Za-z])"
PHI_PATTERNS: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = [
    ("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), None),
    ("ID", re.compile(_D + r"\d{17}[\dXx]" + _E), lambda m: cn_id_valid(m.group(0))),
    ("ID", re.compile(_D + r"\d{6}-?\d{7}" + _E), lambda m: kr_rrn_valid(m.group(0))),
    ("PHONE", re.compile(r"(?<![\d])\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}(?!\d)"), None),
    ("PHONE", re.compile(_D + r"1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}" + _E), None),           # CN mobile
    ("PHONE", re.compile(_D + r"0\d{1,2}-\d{3,4}-\d{4}" + _E), None),                    # KR (010-, 02-) / CN landline
    ("PHONE", re.compile(_D + r"0\d{2,3}-\d{7,8}" + _E), None),                          # CN landline 010-12345678
    ("PHONE", re.compile(r"\(\d{3}\)\s?\d{3}-\d{4}" + _E), None),                        # (555) 123-4567
    ("DATE", re.compile(r"(?<!\d)(?:19|20)\d{2}(?:[-/.]\d{1,2}[-/.]\d{1,2}|年\d{1,2}月\d{1,2}日|년\s?\d{1,2}월\s?\d{1,2}일)(?!\d)"), date_about_person),
    ("DATE", re.compile(r"(?<!\d)\d{1,2}/\d{1,2}/(?:19|20)\d{2}(?!\d)"), date_about_person),
]
NAME_LABEL = re.compile(r"((?:患者)?姓名|病人|患者|환자명|환자\s?이름|성명|이름|Patient(?: name)?|Name)\s*[:：]\s*"
                        r"([\u4e00-\u9fff]{2,4}|[\uac00-\ud7a3]{2,4}|[A-Z][a-z]+(?: [A-Z][a-z]+){0,2})")
NAME_TITLE = re.compile(r"\b(Mr|Mrs|Ms|Dr)\.\s+[A-Z][a-z]+(?: [A-Z][a-z]+)?")
_DIGIT = re.compile(r"\d")
_NAME_HINT = re.compile(r"姓名|病人|患者|환자|성명|이름|Patient|Name|Mr\.|Mrs\.|Ms\.|Dr\.")
DEFAULT_MRN_PATTERNS = [r"(?:MRN|病历号|住院号|门诊号|병록번호|등록번호)\s*[:：#]?\s*([A-Z]{0,3}\d[\d-]{3,})"]


class PHIScrubber:
    """Replace PHI/PII in every message with typed placeholders; never drops a record.

    Types: ``[EMAIL]``; ``[ID]`` for Chinese resident IDs (checksum-valid), Korean RRNs
    (valid date part) and medical record numbers (``mrn_patterns``, the first group is replaced);
    ``[PHONE]`` (CN, KR, international, North American); ``[DATE]`` (full dates with day, only
    when about a person: :func:`date_about_person`; "2004年12月1日起施行" is kept);
    ``[NAME]`` after a label (``姓名：``, ``환자명:``, ``Patient:``) or a title (``Dr.``). Redaction
    marks already in the text (``XXXX``, ``___``) are left alone.

    Args:
        mrn_patterns: regular expressions for record numbers; group 1 (or the whole match) becomes ``[ID]``.
        types: which placeholder types to apply (default all).
    """

    def __init__(self, mrn_patterns: list[str] | None = None, types: Iterable[str] = ("EMAIL", "ID", "PHONE", "DATE", "NAME")):
        self.types = set(types)
        self.mrn = [re.compile(p) for p in (DEFAULT_MRN_PATTERNS if mrn_patterns is None else mrn_patterns)]
        self.counts: Counter = Counter()
        self.records_changed = 0

    def scrub(self, text: str) -> str:
        """``text`` with PHI replaced; ``self.counts`` is incremented per type."""
        digits, at = _DIGIT.search(text) is not None, "@" in text  # every ID/PHONE/DATE/MRN needs a digit
        if "ID" in self.types and digits:
            for p in self.mrn:
                text = p.sub(lambda m: self._group(m, "ID"), text)
        for kind, pattern, valid in PHI_PATTERNS:
            if kind in self.types and (digits if kind != "EMAIL" else at):
                text = pattern.sub(lambda m: self._sub(m, kind, valid), text)
        if "NAME" in self.types and _NAME_HINT.search(text):
            text = NAME_LABEL.sub(lambda m: self._group(m, "NAME", 2), text)
            text = NAME_TITLE.sub(lambda m: self._sub(m, "NAME", None, keep=m.group(1) + ". "), text)
        return text

    def _sub(self, m: re.Match, kind: str, valid, keep: str = "") -> str:
        if valid is not None and not valid(m):
            return m.group(0)
        self.counts[kind] += 1
        return f"{keep}[{kind}]"

    def _group(self, m: re.Match, kind: str, group: int = 1) -> str:
        g = group if m.re.groups >= group else 0
        self.counts[kind] += 1
        return m.group(0)[: m.start(g) - m.start(0)] + f"[{kind}]" + m.group(0)[m.end(g) - m.start(0):]

    def __call__(self, r: Record) -> tuple[bool, str]:
        changed = False
        for m in r.messages or []:
            new = self.scrub(m["content"])
            changed |= new != m["content"]
            m["content"] = new
        self.records_changed += changed
        return True, ""


# ---------------------------------------------------------------- decontamination
def _benchmark_questions(path: Path) -> list[str]:
    """Questions of a benchmark file: .txt (one per line) or JSON/JSONL (``question``/``instruction``/``prompt``/first user turn)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: benchmark file not found")
    if path.suffix.lower() == ".txt":
        text, _ = read_text(path)
        return [line.strip() for line in text.splitlines() if line.strip()]
    out = []
    for _where, it in read_rows(path):
        if isinstance(it, Reject) and isinstance(it.record, str):  # a JSON array of question strings
            out.append(it.record)
        elif isinstance(it, dict):
            q = it.get("question") or it.get("instruction") or it.get("prompt") or it.get("input") or \
                next((m.get("content") for m in it.get("messages", []) if m.get("role") == "user"), None)
            if isinstance(q, str):
                out.append(q)
    return out


def _is_cjk(text: str) -> bool:
    return detect_language(text) in ("zh", "ko")


class Decontaminator:
    """Drop training records that share a long n-gram with any benchmark question.

    Space-delimited text uses word n-grams (``word_ngram``, 13 as in Brown et al., "Language
    Models are Few-Shot Learners", 2020, appendix C); Chinese/Korean text uses character n-grams
    (``char_ngram``) of the normalised text. Questions shorter than one n-gram (counted in
    ``too_short``) are matched whole instead: a training question equal to one after
    :func:`medtune.text.dedup_key` is dropped, so a short evaluation question cannot be trained on
    word for word either.

    Args:
        files: benchmark files (see :func:`_benchmark_questions`).
        word_ngram: n in words for non-CJK questions.
        char_ngram: n in characters for CJK questions.

    Raises:
        DataFileError: a benchmark file is missing.
    """

    def __init__(self, files: list[Path], word_ngram: int = 13, char_ngram: int = 15):
        self.word_n, self.char_n = word_ngram, char_ngram
        self.word_grams: set[int] = set()
        char_grams, self.whole = [], set()
        self.questions = self.too_short = 0
        for f in files:
            for q in _benchmark_questions(f):
                self.questions += 1
                if _is_cjk(q):
                    short = len(dedup_key(q)) < self.char_n
                    char_grams += [] if short else [self._char(q)]
                else:
                    grams = self._words(q)
                    self.word_grams.update(grams)
                    short = not grams
                self.too_short += short
                if short:
                    self.whole.add(dedup_key(q))
        import numpy as np

        self._np = np
        self.char_grams = set(np.concatenate(char_grams).tolist()) if char_grams else set()

    def _char(self, text: str):
        """Hashes ``(n_grams,)`` of the character n-grams (see :func:`shingle_hashes`); empty if too short."""
        t = dedup_key(text)
        return shingle_hashes(t, self.char_n, normalized=True, distinct=False) if len(t) >= self.char_n else self._np.zeros(0, dtype=self._np.uint64)

    def _words(self, text: str) -> set[int]:
        w = [dedup_key(x) for x in text.split()]
        w = [x for x in w if x]
        return {hash(" ".join(w[i:i + self.word_n])) for i in range(len(w) - self.word_n + 1)}

    def __call__(self, r: Record) -> tuple[bool, str]:
        if self.whole and dedup_key(question_of(r)) in self.whole:
            return False, "benchmark question (whole, too short for n-grams)"
        text = question_of(r) + "\n" + answer_of(r)
        if self.char_grams and not self.char_grams.isdisjoint(self._char(text).tolist()):
            return False, "benchmark overlap (character n-gram)"
        if self.word_grams and not self.word_grams.isdisjoint(self._words(text)):
            return False, "benchmark overlap (word n-gram)"
        return True, ""


def run_filters(records: Iterable[Record], steps: list[tuple[str, Filter]], tallies: dict[str, Tally]) -> Iterator[Record]:
    """Pass records through ``steps`` in order; each drop is counted in ``tallies[name]`` with its reason.

    Dropped records are also kept as rejects: file = ``meta.source_file``, where = record id, field =
    the part the reason names (``question``, ``answer``, else ``messages``), record = an excerpt of the
    question and answer.
    """
    for name, _ in steps:
        tallies.setdefault(name, Tally(name))
    for r in records:
        for name, check in steps:
            keep, reason = check(r)
            if not keep:
                part = next((p for p in ("answer", "question") if p in reason), "messages")
                excerpt = f"Q: {question_of(r)[:140]} | A: {answer_of(r)[:140]}"
                tallies[name].drop(reason, r.meta.get("source_file", "?"), r.id, excerpt, part)
                break
            tallies[name].keep()
        else:
            yield r
