"""Offline evaluation of the red-flag detectors on labelled sets, and the choice of sets to score.

``medtune eval safety`` (without ``--model``) prints what :func:`evaluate_sets` returns: rules,
classifier and combined per language and category on the shipped rule set, the training files
(cross-validated), the development sets and, once placed, the test set. The end-to-end check
through a model (``--model``) stays in :mod:`medtune.eval.guarded`: it loads and runs a chat model,
which is the eval stage's job, not the ground floor's.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

import medtune.safety.classifier as learned
from medtune.config import SafetyConfig
from medtune.safety.guard import Screening, after_classifier, screen
import medtune.safety.labelled as labelled
from medtune.safety.fit import cached_embedder
from medtune.safety.labelled import EVAL_SET, conversation, dev_files, load_eval_set, load_records, test_files

DETECTORS = ("rules", "classifier", "combined")


def evaluate_safety(path: Path | str = EVAL_SET, records: list[dict] | None = None,
                    cfg: SafetyConfig | None = None, oof: dict[str, tuple[float, str]] | None = None) -> dict:
    """Precision and recall of red-flag detection per detector, language and category.

    A message counts as positive when it has at least one expected category; a detection is a
    true positive when it flags such a message (whether a flagged category is one of the expected
    ones is ``category_match``, the share of true positives that agree).

    Args:
        path: labelled JSONL set (ignored when ``records`` is given).
        records: labelled records (fields id, lang, text | messages, expected).
        cfg: safety policy (``classifier=False`` to skip the classifier).
        oof: cross-validation scores ``{id: (P(emergency), category)}`` (:func:`medtune.safety.classifier.load_out_of_fold`):
            the classifier's verdict on the training records themselves, from models that did not see them.

    Returns:
        ``{detector: {lang: {"n", "tp", "fp", "fn", "tn", "precision", "recall", "category_match", "errors"}},
        "categories": {detector: {category: {"n", "recall", "agree", "precision"}}}}`` for detectors
        rules, classifier and combined; ``errors`` lists ``(id, expected, got)`` per misclassified item.
    """
    cfg = cfg or SafetyConfig()
    report: dict = {d: {} for d in DETECTORS}
    cats: dict = {d: {} for d in DETECTORS}
    records = records if records is not None else load_eval_set(path)
    embedder = _set_embedder(records, cfg) if oof is None else None
    for rec in records:
        found = _screen_oof(rec, cfg, oof) if oof is not None else screen(conversation(rec), rec["lang"], cfg, embedder)
        for detector, got in zip(DETECTORS, (found.rules, found.classifier, found.flags)):
            _tally(report[detector].setdefault(rec["lang"], dict(n=0, tp=0, fp=0, fn=0, tn=0, category_hits=0,
                                                                  errors=[])), cats[detector], rec, got)
    for detector in DETECTORS:
        for r in report[detector].values():
            r["precision"] = r["tp"] / (r["tp"] + r["fp"]) if r["tp"] + r["fp"] else 1.0
            r["recall"] = r["tp"] / (r["tp"] + r["fn"]) if r["tp"] + r["fn"] else 1.0
            r["category_match"] = r.pop("category_hits") / max(r["tp"], 1)
        for c in cats[detector].values():
            n, pred = c.pop("n_"), c.pop("pred")
            c.update(n=n, recall=c.pop("hit") / max(n, 1), agree=c.pop("agree") / max(n, 1),
                     precision=c.pop("right") / pred if pred else 1.0)
    report["categories"] = cats
    return report


def _set_embedder(records: list[dict], cfg: SafetyConfig):
    """Every text the classifier will read for ``records``, embedded in one cached batch (None: rules only,
    or no encoder / weights: :func:`screen` then warns and runs the rules)."""
    if not cfg.classifier:
        return None
    try:
        clf = learned.load()
        texts = [t for rec in records
                 for t in learned.screening_texts(conversation(rec), rec["lang"], clf, cfg.scan_chars)[0]]
        return cached_embedder(texts)
    except (learned.EncoderMissing, FileNotFoundError):
        return None


def _screen_oof(rec: dict, cfg: SafetyConfig, oof: dict[str, tuple[float, float, str]]) -> Screening:
    """Rules as :func:`screen` runs them, classifier from the saved out-of-fold scores of ``rec``."""
    found = screen(conversation(rec), rec["lang"], cfg.model_copy(update={"classifier": False}))
    if cfg.classifier:
        p, alone, category = oof[rec["id"]]
        t = cfg.classifier_threshold if cfg.classifier_threshold is not None else \
            learned.load().threshold(rec["lang"])
        found.score, found.classifier = p, [category] if alone >= t else []
        found.combined = list(dict.fromkeys(found.rules + [category])) if p >= t else []
        found = after_classifier(found, conversation(rec), rec["lang"], cfg.scan_chars)  # as in screen
    return found


def _tally(r: dict, cats: dict, rec: dict, got: list[str]) -> None:
    expected = rec["expected"]
    r["n"] += 1
    key = ("tp" if got else "fn") if expected else ("fp" if got else "tn")
    r[key] += 1
    r["category_hits"] += bool(expected) and bool(set(got) & set(expected))
    if key in ("fp", "fn"):
        r["errors"].append((rec["id"], expected, got))
    for c in expected:
        e = cats.setdefault(c, dict(n_=0, hit=0, agree=0, pred=0, right=0))
        e["n_"] += 1
        e["hit"] += bool(got)
        e["agree"] += c in got
    for c in got:
        e = cats.setdefault(c, dict(n_=0, hit=0, agree=0, pred=0, right=0))
        e["pred"] += 1
        e["right"] += c in expected


def evaluation_sets(file: Path | None = None) -> dict[str, list[dict]]:
    """The labelled sets ``medtune eval safety`` scores, by display name.

    Args:
        file: one labelled JSONL set; None: the shipped rule set, the training files (scored
            out-of-fold), development sets A, B and C and, when present, the test set.

    Returns:
        ``{name: records}`` in display order.

    Raises:
        DataFileError: a malformed record (file, line, field).
    """
    if file:
        return {str(file): load_eval_set(file)}
    sets = {
        f"shipped rule set {EVAL_SET.name}": load_eval_set(EVAL_SET),
        TRAINING_SET: load_records(),
        "development set A (dev/dev_*.jsonl; used for model selection)": load_records(dev_files()),
        "development set B (dev/devb_*.jsonl; the v2 test set, scored once as a test set, then used for selection)":
            load_records(dev_files("devb")),
        "development set C (dev/devc_*.jsonl; long messages, 600-3,000 characters)": load_records(dev_files("devc"))}
    if test_files():
        sets["test set v3 (test/test_*.jsonl; scored once for v3, again for v4)"] = load_records(test_files())
    if test_files(labelled.TEST_V4_DIR):
        sets["test set v4 (test_v4/test_*.jsonl; scored once)"] = load_records(test_files(labelled.TEST_V4_DIR))
    return sets


TRAINING_SET = "training validation (5-fold out-of-fold; thresholds chosen here)"


def run_detection_eval(file: Path | None = None, classifier: bool = True, errors: bool = False) -> dict[str, dict]:
    """Score every set of :func:`evaluation_sets` and print one table per set (``medtune eval safety``).

    Returns:
        ``{set name: evaluate_safety result}``.
    """
    out = {}
    for name, records in evaluation_sets(file).items():
        oof = learned.load_out_of_fold() if name == TRAINING_SET else None
        out[name] = evaluate_safety(records=records, cfg=SafetyConfig(classifier=classifier), oof=oof)
        print_detection(name, out[name], errors)
    if not file and not test_files():
        Console().print(f"test set: skipped, no {labelled.TEST_DIR}/test_*.jsonl (the separately written test set is not there yet)")
    return out


def print_detection(name: str, result: dict, errors: bool = False) -> None:
    """Print one set's :func:`evaluate_safety` result: per language and detector, per category, and (``errors``) each error."""
    table = Table(title=f"red-flag detection: {name}")
    for col in ("lang", "detector", "items", "TP", "FP", "FN", "TN", "precision", "recall", "category match"):
        table.add_column(col)
    for lang in ("zh", "ko", "en"):
        for detector in ("rules", "classifier", "combined"):
            r = result[detector].get(lang)
            if r:
                table.add_row(lang, detector, str(r["n"]), str(r["tp"]), str(r["fp"]), str(r["fn"]), str(r["tn"]),
                              f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['category_match']:.3f}")
    Console().print(table)
    cats = Table(title=f"per category (all languages): {name} — recall / category agreement / precision")
    cats.add_column("category")
    for detector in ("rules", "classifier", "combined"):
        cats.add_column(detector)
    for c in sorted(result["categories"]["combined"]):
        cells = [result["categories"][d].get(c) for d in ("rules", "classifier", "combined")]
        cats.add_row(f"{c} (n={cells[2]['n']})", *[f"{x['recall']:.2f} / {x['agree']:.2f} / {x['precision']:.2f}"
                                                   if x else "-" for x in cells])
    Console().print(cats)
    for detector in ("rules", "classifier", "combined") if errors else ():
        for lang, r in result[detector].items():
            for item_id, expected, got in r["errors"]:
                Console().print(f"[{detector}] {item_id}: expected {expected or 'none'}, got {got or 'none'}", markup=False)
