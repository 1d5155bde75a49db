"""``medtune data build``: sources -> generators -> filters -> train/validation JSONL + stats + data card.

Outputs in ``output_dir``:

- ``train.jsonl`` / ``validation.jsonl``: ``{"messages": [...], "meta": {...}}`` per line (or Alpaca
  ``instruction``/``input``/``output`` + ``meta``); records of one source document never land in both.
- ``pairs.jsonl``: preference pairs ``{"prompt", "chosen", "rejected", "meta"}`` from ``safety-pairs`` and
  ``pairwise-judge`` (only when a source makes them; read by :func:`medtune.preference_data.read_preferences`, not
  filtered or split).
- ``rejects.jsonl``: every reject with step, file, line/record and reason.
- ``stats.json``: ``steps``, the count table: per step seen, kept, and per reason dropped, fixed, cut,
  skipped and not returned by the teacher (:class:`medtune.data.records.Tally`; the build prints the same
  rows and the data card shows them, all rendered by :func:`medtune.data.records.count_rows`), PHI counts
  per type, teacher token usage, time, and the data-quality ``audit`` (:func:`medtune.data.audit.audit`).
- ``DATA_CARD.md``: sources, sizes, languages, generators, the count table, the audit and a few examples.
- ``teacher_cache.sqlite``: the teacher's reply cache (a killed build re-run pays for nothing twice).
- ``pairwise_cache.sqlite``: the ``pairwise-judge`` sampler's and judge's reply cache (same purpose).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medtune.config import SafetyConfig
from medtune.data import filters as F
from medtune.data import generators as G
from medtune.data import readers as R
from medtune.data.audit import audit, audit_lines
from medtune.data.config import DEFAULT_GENERATOR, DataConfig, SourceConfig
from medtune.data.records import COUNTS, Record, Tally, count_rows, save_rejects
from medtune.errors import ConfigError, DataFileError
from medtune.llm import LLMClient

console = Console(stderr=True)
OUTPUTS = ("train.jsonl", "validation.jsonl", "stats.json", "DATA_CARD.md", "rejects.jsonl")
PROMPT_TYPES = ("corpus", "qa_tree", "labelled")  # sources whose records carry a user turn to answer


def read_source(src: SourceConfig, tally: Tally) -> list[Record]:
    """All records of one source (``max_items`` applied), each tagged ``meta.sensitive``."""
    kw = {"encoding": src.encoding, "language": src.language}
    if src.type == "guideline":
        it = R.read_guidelines(src.path, tally, max_chars=src.max_chars, overlap_chars=src.overlap_chars,
                               max_file_mb=src.max_file_mb, **kw)
    elif src.type == "kb":
        it = R.read_kb(src.path, tally, name_field=src.name_field, max_file_mb=src.max_file_mb, columns=src.columns,
                       item_separator=src.item_separator, **kw)
    elif src.type == "report":
        it = R.read_reports(src.path, tally, **kw)
    elif src.type == "qa_tree":
        it = R.read_qa_tree(src.path, tally, question_field=src.question_field, answer_field=src.answer_field, **kw)
    elif src.type == "labelled":
        it = R.read_labelled(src.path, tally, **kw)
    else:
        it = R.read_corpus(src.path, tally, columns=src.columns, **kw)
    records = []
    for r in it:
        r.meta["sensitive"] = src.sensitive
        records.append(r)
        if src.max_items is not None and len(records) >= src.max_items:
            break  # before asking the reader for one more: its tally counts only what was used
    return records


def print_skipped(skipped: list[tuple[str, str]], rejects: Path, limit: int = 20) -> None:
    """Name the files a reader did not read, with the reason (at most ``limit``; all are in ``rejects``)."""
    for file, reason in skipped[:limit]:
        console.print(f"  [yellow]skipped[/] {escape(file)}: {escape(reason)}", highlight=False)
    if len(skipped) > limit:
        console.print(f"  ... and {len(skipped) - limit} more skipped files (all in {rejects})")


def read_sources(cfg: DataConfig, tallies: dict[str, Tally], rejects: Path) -> list[tuple[SourceConfig, list[Record]]]:
    """Read every source (one ``read:<type>:<path>`` tally each), printing counts, the files not read
    (:func:`print_skipped`; all in ``rejects``) and a warning for a source that gave nothing."""
    sources = []
    for k, src in enumerate(cfg.sources):
        step = f"read:{src.type}:{src.path}"
        step += f"#{k}" if step in tallies else ""  # a file read twice (e.g. SFT pass-through + pairwise-judge prompts)
        tally = tallies[step] = Tally(step)
        sources.append((src, read_source(src, tally)))
        console.print(f"read {src.path} ({src.type}): {len(sources[-1][1])} records, {sum(tally.dropped.values())} rejected")
        print_skipped(tally.skipped_files(), rejects)
        if not sources[-1][1] and tally.rejects:
            first = list(dict.fromkeys(r.reason for r in reversed(tally.rejects)))[:3]
            console.print(f"[bold yellow]WARNING[/] {src.path}: no record read; reasons:\n  " + "\n  ".join(first))
    return sources


async def _generate(cfg: DataConfig, sources: list[tuple[SourceConfig, list[Record]]], teacher: LLMClient,
                    seed: int, tallies: dict[str, Tally], pairs: list[dict],
                    judges: tuple[LLMClient, LLMClient] | None = None) -> list[Record]:
    """Run every source's generator (teacher calls run concurrently under the teacher's limits);
    preference pairs (``safety-pairs``, ``pairwise-judge`` with ``judges`` = (sampler, judge)) are
    appended to ``pairs``.

    A ``rag-qa`` source first gets its type's QA (kb-template / guideline-qa); :func:`G.rag_qa` then puts
    retrieved passages around each pair, drawing distractors from every ``rag-qa`` source.
    """
    rng, templates, out, jobs = random.Random(seed), None, [], []
    rag_sources, rag_pairs = [], []
    for src, records in sources:
        gen = src.generator or DEFAULT_GENERATOR[src.type]
        sink = out
        if gen == "rag-qa":
            if src.type not in ("guideline", "kb"):
                raise ConfigError(f"data.sources {src.path}: generator rag-qa needs type guideline or kb, not {src.type}")
            rag_sources += records
            gen, sink = DEFAULT_GENERATOR[src.type], rag_pairs
        tally = tallies.setdefault(f"generate:{gen}", Tally(f"generate:{gen}"))
        if gen == "none":
            if src.type not in ("qa_tree", "corpus"):
                _skip(src, records, tally)
                continue
            for r in records:
                r.meta.update(generator=src.type, teacher_model=None)  # passed through as written
            out.extend(records)
            tally.kept += len(records)
            tally.seen += len(records)
        elif gen == "safety-sft":
            if src.type != "labelled":
                raise ConfigError(f"source {src.path}: generator safety-sft needs type: labelled (got {src.type})")
            for r in records:
                out.extend(G.safety_sft(r, SafetyConfig(), rng, tally))
        elif gen == "safety-pairs":
            if src.type != "labelled":
                raise ConfigError(f"source {src.path}: generator safety-pairs needs type: labelled (got {src.type})")
            for r in records:
                pairs.extend(G.safety_pairs(r, SafetyConfig(), rng, tally))
        elif gen == "pairwise-judge":
            if src.type not in PROMPT_TYPES:
                raise ConfigError(f"source {src.path}: generator pairwise-judge needs type {' | '.join(PROMPT_TYPES)} (got {src.type})")
            pj_seed = cfg.pairwise_judge.sampler.seed if cfg.pairwise_judge.sampler.seed is not None else seed
            jobs += [(pairs, G.pairwise_judge(r, *judges, cfg.pairwise_judge, pj_seed, tally)) for r in records]
        elif gen == "kb-template" and src.augment is not None:
            templates = templates or G.load_templates(cfg.templates)
            sink.extend(await _kb_views(cfg, src, records, templates, teacher, seed, tally))
        elif gen == "kb-template":
            templates = templates or G.load_templates(cfg.templates)
            for r in records:
                sink.extend(G.kb_template(r, templates, cfg.paraphrases, rng, tally))
        else:
            kind = "guideline" if gen == "guideline-qa" else "report"
            jobs += [(sink, G.grounded_qa(r, teacher, kind, src.questions_per_item, cfg.judge, cfg.prompts_dir, tally,
                                          multi_turn=src.multi_turn and sink is out,
                                          min_support=cfg.min_answer_support))
                     for r in records]
    for sink, batch in zip([s for s, _ in jobs], await asyncio.gather(*(job for _, job in jobs))):
        sink.extend(batch)
    if rag_sources:
        out.extend(G.rag_qa(rag_pairs, rag_sources, cfg.rag_passages, cfg.rag_not_covered, rng,
                            tallies.setdefault("generate:rag-qa", Tally("generate:rag-qa"))))
    if cfg.dialogue is not None:
        out.extend(await G.dialogue(cfg.dialogue, teacher, cfg.prompts_dir, rng, tallies.setdefault("generate:dialogue", Tally("generate:dialogue"))))
    if cfg.translate_to:
        pick = [r for r in out if r.meta.get("language") != cfg.translate_to][: cfg.translate_max]
        out.extend(await G.translate(pick, cfg.translate_to, teacher, cfg.prompts_dir,
                                     tallies.setdefault("generate:translate", Tally("generate:translate"))))
    await teacher.aclose()
    for client in judges or ():
        await client.aclose()
    return out


async def _kb_views(cfg: DataConfig, src: SourceConfig, records: list[Record], templates: dict, teacher: LLMClient,
                    seed: int, tally: Tally) -> list[Record]:
    """Knowledge views of one augmented kb source (:func:`G.kb_views`), with teacher paraphrases first when
    ``augment.teacher_questions`` > 0. Its own seeded generator: the other sources' data stays as without it."""
    views = G.load_view_templates(cfg.view_templates)
    aug = src.augment
    extra = await G.teacher_questions(records, templates, views, aug.teacher_questions, teacher, cfg.prompts_dir,
                                      aug.fields, tally) if aug.teacher_questions else {}
    # seeded by the file's name, not its absolute path: the same recipe builds the same data in any checkout
    rng = random.Random(f"kb-views:{seed}:{Path(str(src.path)).name}")
    return G.kb_views(records, templates, views, aug, rng, tally, extra)


def _skip(src: SourceConfig, records: list[Record], tally: Tally) -> None:
    """Count (and warn about) the records of a source that ``generator: none`` does not pass through:
    only QA records (qa_tree, corpus) are training examples as written."""
    if not records:
        return
    tally.skipped[f"{src.type} records with generator none (only qa_tree / corpus records pass through)"] += len(records)
    usable = " | ".join(g for g, t in (("guideline-qa", "guideline"), ("kb-template", "kb"), ("report-qa", "report"),
                                       ("safety-sft", "labelled")) if t == src.type)
    console.print(f"[bold yellow]WARNING[/] {src.path}: {len(records)} {src.type} records read, none used: generator none "
                  f"passes only QA records (qa_tree, corpus) through; for training examples from them use generator: "
                  f"{usable or 'another generator'}", highlight=False, soft_wrap=True)


def pairwise_clients(cfg: DataConfig, out: Path) -> tuple[LLMClient, LLMClient] | None:
    """``(sampler, judge)`` clients of the ``pairwise-judge`` generator (one shared client when both name the
    same model on the same backend); None when no source uses it.

    Raises:
        ConfigError: the sampler is greedy (temperature 0): every sample would be the same answer.
    """
    if not any(s.generator == "pairwise-judge" for s in cfg.sources):
        return None
    pj = cfg.pairwise_judge
    if pj.sampler.temperature <= 0:
        raise ConfigError("data.pairwise_judge.sampler.temperature is 0: greedy sampling gives identical answers; "
                          "set it > 0 (e.g. 0.8)")
    sampler = LLMClient(pj.sampler, cache_path=out / "pairwise_cache.sqlite", key="data.pairwise_judge.sampler")
    same = (pj.judge.base_url, pj.judge.model or sampler.model) == (pj.sampler.base_url, sampler.model)
    return sampler, sampler if same else LLMClient(pj.judge, cache_path=out / "pairwise_cache.sqlite", key="data.pairwise_judge.judge")


def filter_steps(cfg, seed: int) -> tuple[list[tuple[str, F.Filter]], F.PHIScrubber | None]:
    """The configured filters in order, and the PHI scrubber (for its per-type counts)."""
    steps: list[tuple[str, F.Filter]] = [("filter:answer", F.check_answer),
                                         ("filter:length", F.length_filter(cfg.min_chars, cfg.max_chars))]
    if cfg.language_check:
        steps.append(("filter:language", F.language_filter))
    phi = F.PHIScrubber(cfg.mrn_patterns, cfg.phi_types) if cfg.phi else None
    if phi:
        steps.append(("filter:phi", phi))
    steps.append(("filter:exact_dedup", F.ExactDedup()))
    if cfg.near_dup_threshold:
        steps.append(("filter:near_dedup", F.NearDedup(cfg.near_dup_threshold, cfg.shingle_chars, cfg.num_perm, seed)))
    if cfg.decontam_files:
        steps.append(("filter:decontam", F.Decontaminator(cfg.decontam_files, cfg.decontam_word_ngram, cfg.decontam_char_ngram)))
    return steps, phi


def count_filter_repairs(steps: list[tuple[str, F.Filter]], tallies: dict[str, Tally]) -> None:
    """Put what the filters changed without dropping into the count table: PHI placeholders written
    (``fixed``, per type) and ``kb-template`` records the near-duplicate filter does not compare (``skipped``)."""
    for name, f in steps:
        if isinstance(f, F.PHIScrubber):
            tallies[name].fixed.update({f"[{kind}] placeholders written": n for kind, n in f.counts.items()})
        elif isinstance(f, F.NearDedup) and f.exempt:
            tallies[name].skipped["kb-template records, not compared (exact duplicates still removed)"] += f.exempt


def split_by_document(records: list[Record], fraction: float, seed: int,
                      train_only: tuple[Path, ...] = ()) -> tuple[list[Record], list[Record]]:
    """Train / validation split over source documents (``meta.doc_id``), never splitting a document.

    ``ceil``-free: ``round(fraction * n_docs)`` documents (at least one when fraction > 0 and there are
    two or more documents) chosen with ``seed`` go to validation. Records whose ``meta.source_file`` is
    one of ``train_only`` (files or folders; sources with ``validation: false``) always stay in training.
    """
    def fixed(r: Record) -> bool:
        f = Path(r.meta.get("source_file", ""))
        return any(f == p or p in f.parents for p in train_only)

    docs = sorted({r.meta.get("doc_id", r.id) for r in records if not fixed(r)})
    k = round(fraction * len(docs))
    k = max(k, 1) if fraction > 0 and len(docs) >= 2 else k
    val_docs = set(random.Random(seed).sample(docs, min(k, len(docs) - 1 if len(docs) > 1 else 0)))
    train = [r for r in records if r.meta.get("doc_id", r.id) not in val_docs]
    return train, [r for r in records if r.meta.get("doc_id", r.id) in val_docs]


def to_line(r: Record, fmt: str) -> dict:
    """One output line: ``{"messages", "meta"}`` or Alpaca ``{"instruction", "input", "output", "meta"}``."""
    meta = {k: v for k, v in r.meta.items() if v is not None}
    if fmt == "alpaca":
        system = "\n".join(m["content"] for m in r.messages if m["role"] == "system")
        users = [m for m in r.messages if m["role"] == "user"]
        return {"instruction": users[-1]["content"], "input": system, "output": r.messages[-1]["content"], "meta": meta}
    return {"messages": r.messages, "meta": meta}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build_data(cfg: DataConfig, seed: int = 42) -> dict:
    """Run the whole data stage and write the outputs listed in the module docstring.

    Args:
        cfg: the ``data:`` recipe section, resolved (``output_dir`` set; :func:`medtune.recipe.resolve`).
        seed: seed for templates, sampling and the split (``cfg.seed`` wins when set).

    Returns:
        A summary: counts, output paths, teacher usage, wall time.

    Raises:
        DataFileError: a source cannot be read at all (missing file, undecodable, wrong layout).
        SensitiveDataError: a sensitive source would go to a remote teacher without the override.
    """
    if cfg.output_dir is None:
        raise ConfigError("data.output_dir is not set (a recipe sets it to <output_dir>/data)")
    t0, out = time.time(), Path(cfg.output_dir)
    seed = cfg.seed if cfg.seed is not None else seed
    out.mkdir(parents=True, exist_ok=True)
    tallies: dict[str, Tally] = {}
    sources, pairs = read_sources(cfg, tallies, out / "rejects.jsonl"), []
    teacher = LLMClient(cfg.teacher, cache_path=out / "teacher_cache.sqlite")
    judges = pairwise_clients(cfg, out)
    try:
        generated = asyncio.run(_generate(cfg, sources, teacher, seed, tallies, pairs, judges))
    except DataFileError:
        save_rejects(list(tallies.values()), out / "rejects.jsonl")  # what made the input unusable
        raise
    finally:
        for client in {id(c): c for c in (teacher, *(judges or ()))}.values():
            client.close()
    steps, phi = filter_steps(cfg.filters, seed)
    kept = list(F.run_filters(generated, steps, tallies))
    count_filter_repairs(steps, tallies)
    train, val = split_by_document(kept, cfg.validation_fraction, seed,
                                   tuple(Path(s.path) for s in cfg.sources if not s.validation))
    _write_jsonl(out / "train.jsonl", [to_line(r, cfg.format) for r in train])
    _write_jsonl(out / "validation.jsonl", [to_line(r, cfg.format) for r in val])
    if pairs:
        _write_jsonl(out / "pairs.jsonl", pairs)
    n_rejects = save_rejects(list(tallies.values()), out / "rejects.jsonl")
    stats = {"records": {"generated": len(generated), "kept": len(kept), "train": len(train), "validation": len(val),
                         "pairs": len(pairs)},
             "steps": {k: t.summary() for k, t in tallies.items()}, "rejects": n_rejects,
             "phi_replacements": dict(phi.counts) if phi else {}, "teacher": {"model": teacher.model,
             "backend": cfg.teacher.base_url or "local (in process)", **teacher.usage},
             "languages": dict(Counter(r.meta.get("language") for r in kept)),
             "generators": dict(Counter(r.meta.get("generator") for r in kept)), "seed": seed,
             "wall_s": round(time.time() - t0, 2), "audit": audit(kept, tallies)}
    if judges:
        stats["pairwise_judge"] = {"sampler": {"model": judges[0].model, **judges[0].usage},
                                   "judge": {"model": judges[1].model, **judges[1].usage},
                                   "shared_client": judges[0] is judges[1]}
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "DATA_CARD.md").write_text(data_card(cfg, stats, kept), encoding="utf-8")
    for warning in stats["audit"]["warnings"]:
        console.print(f"[bold red]DATA QUALITY WARNING[/]: {warning} (examples in {out / 'stats.json'} under audit)")
    if cfg.strict and stats["audit"]["warnings"]:
        raise DataFileError(f"data.strict: the audit found problems: {'; '.join(stats['audit']['warnings'])}; "
                            f"see the Audit section of {out / 'DATA_CARD.md'}")
    print_counts(stats["steps"])
    console.print(f"data: {len(generated)} generated -> {len(kept)} kept ({len(train)} train, {len(val)} validation), "
                  f"{n_rejects} rejects, teacher {teacher.usage['requests']} calls / {teacher.usage['cache_hits']} cached, "
                  f"{stats['wall_s']} s -> {out}")
    return {**stats["records"], "rejects": n_rejects, "train_file": str(out / "train.jsonl"),
            "validation_file": str(out / "validation.jsonl"),
            "pairs_file": str(out / "pairs.jsonl") if pairs else None, "teacher_requests": teacher.usage["requests"],
            "teacher_tokens": teacher.usage["prompt_tokens"] + teacher.usage["completion_tokens"], "wall_s": stats["wall_s"]}


def print_counts(steps: dict) -> None:
    """Print the build's count table (:func:`medtune.data.records.count_rows`; the data card shows the same)."""
    console.print("counts per step:")
    for step, seen, kept, *cells in count_rows(steps):
        counts = "".join(f", {label} {cell}" for label, cell in zip(COUNTS.values(), cells) if cell)
        console.print(f"  {step}: seen {seen}, kept {kept}{counts}", markup=False, highlight=False, soft_wrap=True)


def data_card(cfg: DataConfig, stats: dict, kept: list[Record], n_examples: int = 3) -> str:
    """A short markdown data card: sources, sizes, languages, generators, filters, examples."""
    lines = ["# Data card", "", "Built by `medtune data build`.", "", "## Sources", "",
             "| path | type | generator | sensitive |", "|---|---|---|---|"]
    lines += [f"| {s.path} | {s.type} | {s.generator or DEFAULT_GENERATOR[s.type]} | {s.sensitive} |" for s in cfg.sources]
    if cfg.dialogue:
        lines.append(f"| {cfg.dialogue.seed_file} | seed tasks | dialogue | False |")
    r = stats["records"]
    lines += ["", "## Sizes", "", f"- generated: {r['generated']}, kept: {r['kept']} (train {r['train']}, validation {r['validation']})",
              f"- preference pairs: {r['pairs']}" + (" (pairs.jsonl)" if r["pairs"] else ""),
              f"- rejects: {stats['rejects']} (see rejects.jsonl)", f"- languages: {stats['languages']}",
              f"- generators: {stats['generators']}",
              f"- teacher: {stats['teacher']['model']} via {stats['teacher']['backend']}; {stats['teacher']['requests']} calls, "
              f"{stats['teacher']['cache_hits']} cached, {stats['teacher']['prompt_tokens']} prompt + "
              f"{stats['teacher']['completion_tokens']} completion tokens",
              "", "## Counts per step", "", "| " + " | ".join(("step", "seen", "kept", *COUNTS.values())) + " |",
              "|" + "---|" * (3 + len(COUNTS))]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in count_rows(stats["steps"])]
    lines += ["", f"PHI replacements: {stats['phi_replacements'] or 'none'}", ""]
    lines += audit_lines(stats["audit"]) + ["## Examples", ""]
    for rec in kept[:: max(1, len(kept) // n_examples)][:n_examples]:
        lines += [f"- **{rec.meta.get('generator')}** ({rec.meta.get('language')}, {rec.meta.get('doc_id')}): "
                  f"Q: {next(m['content'] for m in rec.messages if m['role'] == 'user')[:160]!r} "
                  f"A: {rec.messages[-1]['content'][:200]!r}"]
    return "\n".join(lines) + "\n"
