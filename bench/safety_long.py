"""Red flags buried in long messages: the development sets' messages placed inside unrelated text.

    PYTHONPATH=. python bench/safety_long.py                  # 40 red-flag + 40 other messages per language
    PYTHONPATH=. python bench/safety_long.py --n 80 --before 3000

Each single-message record of development sets A and B (``medtune/safety/data/dev/``) is put
inside ordinary questions: the development sets' own benign messages of the same language, in a
seeded order (those the detector does not flag on their own, so the filler's own false alarms are
not counted as the burying's), ``--before`` characters before it (at least; a random amount up to twice that when
``--spread``) and ~300 after. The label does not change: an ordinary question around an emergency
leaves it an emergency, and around a hard negative leaves it none. Reports recall and precision
of the combined detector per language on the originals and on the buried copies, and the
characters the encoder read per message. A development measurement (issue 27): it was used to
choose ``WINDOW_CHARS`` and ``ENCODED_WINDOWS``; the test sets are never touched.
"""

from __future__ import annotations

import argparse
import random

from medtune.config import SafetyConfig
from medtune.safety import classifier as learned
from medtune.safety import conversation, screen
from medtune.safety.evaluate import evaluate_safety
from medtune.safety.labelled import dev_files, load_records


def bury(rec: dict, filler: list[str], before: int, rng: random.Random) -> dict:
    """A copy of ``rec`` whose text sits after >= ``before`` characters of ``filler`` and before ~300 more."""
    def run(n: int) -> str:
        out = ""
        while len(out) < n:
            out += rng.choice(filler).strip() + (" " if rec["lang"] == "en" else " ")
        return out
    return dict(rec, id=rec["id"] + "-buried", text=run(before) + rec["text"].strip() + " " + run(300))


def buried_set(records: list[dict], n: int, before: int, rng: random.Random, spread: bool = False) -> tuple[list[dict], list[dict]]:
    """``(originals, buried copies)``: per language up to ``n`` red-flag and ``n`` other (non-benign)
    single messages of ``records``, each also buried by :func:`bury` in the language's benign messages
    that raise no flag alone (after ``before`` characters, or a random amount up to twice that with ``spread``)."""
    originals, buried = [], []
    for lang in ("zh", "ko", "en"):
        mine = [r for r in records if r["lang"] == lang and "text" in r]
        filler = [r["text"] for r in mine if r.get("type") == "benign"
                  and not screen(conversation(r), lang, SafetyConfig()).flags]  # only what raises no flag alone
        for want in (True, False):
            pool = [r for r in mine if bool(r["expected"]) == want and r.get("type") != "benign"]
            for rec in rng.sample(pool, min(n, len(pool))):
                originals.append(rec)
                gap = rng.randint(before, 2 * before) if spread else before
                buried.append(bury(rec, [f for f in filler if f != rec["text"]], gap, rng))
    return originals, buried


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="red-flag and other messages per language")
    ap.add_argument("--before", type=int, default=1000, help="characters of unrelated text before the message")
    ap.add_argument("--spread", action="store_true", help="place it after a random amount, before..2*before")
    args = ap.parse_args()
    records = [r for r in load_records(dev_files() + dev_files("devb")) if "text" in r]
    originals, buried = buried_set(records, args.n, args.before, random.Random(0), args.spread)
    read = []
    embed = learned._embed_memo
    learned_embed = learned.embed

    def counting(texts):
        read.append(sum(map(len, texts)))
        return learned_embed(texts)
    learned.embed = counting
    try:
        for name, recs in (("original", originals), (f"buried after >= {args.before} chars", buried)):
            read.clear()
            r = evaluate_safety(records=recs, cfg=SafetyConfig())
            print(f"## {name}")
            for lang in ("zh", "ko", "en"):
                c = r["combined"][lang]
                print(f"{lang}: recall {c['recall']:.3f} precision {c['precision']:.3f} "
                      f"(fn {[e[0] for e in c['errors'] if e[1]]}, fp {[e[0] for e in c['errors'] if not e[1]]})")
    finally:
        learned.embed = learned_embed
    del embed


if __name__ == "__main__":
    main()
