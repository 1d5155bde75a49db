"""``medtune eval fact``: knowledge-base fact recall with three hit criteria.

Each question (e.g. "What are the indications of metformin?") lists the items a correct
answer should mention. The model answers; an item is *hit* when its normalised text, or
one of its synonyms, occurs in the normalised answer. Per question we record hits / expected
and report the share of questions meeting each of the three criteria used in drug–indication
recall studies: at least one expected item hit, at least 1/2 of them, at least 2/3 of them.

Input records (JSONL, JSON array, CSV/TSV or .xlsx) read: ``id`` (optional), ``question``,
``expected`` (a list of strings, or one string of items separated by ``|``, ``，``, ``、``, ``;``),
``synonyms`` (optional ``{item: [synonym, ...]}``), ``source`` (optional: questions about entries of one
source; default: the whole file); other column names via ``question_column`` / ``expected_column``
(common ones such as 问题/答案 are recognised).

**Bleed**: an answer that names an item belonging to another entry of the same source and not to the
asked one -- the taught facts blended with their neighbours, e.g. one memorised indication given to
several drugs. An item (or synonym of at least two characters) of another question of the source
counts when it occurs in the answer, unless it is also the asked entry's: one of its expected items
or synonyms contains it or is contained in it, or -- with ``entities``, the knowledge base the facts
were taught from -- the text of the entry named in the question contains it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from medtune.errors import DataFileError
from medtune.eval.backends import Backend, generate_replies, load_backend
from medtune.eval.citations import markers_of
from medtune.eval.config import FactConfig
from medtune.eval.quality import answer_quality, quality_summary
from medtune.eval.results import append_rows, elapsed, finish, load_done, run_key
from medtune.eval.stats import proportion
from medtune.io import NAME_FIELDS, RecordError, Reject, read_rows, write_rejects
from medtune.manifest import tree_digests
from medtune.retrieval import best_supported, ground, open_index, says_not_covered, unsupported_note
from medtune.text import detect_language, item_hit, match_form

console = Console(stderr=True)
CRITERIA = {"hit_any": 0.0, "hit_half": 1 / 2, "hit_two_thirds": 2 / 3}
CANDIDATE_SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # candidates 2..N of ``rag.candidates`` (the first: as decoded)


def score_answer(answer: str, expected: list[str], synonyms: dict[str, list[str]]) -> dict:
    """Hits of one answer: ``{"hits": [...], "missed": [...], "hit_rate", "hit_any", "hit_half", "hit_two_thirds"}``
    (all criteria False when ``expected`` is empty)."""
    norm = match_form(answer)
    hits = [e for e in expected if item_hit(norm, [e, *synonyms.get(e, [])])]
    rate = len(hits) / len(expected) if expected else 0.0
    return {"hits": hits, "missed": [e for e in expected if e not in hits], "hit_rate": round(rate, 4),
            **{name: (rate >= frac and len(hits) > 0) for name, frac in CRITERIA.items()}}


QUESTION_COLUMNS = ("question", "问题", "问", "질문", "query", "prompt")
EXPECTED_COLUMNS = ("expected", "expected_items", "answer", "answers", "items", "答案", "回答", "答", "정답", "답변")
ITEM_SEPARATORS = re.compile(r"\s*[|，、;；\n]\s*")


def split_items(value: object) -> list[str] | None:
    """Expected items from a list, or from one string split on ``|``, ``，``, ``、``, ``;``, ``；`` or
    newlines (a spreadsheet cell); None when ``value`` is neither."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    if isinstance(value, str):
        return [v for v in ITEM_SEPARATORS.split(value.strip()) if v]
    return None


def _column(rec: dict, given: str | None, names: tuple[str, ...]) -> str | None:
    keys = {str(k).strip().lower(): k for k in rec}
    return given if given else next((keys[n] for n in names if n in keys), None)


def load_facts(path: Path, synonyms_file: Path | None = None, question_column: str | None = None,
               expected_column: str | None = None, rejects_path: Path | None = None,
               encodings: list[str] | None = None) -> tuple[list[dict], list[Reject]]:
    """Read fact questions (JSONL/JSON, CSV/TSV or .xlsx); records without a question or any expected item are rejected.

    Args:
        question_column / expected_column: the record's fields (default: the first of
            :data:`QUESTION_COLUMNS` / :data:`EXPECTED_COLUMNS` present, case-insensitive).
        rejects_path: where to write the rejects when no question is usable.
        encodings: encodings tried per line, in order (None: detect; :func:`medtune.io.read_text`).

    Raises:
        DataFileError: unreadable file, invalid synonyms file, or no usable question (the message
            gives the first reasons and the columns seen).
    """
    shared = {}
    if synonyms_file:
        try:
            shared = json.loads(Path(synonyms_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataFileError(f"{synonyms_file}: synonyms must be a JSON object {{item: [synonyms]}}: {e}") from None
    items, rejects, seen, columns = [], [], set(), set()
    for n, (where, rec) in enumerate(read_rows(Path(path), encodings or None), 1):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        columns.update(map(str, rec))
        try:
            items.append(_fact(rec, n, shared, seen, _column(rec, question_column, QUESTION_COLUMNS),
                               _column(rec, expected_column, EXPECTED_COLUMNS)))
        except RecordError as e:
            rejects.append(Reject(str(path), where, e.reason, e.field, rec))
    if not items:
        if rejects_path is not None:
            write_rejects(rejects, rejects_path)
        reasons = list(dict.fromkeys(f"{r.where}: {r.field}: {r.reason}" for r in rejects))[:3]
        raise DataFileError(f"{path}: no usable fact questions ({len(rejects)} rejected); first reasons: {reasons}; "
                            f"columns seen: {sorted(columns)[:12]}; pass them as --question-column COLUMN --expected-column COLUMN"
                            + (f"; rejects in {rejects_path}" if rejects_path else ""))
    return items, rejects


def _fact(rec: dict, line: int, shared: dict, seen: set, qcol: str | None, ecol: str | None) -> dict:
    question = rec.get(qcol) if qcol else None
    if not isinstance(question, str) or not question.strip():
        raise RecordError(qcol or "question", "missing or empty" if qcol else "no question column")
    answerable = rec.get("answerable", True) is not False
    expected = split_items(rec.get(ecol)) if ecol else None
    if not expected and answerable:
        raise RecordError(ecol or "expected", "no expected-items column" if not ecol else
                          "must be a non-empty list of strings or a string of items separated by | ， 、 ; "
                          "(or answerable: false for a question the sources do not answer)")
    ident = str(rec.get("id") or f"fact-{line}")
    if ident in seen:
        raise RecordError("id", f"duplicate id {ident!r}")
    seen.add(ident)
    syn = rec.get("synonyms") if isinstance(rec.get("synonyms"), dict) else {}
    return {"id": ident, "question": question.strip(), "expected": expected or [], "synonyms": {**shared, **syn},
            "source": str(rec.get("source") or ""), "answerable": answerable}


def entity_texts(path: Path) -> dict[str, str]:
    """``{normalised entry name: normalised text of all its other fields}`` of a knowledge-base file
    (JSONL/JSON/CSV/.xlsx; the name in the first of :data:`medtune.io.NAME_FIELDS` present).

    Raises:
        DataFileError: no entry with a name (the message names the fields looked for).
    """
    out = {}
    for _, rec in read_rows(Path(path)):
        if isinstance(rec, Reject):
            continue
        key = next((k for k in NAME_FIELDS if isinstance(rec.get(k), str) and rec[k].strip()), None)
        if key:
            values = [v for k, v in rec.items() if k != key for v in (v if isinstance(v, list) else [v]) if isinstance(v, str)]
            out[match_form(rec[key])] = match_form(" | ".join(values))
    if not out:
        raise DataFileError(f"{path}: no knowledge-base entry with a name field ({', '.join(NAME_FIELDS[:4])} ...)")
    return out


def _names(item: dict) -> list[str]:
    return [n for e in item["expected"] for n in (e, *item["synonyms"].get(e, []))]


def bleed_candidates(items: list[dict], entities: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Per question id, the items of the other questions of its source that would be bleed in its answer
    (see the module docstring): ``{id: [name, ...]}``."""
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(it.get("source", ""), []).append(it)
    out = {}
    for it in items:
        own = [match_form(n) for n in _names(it)]
        q = match_form(it["question"])
        entry = max((name for name in entities or {} if name and name in q), key=len, default=None)
        own_text = entities[entry] if entry else ""
        foreign = []
        for other in groups[it.get("source", "")]:
            for n in _names(other) if other is not it else []:
                f = match_form(n)
                if len(f) >= 2 and f not in foreign and not any(f in o or o in f for o in own) and f not in own_text:
                    foreign.append(f)
        out[it["id"]] = foreign
    return out


def bleed_items(answer: str, candidates: list[str]) -> list[str]:
    """The ``candidates`` (:func:`bleed_candidates`) that ``answer`` names."""
    norm = match_form(answer)
    return [c for c in candidates if item_hit(norm, [c])]


def citation_support(answer: str, hits: list[str], synonyms: dict, shown: list[dict]) -> bool | None:
    """Automatic citation support of one RAG answer: True when it cites ``[n]`` markers of passages it
    was shown and every expected item it names (``hits``) occurs in the cited passages' text; None when
    it names no expected item or was shown no passage (nothing to support).

    Args:
        shown: the passages in the prompt, ``[{"marker", "text", ...}]`` (a fact prediction's ``citations``).
    """
    if not hits or not shown:
        return None
    by_marker = {c["marker"]: match_form(c["text"]) for c in shown}
    cited = [by_marker[m] for m in dict.fromkeys(markers_of(answer)) if m in by_marker]
    return bool(cited) and all(any(item_hit(t, [h, *synonyms.get(h, [])]) for t in cited) for h in hits)


def by_language(rows: list[dict]) -> dict:
    """Per question language (zh / ko / en ...): ``{lang: {"n", "hit_any", "hit_half", "bleed"}}`` with rates."""
    out = {}
    for lang in sorted({detect_language(r["question"], default="en") for r in rows}):
        sub = [r for r in rows if detect_language(r["question"], default="en") == lang]
        out[lang] = {"n": len(sub), **{c: round(sum(bool(r.get(c)) for r in sub) / len(sub), 4)
                                      for c in ("hit_any", "hit_half", "bleed")}}
    return out


def _prompt(sys_msg: list[dict], question: str, cfg: FactConfig) -> tuple[list[dict], dict]:
    """The question as messages, grounded in ``cfg.rag.index`` when set (RAG), else closed-book; and the
    fields a RAG prediction row adds: ``citations`` (the passages shown as [1]..[k], with their text, for
    the citation-precision judge of ``eval rag --answers``) and ``covered``."""
    messages = sys_msg + [{"role": "user", "content": question}]
    if cfg.rag.index is None:
        return messages, {}
    g = ground(messages, open_index(cfg.rag.index), cfg.rag.top_k, cfg.rag.mode, cfg.rag.min_score)
    cited = [{k: c[k] for k in ("marker", "source_file", "passage_id", "char_span", "text")} for c in g.citations]
    return g.messages, {"citations": cited, "covered": g.covered}


def _best_of(backend: Backend, batch: list[dict], prompts: list[tuple[list[dict], dict]], replies: list, settings,
             cfg: FactConfig) -> list:
    """``rag.candidates`` per grounded question: ``replies`` (as decoded) plus N-1 sampled ones
    (:data:`CANDIDATE_SAMPLING`, seed ``cfg.seed + j`` for the j-th), the best supported kept
    (:func:`medtune.retrieval.best_supported`); each kept reply records the ``candidates`` and which was ``chosen``."""
    shown = [i for i, (_, g) in enumerate(prompts) if g.get("citations")]
    pools = {i: [replies[i]] for i in shown}
    for j in range(1, cfg.rag.candidates):
        sample = settings.model_copy(update={**CANDIDATE_SAMPLING, "seed": cfg.seed + j})
        for i, reply in zip(shown, generate_replies(backend, [prompts[i][0] for i in shown], sample) if shown else []):
            pools[i].append(reply)
    out = list(replies)
    for i, pool in pools.items():
        k = best_supported([r.text for r in pool], batch[i]["question"], prompts[i][1]["citations"])
        prompts[i][1].update(candidates=[r.text for r in pool], chosen=k)
        out[i] = pool[k]
    return out


def _row(it: dict, reply, grounding: dict, foreign: list[str], key: str, min_support: float | None = None) -> dict:
    """One prediction row: the answer, its hits, bleed, abstention, quality and (RAG) citation support.

    With retrieval the row also says what a user of chat / serve sees besides the model's text:
    ``unsupported`` (the note after an answer the shown passages do not support, ``min_support``) and
    ``declined`` (the reply says the sources do not cover the question: the model itself, the note
    before the answer when retrieval found nothing relevant, or the note after it)."""
    row = {"id": it["id"], "question": it["question"], "expected": it["expected"], "answerable": it["answerable"],
           "answer": reply.text, **score_answer(reply.text, it["expected"], it["synonyms"]),
           "bleed_items": (b := bleed_items(reply.text, foreign)), "bleed": bool(b), "abstained": says_not_covered(reply.text),
           **answer_quality(it["question"], reply.text, reply.stopped), **grounding, "run_key": key}
    if "citations" in grounding:
        row["citation_supported"] = citation_support(reply.text, row["hits"], it["synonyms"], grounding["citations"])
        lang = detect_language(it["question"], default="en")
        row["unsupported"] = bool(unsupported_note(reply.text, grounding["citations"], min_support, lang))
        row["declined"] = row["abstained"] or not grounding["covered"] or row["unsupported"]
    return row


def _summary(rows: list[dict]) -> dict:
    """Result fields of the prediction rows: recall criteria, bleed and language split over the answerable
    questions; abstentions on the others; citation support of RAG answers."""
    ans = [r for r in rows if r.get("answerable", True)]
    n = len(ans)
    out = {"n": n, "mean_hit_rate": round(sum(r["hit_rate"] for r in ans) / n, 4) if n else 0.0,
           **{c: proportion(sum(r[c] for r in ans), n) for c in CRITERIA},
           "bleed": proportion(sum(bool(r.get("bleed")) for r in ans), n), "by_language": by_language(ans)}
    if len(ans) < len(rows):
        off = [r for r in rows if not r.get("answerable", True)]
        out["unanswerable"] = {"n": len(off), "abstained": proportion(sum(bool(r.get("abstained")) for r in off), len(off)),
                               "bleed": proportion(sum(bool(r.get("bleed")) for r in off), len(off))}
        out["abstained_when_answerable"] = proportion(sum(bool(r.get("abstained")) for r in ans), n)
        if any("declined" in r for r in rows):  # with retrieval: the reply as chat / serve show it
            out["unanswerable"]["declined"] = proportion(sum(bool(r.get("declined")) for r in off), len(off))
            out["declined_when_answerable"] = proportion(sum(bool(r.get("declined")) for r in ans), n)
    judged = [r["citation_supported"] for r in ans if r.get("citation_supported") is not None]
    if any("citations" in r for r in ans):
        out["citation_support"] = proportion(sum(judged), len(judged))
    return out


def _unanswerable(path: Path, taken: set, foreign: dict) -> list[dict]:
    """The questions of ``path`` (``question``; ``id`` optional) as ``answerable: false`` items; each
    answer's bleed is any item of the main questions.

    Raises:
        DataFileError: no question in the file, or an id the main questions use.
    """
    names = sorted({f for fs in foreign.values() for f in fs})
    out = []
    for n, (where, rec) in enumerate(read_rows(Path(path)), 1):
        q = rec.get("question") if isinstance(rec, dict) else None
        if not isinstance(q, str) or not q.strip():
            continue
        ident = str(rec.get("id") or f"unanswerable-{n}")
        if ident in taken:
            raise DataFileError(f"{path}: {where}: id {ident!r} is also a fact question's id")
        taken.add(ident)
        out.append({"id": ident, "question": q.strip(), "expected": [], "synonyms": {}, "source": "", "answerable": False})
        foreign[ident] = names
    if not out:
        raise DataFileError(f"{path}: no question (JSONL/JSON/CSV rows with a `question` field)")
    return out


def _extras(results: dict) -> str:
    """``, citation support 0.90, unanswerable said so 0.80`` when the results have them."""
    parts = [f"citation support {results['citation_support']['rate']:.2f}"] if "citation_support" in results else []
    if "unanswerable" in results:
        u = results["unanswerable"]
        said = f"unanswerable said so {u['abstained']['rate']:.2f}"
        if "declined" in u:
            said += f" (the reply with medtune's notes {u['declined']['rate']:.2f})"
        parts.append(f"{said} (n={u['n']})")
    return "".join(", " + p for p in parts)


def run_fact(cfg: FactConfig, backend: Backend | None = None) -> dict:
    """Generate answers to the fact questions and score them; write results, predictions and manifest.

    Returns:
        Results with ``hit_any`` / ``hit_half`` / ``hit_two_thirds`` and ``bleed`` (each ``{"n", "k", "rate",
        "ci95"}``), ``by_language`` (:func:`by_language`),
        the mean per-question ``hit_rate``, the answers' generation ``quality`` (stops, loops,
        language match; :mod:`medtune.eval.quality`) and the ``decoding`` settings used.

    Raises:
        DataFileError: unreadable input.
        EvalError: an endpoint failed for good (finished items are kept) or a different run in output_dir.
    """
    started = time.time()
    items, rejects = load_facts(cfg.data, cfg.synonyms, cfg.question_column, cfg.expected_column,
                                rejects_path=Path(cfg.output_dir) / "rejects.jsonl", encodings=cfg.encodings)
    foreign = bleed_candidates(items, entity_texts(cfg.entities) if cfg.entities else None)  # over the whole file
    items = items[:cfg.max_items] if cfg.max_items else items
    if cfg.unanswerable:
        items += _unanswerable(cfg.unanswerable, {it["id"] for it in items}, foreign)
    out = Path(cfg.output_dir)
    backend = backend or load_backend(cfg.model, cfg.adapter, cache_path=out / "cache.sqlite")
    config = cfg.model_dump(mode="json", exclude={"overwrite", "output_dir"})
    inputs = {"model": backend.identity, "data": tree_digests(Path(cfg.data)),
              "synonyms": tree_digests(Path(cfg.synonyms)) if cfg.synonyms else None,
              **{k: tree_digests(Path(getattr(cfg, k))) for k in ("entities", "unanswerable") if getattr(cfg, k)}}
    key = run_key(config, inputs)
    out.mkdir(parents=True, exist_ok=True)
    done = load_done(out / "predictions.jsonl", key, cfg.overwrite)
    todo = [it for it in items if it["id"] not in done]
    settings = cfg.generation.model_copy(update={"seed": cfg.seed if cfg.generation.temperature > 0 else None})
    sys_msg = [{"role": "system", "content": cfg.system}] if cfg.system else []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"fact recall {backend.name}", total=len(items), completed=len(items) - len(todo))
        for i in range(0, len(todo), cfg.batch_size):
            batch = todo[i:i + cfg.batch_size]
            prompts = [_prompt(sys_msg, it["question"], cfg) for it in batch]
            replies = generate_replies(backend, [messages for messages, _ in prompts], settings)
            if cfg.rag.candidates > 1:
                replies = _best_of(backend, batch, prompts, replies, settings, cfg)
            rows = [_row(it, reply, grounding, foreign[it["id"]], key, cfg.rag.min_answer_support)
                    for it, reply, (_, grounding) in zip(batch, replies, prompts)]
            append_rows(out / "predictions.jsonl", rows)
            done.update({r["id"]: r for r in rows})
            bar.advance(task, len(rows))
    ordered = [done[it["id"]] for it in items]
    n = len(ordered)
    results = {"model": backend.name, "model_identity": backend.identity, "data": str(cfg.data), "seed": cfg.seed,
               **_summary(ordered), "quality": quality_summary(ordered), "decoding": settings.model_dump(),
               "rejected": len(rejects), "predictions_file": "predictions.jsonl"}
    results = finish(out, "fact", config, inputs, results, cfg.seed, started, rejects, ordered,
                     {"questions": n, "computed": len(todo), "wall_s": elapsed(started)})
    console.print(f"fact recall {backend.name}: >=1 hit {results['hit_any']['rate']:.2f}, >=1/2 {results['hit_half']['rate']:.2f}, "
                  f">=2/3 {results['hit_two_thirds']['rate']:.2f}, bleed {results['bleed']['rate']:.2f}{_extras(results)} "
                  f"(n={n}, {len(todo)} generated in {elapsed(started)} s) -> {out}")
    warn_token_limit(results["quality"]["stops"], settings.max_new_tokens)
    return results


def warn_token_limit(stops: dict, max_new_tokens: int) -> None:
    """Print a warning when most answers (``stops``: :func:`medtune.eval.quality.quality_summary`'s share
    of answers that ended before the limit) ran into ``max_new_tokens``: the items an answer would have
    named after the cut are counted as missed."""
    if stops["n"] and stops["rate"] < 0.5:
        cut = stops["n"] - stops["k"]
        console.print(f"[bold yellow]WARNING[/] {cut} of {stops['n']} answers hit the token limit (max_new_tokens "
                      f"{max_new_tokens}) before they ended; items they would have named later count as missed; "
                      f"rerun with --max-new-tokens {max(2 * max_new_tokens, 128)}", highlight=False, soft_wrap=True)
