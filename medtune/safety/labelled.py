"""Labelled red-flag message sets: where the shipped ones live, and reading them.

The shipped data lives in this package (``medtune/safety/data/``): training files ``train_*.jsonl``,
development sets ``dev/`` (A: ``dev_*``, B: ``devb_*``), the test set ``test/`` (written separately,
scored once) and the rule set ``safety_eval.jsonl``; see ``data/DATA_CARD.md`` and ``data/LABELS.md``.
No module outside :mod:`medtune.safety` reads these files by path; use the functions here.
"""

from __future__ import annotations

from pathlib import Path

from medtune.errors import DataFileError
from medtune.io import Reject, read_rows

LANGS = ("zh", "ko", "en")
CATEGORIES = ("cardiac", "stroke", "anaphylaxis", "breathing", "bleeding", "suicide", "poisoning",
              "infant_fever", "seizure", "head_injury", "meningitis")
DATA_DIR = Path(__file__).parent / "data"


LONG_DIR = DATA_DIR / "long"  # long messages written as training data, not in the default fit (docs/safety.md)
DEV_DIR = DATA_DIR / "dev"    # development set: scored during development, used to choose between approaches


TEST_DIR = DATA_DIR / "test"  # test set (v3), written separately and scored once; may be absent


TEST_V4_DIR = DATA_DIR / "test_v4"  # test set v4 (issue 27): written before v4's model changes, scored once; may be absent


EVAL_DIRS = (DEV_DIR, TEST_DIR, TEST_V4_DIR)  # never fit on these, never pick thresholds on them


def dev_files(name: str = "dev") -> list[Path]:
    """Development set files ``dev/<name>_{zh,ko,en}.jsonl``: ``dev`` (set A), ``devb`` (set B, the v2 test set)
    or ``devc`` (set C: long messages of 600-3,000 characters)."""
    return sorted(DEV_DIR.glob(f"{name}_*.jsonl"))


def test_files(folder: Path | None = None) -> list[Path]:
    """The test set files ``test_*.jsonl`` of ``folder`` (default ``TEST_DIR``, v3; ``TEST_V4_DIR`` for v4);
    empty when the folder is not there (yet)."""
    folder = TEST_DIR if folder is None else folder
    return sorted(folder.glob("test_*.jsonl")) if folder.is_dir() else []


def is_eval_file(path: Path) -> bool:
    """Whether ``path`` lies in the development or test folder (or a legacy ``heldout`` folder)."""
    path = Path(path).resolve()
    return "heldout" in path.parts or any(path.is_relative_to(d.resolve()) for d in EVAL_DIRS)


def load_records(paths: list[Path] | None = None) -> list[dict]:
    """Labelled messages from JSONL files (fields read: id, lang, text | messages, expected, type).

    Args:
        paths: files to read; default the shipped ``medtune/safety/data/train_*.jsonl``.

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


EVAL_SET = DATA_DIR / "safety_eval.jsonl"  # the shipped rule set


def load_eval_set(path: Path | str = EVAL_SET) -> list[dict]:
    """Read a labelled safety set: JSONL records ``{"id", "lang", "text" | "messages", "expected": [categories]}``.

    Args:
        path: one JSONL file, or a folder whose ``*.jsonl`` files (sorted by name) make one set, e.g.
            a test set kept outside the repository (``test_v4_{zh,ko,en}.jsonl``).

    Raises:
        DataFileError: a folder without ``*.jsonl`` files, or a line that is not JSON or lacks a field,
            naming the file and line. It is a ``ValueError``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataFileError(f"{path}: a folder without *.jsonl files (a labelled set is one JSONL file or a folder of them)")
        return [rec for f in files for rec in read_labelled(f, require=("id",))]
    return read_labelled(path, require=("id",))


def conversation(rec: dict) -> list[dict]:
    """The messages of a labelled record (a ``text`` record is one user turn)."""
    return rec["messages"] if "messages" in rec else [{"role": "user", "content": rec["text"]}]
