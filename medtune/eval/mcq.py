"""``medtune eval mcq``: score a model on a multiple-choice benchmark.

Two scoring modes:

- ``loglik`` (local models, default): one forward pass per question (batched) over the
  chat-templated prompt; the prediction is the option letter with the highest next-token
  log-probability (the "letter log-likelihood" protocol of MMLU-style harnesses, e.g.
  Hendrycks et al., ICLR 2021). For multi-answer questions every option whose probability,
  renormalised over the option letters, is above uniform (``1 / n_options``) is selected.
- ``generate`` (endpoints, or local on request): the model replies (optionally reasoning
  step by step first) and the letters are parsed from the reply; replies with no letters
  are counted as unparseable (and wrong).

Multi-answer questions count as correct only on an exact set match. Accuracy comes with a
95% Wilson interval, overall and per subject, beside the distribution of predicted letters and
of gold letters, flagged as a *collapse* when one letter takes > 60% of the predictions. With
``calibrate`` (loglik) the accuracy after content-free calibration (Zhao et al., ICML 2021,
"Calibrate Before Use") is reported too, and with ``pride`` (loglik) the accuracy after PriDe
(Zheng et al., ICLR 2024, "Large Language Models Are Not Robust Multiple Choice Selectors"): the
model's prior over option letters is estimated by cycling the options of a small sample of the
questions, then divided out of every other question's letter probabilities. ``verdict`` names
the accuracy that base-vs-fine-tuned comparisons use.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from medtune.text import detect_language, parse_answer  # noqa: F401  (parse_answer: imported from here by older code)
from medtune.errors import EvalError
from medtune.eval.backends import Backend, generate, letter_logprobs, load_backend
from medtune.eval.config import McqConfig
from medtune.eval.mcq_data import MCQItem, load_mcq
from medtune.eval.results import append_rows, elapsed, finish, load_done, run_key
from medtune.eval.stats import proportion
from medtune.manifest import tree_digests

console = Console(stderr=True)
COLLAPSE_SHARE = 0.6  # one option above this share of predictions: the model answers a letter, not the question

PROMPTS = {
    "en": {"question": "Question", "context": "Context", "single": "Answer with the letter of the correct option only.",
           "multi": "One or more options may be correct. Answer with the letters of all correct options only, e.g. AC.",
           "cot": "Think step by step, then write the final answer on the last line as 'Answer: <letter(s)>'."},
    "zh": {"question": "问题", "context": "背景资料", "single": "请只回答正确选项的字母。",
           "multi": "本题可能有多个正确选项。请只回答所有正确选项的字母，例如 AC。",
           "cot": "请逐步分析，最后一行按“答案：<字母>”的格式给出答案。"},
    "ko": {"question": "문제", "context": "지문", "single": "정답 보기의 알파벳 하나만 답하세요.",
           "multi": "정답이 여러 개일 수 있습니다. 정답 보기의 알파벳만 모두 답하세요. 예: AC",
           "cot": "단계적으로 생각한 뒤 마지막 줄에 '정답: <알파벳>' 형식으로 답하세요."},
}


def format_question(item: MCQItem, lang: str, cot: bool = False, instruction: bool = True) -> str:
    """The user message for one question: context, stem, ``A. option`` lines and the instruction."""
    p = PROMPTS[lang]
    parts = [f"{p['context']}: {item.context}"] if item.context else []
    parts.append(f"{p['question']}: {item.question}\n" + "\n".join(f"{k}. {v}" for k, v in item.options.items()))
    if instruction:
        parts.append(p["multi"] if item.multi else p["single"])
        if cot:
            parts.append(p["cot"])
    return "\n\n".join(parts)


def build_messages(item: MCQItem, shots: list[MCQItem], lang: str, cot: bool) -> list[dict]:
    """Chat messages: k solved examples as earlier user/assistant turns, then the question."""
    messages = []
    for s in shots:
        messages += [{"role": "user", "content": format_question(s, lang)}, {"role": "assistant", "content": s.answer}]
    return messages + [{"role": "user", "content": format_question(item, lang, cot)}]


def pick_shots(item: MCQItem, pool: list[MCQItem], k: int, seed: int) -> list[MCQItem]:
    """``k`` examples from ``pool`` (never the item itself), fixed per (seed, item id)."""
    if k == 0:
        return []
    candidates = [p for p in pool if p.id != item.id]
    if len(candidates) < k:
        raise EvalError(f"{k}-shot needs at least {k} other questions, the shot pool has {len(candidates)}")
    return random.Random(f"{seed}:{item.id}").sample(candidates, k)


def choose_letters(logprobs: dict[str, float], multi: bool) -> tuple[str, dict[str, float]]:
    """Prediction from option-letter log-probabilities; also the renormalised probabilities.

    Single-answer: the arg-max letter. Multi-answer: every letter whose renormalised
    probability is above uniform (``1 / n_options``), at least the arg-max.
    """
    top = max(logprobs.values())
    z = sum(math.exp(v - top) for v in logprobs.values())
    probs = {k: math.exp(v - top) / z for k, v in logprobs.items()}
    best = max(probs, key=lambda k: (probs[k], -ord(k)))
    if not multi:
        return best, probs
    chosen = {k for k, p in probs.items() if p > 1 / len(probs)} | {best}
    return "".join(sorted(chosen)), probs


_CF_CACHE: dict[tuple, dict[str, float]] = {}


def content_free_probs(backend: Backend, letters: str, lang: str, pool: list[MCQItem], cfg: McqConfig) -> dict[str, float]:
    """Option-letter probabilities for a content-free question ("N/A" as stem and every option), the
    model's prior over letters (Zhao et al. 2021, "Calibrate Before Use", section 4); cached per
    model, letter set, language and shots."""
    key = (json.dumps(backend.identity, sort_keys=True, default=str), letters, lang, cfg.shots, cfg.seed)
    if key not in _CF_CACHE:
        item = MCQItem(id="content-free", question="N/A", options={k: "N/A" for k in letters}, answer=letters[0])
        prompt = build_messages(item, pick_shots(item, pool, cfg.shots, cfg.seed), lang, False)
        _CF_CACHE[key] = choose_letters(letter_logprobs(backend, [prompt], [letters])[0], False)[1]
    return _CF_CACHE[key]


def content_free_priors(backend: Backend, items: list[MCQItem], pool: list[MCQItem], cfg: McqConfig) -> dict:
    """The content-free letter probabilities the calibration divided by, ``{"<lang> <letters>": {letter: p}}``
    for every language and option set of ``items`` (the prior the model shows with no question)."""
    sets = sorted({(cfg.language if cfg.language != "auto" else detect_language(it.question, default="en"), "".join(it.options))
                   for it in items})
    return {f"{lang} {letters}": {k: round(v, 4) for k, v in content_free_probs(backend, letters, lang, pool, cfg).items()}
            for lang, letters in sets}


PRIDE_MIN_ITEMS = 5  # estimation questions per option-letter set (all of them when the set has fewer)
VERDICT_BLOCKS = {"raw": ("correct", None), "calibrated": ("correct_debiased", "debiased"), "pride": ("correct_pride", "pride")}


def question_language(item: MCQItem, cfg: McqConfig) -> str:
    """The prompt language of one question: ``cfg.language``, or the question's script when "auto"."""
    return cfg.language if cfg.language != "auto" else detect_language(item.question, default="en")


def cyclic_shift(item: MCQItem, shift: int) -> MCQItem:
    """``item`` with its option texts moved cyclically: letter ``i`` shows the text of option
    ``(i + shift) mod n``, and the answer letters follow their texts (original option ``j`` is now
    letter ``(j - shift) mod n``)."""
    letters, texts = list(item.options), list(item.options.values())
    n = len(letters)
    options = {letters[i]: texts[(i + shift) % n] for i in range(n)}
    answer = "".join(sorted(letters[(letters.index(a) - shift) % n] for a in item.answer))
    return replace(item, options=options, answer=answer)


def log_renormalise(logprobs: dict[str, float]) -> dict[str, float]:
    """Letter log-probabilities renormalised over the option letters (a log-softmax over them)."""
    top = max(logprobs.values())
    z = top + math.log(sum(math.exp(v - top) for v in logprobs.values()))
    return {k: v - z for k, v in logprobs.items()}


def pride_sample(items: list[MCQItem], fraction: float, seed: int) -> list[MCQItem]:
    """The estimation questions of PriDe: per option-letter set (``ABCD``, ``ABC`` ...) a seeded random
    ``fraction`` of its questions, at least :data:`PRIDE_MIN_ITEMS` (all when the set has fewer)."""
    groups: dict[str, list[MCQItem]] = defaultdict(list)
    for it in items:
        groups["".join(it.options)].append(it)
    rng = random.Random(f"{seed}:pride")
    return [it for letters, group in sorted(groups.items())
            for it in rng.sample(group, min(len(group), max(PRIDE_MIN_ITEMS, math.ceil(fraction * len(group)))))]


def permuted_logprobs(backend: Backend, sample: list[MCQItem], pool: list[MCQItem], cfg: McqConfig) -> dict[str, list[dict[str, float]]]:
    """Renormalised letter log-probabilities of each sample question under each cyclic shift of its options.

    Returns:
        ``{item id: [log P(letter | options shifted by s) for s in 0..n_options-1]}``; one forward
        pass per (question, shift), ``cfg.batch_size`` per batch.
    """
    jobs = [(it, s) for it in sample for s in range(len(it.options))]
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for i in range(0, len(jobs), cfg.batch_size):
        batch = jobs[i:i + cfg.batch_size]
        prompts = [build_messages(cyclic_shift(it, s), pick_shots(it, pool, cfg.shots, cfg.seed), question_language(it, cfg), False)
                   for it, s in batch]
        for (it, _), lp in zip(batch, letter_logprobs(backend, prompts, ["".join(it.options) for it, _ in batch])):
            out[it.id].append(log_renormalise(lp))
    return out


def pride_prior(sample: list[MCQItem], permuted: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """PriDe's prior over option letters per letter set (Zheng et al. 2024, section 4, eq. 4-5).

    Under ``P_observed(letter_i) ~ P_prior(letter_i) * P_debiased(text at letter_i)``, averaging
    ``log P_observed(letter_i)`` over the cyclic shifts cancels the content (each text visits each
    letter once), so the softmax of that mean is the question's prior; the prior of a letter set is
    the mean of its sample questions' priors.

    Returns:
        ``{letters: {letter: prior probability}}``, each summing to 1.
    """
    per_set: dict[str, list[dict[str, float]]] = defaultdict(list)
    for it in sample:
        shifts = permuted[it.id]
        per_set["".join(it.options)].append(
            {k: math.exp(v) for k, v in log_renormalise({k: sum(p[k] for p in shifts) / len(shifts) for k in it.options}).items()})
    return {letters: {k: sum(p[k] for p in priors) / len(priors) for k in letters} for letters, priors in per_set.items()}


def pride_scores(item: MCQItem, row: dict, prior: dict[str, float], shifts: list[dict[str, float]] | None) -> dict[str, float]:
    """Debiased letter scores (log scale) of one question. A sample question is debiased by its own
    permutations (the mean log-probability each option text got over every position); any other by
    dividing its observed letter probabilities by the prior."""
    if shifts is None:
        return {k: v - math.log(prior[k]) for k, v in log_renormalise(row["logprobs"]).items()}
    letters, n = list(item.options), len(item.options)
    return {letters[j]: sum(p[letters[(j - s) % n]] for s, p in enumerate(shifts)) / n for j in range(n)}


def pride_debias(backend: Backend, items: list[MCQItem], rows: list[dict], pool: list[MCQItem], cfg: McqConfig) -> dict:
    """PriDe (Zheng et al., ICLR 2024, "Large Language Models Are Not Robust Multiple Choice Selectors").

    Estimates the prior over option letters on a small sample (:func:`pride_sample`) by cycling its
    options through every position, then debiases every question (:func:`pride_scores`). Adds
    ``prediction_pride``, ``correct_pride`` (and ``pride_estimation`` on sample rows) to ``rows``,
    which must be loglik rows (with ``logprobs``) in the order of ``items``.

    Returns:
        ``{"prior": {letters: {letter: p}}, "estimation_items": k, "forward_passes": n}``.
    """
    sample = pride_sample(items, cfg.pride_fraction, cfg.seed)
    permuted = permuted_logprobs(backend, sample, pool, cfg)
    prior = pride_prior(sample, permuted)
    for it, row in zip(items, rows):
        shifts = permuted.get(it.id)
        row["prediction_pride"] = choose_letters(pride_scores(it, row, prior["".join(it.options)], shifts), it.multi)[0]
        row["correct_pride"] = row["prediction_pride"] == it.answer
        row["pride_estimation"] = shifts is not None
    return {"prior": {k: {x: round(p, 4) for x, p in v.items()} for k, v in prior.items()},
            "estimation_items": len(sample), "forward_passes": sum(len(it.options) for it in sample)}


def verdict_accuracy(results: dict, wanted: str) -> dict:
    """Which accuracy base-vs-fine-tuned comparisons use: ``wanted`` (raw, calibrated, pride), or with
    "auto" PriDe when it was computed, else content-free calibration when computed, else raw.

    Returns:
        ``{"uses", "field" (the per-item yes/no field), "accuracy", "ci95"}``.

    Raises:
        EvalError: ``wanted`` names an accuracy this run did not compute.
    """
    if wanted == "auto":
        wanted = "pride" if "pride" in results else "calibrated" if "debiased" in results else "raw"
    field, key = VERDICT_BLOCKS[wanted]
    if key is not None and key not in results:
        raise EvalError(f"verdict={wanted} needs the {wanted} accuracy: set {'pride' if wanted == 'pride' else 'calibrate'}=true "
                        "(loglik mode)")
    block = results[key] if key else results
    return {"uses": wanted, "field": field, "accuracy": block["accuracy"], "ci95": block["ci95"]}


def option_distributions(rows: list[dict], key: str = "prediction") -> dict:
    """Shares of predicted and gold letters over the single-answer rows, and the collapse flag.

    Returns:
        ``{"predicted": {letter: share}, "gold": {letter: share}, "top": letter, "top_share",
        "collapse"}``; ``collapse`` is True when one letter takes more than 60% of the predictions
        (the accuracy is then mostly the gold share of that letter).
    """
    single = [r for r in rows if not r.get("multi")]
    n = len(single)
    if not n:
        return {"predicted": {}, "gold": {}, "top": None, "top_share": 0.0, "collapse": False}
    pred = Counter(r.get(key) or "none" for r in single)
    gold = Counter(r["answer"] for r in single)
    top, count = max(pred.items(), key=lambda kv: (kv[1], kv[0]))
    share = lambda c: {k: round(v / n, 4) for k, v in sorted(c.items())}  # noqa: E731
    return {"predicted": share(pred), "gold": share(gold), "top": top, "top_share": round(count / n, 4),
            "collapse": count / n > COLLAPSE_SHARE}


def score_batch(backend: Backend, batch: list[MCQItem], pool: list[MCQItem], cfg: McqConfig, mode: str,
                key: str) -> list[dict]:
    """Score a batch of questions; one per-item result row each."""
    langs = [question_language(it, cfg) for it in batch]
    prompts = [build_messages(it, pick_shots(it, pool, cfg.shots, cfg.seed), lang, cfg.cot and mode == "generate")
               for it, lang in zip(batch, langs)]
    rows = []
    if mode == "loglik":
        for it, lang, lp in zip(batch, langs, letter_logprobs(backend, prompts, ["".join(it.options) for it in batch])):
            pred, probs = choose_letters(lp, it.multi)
            row = {"prediction": pred, "probs": {k: round(v, 4) for k, v in probs.items()}, "logprobs": lp}
            if cfg.calibrate:
                cf = content_free_probs(backend, "".join(it.options), lang, pool, cfg)
                row["prediction_debiased"] = choose_letters({k: math.log(probs[k] / cf[k]) for k in probs}, it.multi)[0]
                row["correct_debiased"] = row["prediction_debiased"] == it.answer
            rows.append(row)
    else:
        settings = cfg.generation.model_copy(update={"seed": cfg.seed if cfg.generation.temperature > 0 else None})
        for it, reply in zip(batch, generate(backend, prompts, settings)):
            rows.append({"prediction": parse_answer(reply, it.options), "reply": reply, "question": it.question,
                         "options": it.options})
    return [{"id": it.id, "subject": it.subject, "answer": it.answer, "multi": it.multi, **r,
             "parsed": r["prediction"] is not None, "correct": r["prediction"] == it.answer,
             "source": it.source, "run_key": key} for it, r in zip(batch, rows)]


def summarize(rows: list[dict]) -> dict:
    """Accuracy with 95% Wilson CI, per-subject breakdown and unparseable rate."""
    n, correct = len(rows), sum(r["correct"] for r in rows)
    unparsed = sum(not r["parsed"] for r in rows)
    acc = proportion(correct, n)
    subjects = sorted({r["subject"] for r in rows})
    per_subject = {s or "(none)": proportion(sum(r["correct"] for r in rows if r["subject"] == s),
                                             sum(r["subject"] == s for r in rows)) for s in subjects}
    out = {"n": n, "correct": correct, "accuracy": acc["rate"], "ci95": acc["ci95"], "unparseable": unparsed,
           "unparseable_rate": round(unparsed / n, 4) if n else 0.0, "per_subject": per_subject,
           "option_distribution": option_distributions(rows)}
    if rows and all("correct_debiased" in r for r in rows):
        deb = proportion(sum(r["correct_debiased"] for r in rows), n)
        out["debiased"] = {"method": "content-free calibration (Zhao et al. 2021)", "accuracy": deb["rate"],
                           "ci95": deb["ci95"], "option_distribution": option_distributions(rows, "prediction_debiased")}
    if rows and all("correct_pride" in r for r in rows):
        pride = proportion(sum(r["correct_pride"] for r in rows), n)
        out["pride"] = {"method": "PriDe (Zheng et al. 2024)", "accuracy": pride["rate"], "ci95": pride["ci95"],
                        "option_distribution": option_distributions(rows, "prediction_pride")}
    return out


def _shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" if v >= 0.005 else f"{k} <1%" for k, v in shares.items()) or "-"


def print_summary(results: dict, cfg: McqConfig, mode: str, tail: str) -> None:
    """Print the accuracy, the predicted- and gold-letter shares, the collapse warning and, with
    ``calibrate``, the calibrated accuracy and its letter shares."""
    dist = results["option_distribution"]
    console.print(f"mcq {results['model']} on {Path(cfg.data).name}: accuracy {results['accuracy']:.3f} "
                  f"(95% CI {results['ci95'][0]:.3f}-{results['ci95'][1]:.3f}), n={results['n']}, "
                  f"unparseable {results['unparseable']}, rejected {results['rejected']}, {tail}", highlight=False, soft_wrap=True)
    console.print(f"  predicted letters: {_shares(dist['predicted'])} (gold: {_shares(dist['gold'])})", highlight=False, soft_wrap=True)
    if dist["collapse"]:
        console.print(f"[bold yellow]WARNING[/] letter collapse: {dist['top']} is {dist['top_share']:.0%} of the predictions "
                      f"(gold share {dist['gold'].get(dist['top'], 0):.0%}); the accuracy mostly measures that letter's share"
                      + ("" if cfg.calibrate or mode != "loglik" else "; rerun with --calibrate to compare with the accuracy after content-free calibration"), soft_wrap=True)
    if "debiased" in results:
        d = results["debiased"]
        console.print(f"  calibrated (content-free, Zhao et al. 2021): accuracy {d['accuracy']:.3f} "
                      f"(95% CI {d['ci95'][0]:.3f}-{d['ci95'][1]:.3f}); predicted letters: "
                      f"{_shares(d['option_distribution']['predicted'])}", highlight=False, soft_wrap=True)
        for name, prior in d.get("content_free_prior", {}).items():
            console.print(f"  content-free prior ({name}): {_shares(prior)}", highlight=False, soft_wrap=True)
        cal = d["option_distribution"]
        if cal["collapse"]:
            console.print(f"[bold yellow]WARNING[/] still collapsed after calibration ({cal['top']} {cal['top_share']:.0%} "
                          "of the predictions): the calibrated accuracy mostly measures that letter's share too", soft_wrap=True)
    elif cfg.calibrate:
        console.print(f"[bold yellow]WARNING[/] --calibrate applies to loglik scoring only; {mode} mode has no calibrated accuracy", soft_wrap=True)


def run_mcq(cfg: McqConfig, backend: Backend | None = None) -> dict:
    """Evaluate one model on one benchmark file; write results, predictions, rejects and manifest.

    Args:
        cfg: the evaluation config.
        backend: an already loaded model (reused across files); loaded from ``cfg.model`` if None.

    Returns:
        The results dict (``accuracy``, ``ci95``, ``per_subject``, ``unparseable_rate`` ...; with
        ``calibrate`` a ``debiased`` block, with ``pride`` a ``pride`` block (accuracy, ci95, prior,
        estimation_items, forward_passes); ``verdict``: the accuracy comparisons use).

    Raises:
        EvalError: log-likelihood mode (or PriDe) with an endpoint, a different run in ``output_dir``,
            too few questions for k-shot, or a ``verdict`` naming an accuracy not computed.
        medtune.train.dataset.DataFileError: unreadable benchmark file or no usable question.
    """
    started = time.time()
    if (cfg.verdict == "pride" and not cfg.pride) or (cfg.verdict == "calibrated" and not cfg.calibrate):
        verdict_accuracy({}, cfg.verdict)  # raises: the named accuracy will not be computed
    items, rejects, fmt = load_mcq(cfg.data, cfg.format, cfg.column_map, cfg.ground_truth, cfg.encodings, cfg.cop_base)
    items = items[:cfg.max_items] if cfg.max_items else items
    pool = load_mcq(cfg.shots_file, encodings=cfg.encodings)[0] if cfg.shots_file else items
    out = Path(cfg.output_dir)
    backend = backend or load_backend(cfg.model, cfg.adapter, cache_path=out / "cache.sqlite")
    mode = cfg.mode if cfg.mode != "auto" else ("loglik" if backend.is_local else "generate")
    if mode == "loglik" and not backend.is_local:
        raise EvalError(f"{backend.name}: log-likelihood scoring needs a local model; use --mode generate for endpoints")
    if cfg.pride and mode != "loglik":
        raise EvalError(f"{backend.name}: PriDe needs the option letters' probabilities: use --mode loglik (a local model)")
    config = {**cfg.model_dump(mode="json", exclude={"overwrite", "output_dir"}), "mode": mode, "format": fmt,
              "prompt_templates": PROMPTS, "template": "tokenizer chat template (medtune.generation.render_prompt)"}
    inputs = {"model": backend.identity, "data": tree_digests(Path(cfg.data)),
              "shots_file": tree_digests(Path(cfg.shots_file)) if cfg.shots_file else None}
    key = run_key(config, inputs)
    out.mkdir(parents=True, exist_ok=True)
    done = load_done(out / "predictions.jsonl", key, cfg.overwrite)
    todo = [it for it in items if it.id not in done]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"mcq {backend.name} {Path(cfg.data).name} ({mode})", total=len(items), completed=len(items) - len(todo))
        for i in range(0, len(todo), cfg.batch_size):
            rows = score_batch(backend, todo[i:i + cfg.batch_size], pool, cfg, mode, key)
            append_rows(out / "predictions.jsonl", rows)
            done.update({r["id"]: r for r in rows})
            bar.advance(task, len(rows))
    ordered = [done[it.id] for it in items]
    pride = pride_debias(backend, items, ordered, pool, cfg) if cfg.pride else None
    results = {"model": backend.name, "model_identity": backend.identity, "data": str(cfg.data), "format": fmt,
               "mode": mode, "shots": cfg.shots, "cot": cfg.cot and mode == "generate", "seed": cfg.seed,
               **summarize(ordered), "rejected": len(rejects), "predictions_file": "predictions.jsonl"}
    if "debiased" in results:
        results["debiased"]["content_free_prior"] = content_free_priors(backend, items, pool, cfg)
    if pride:
        results["pride"].update(pride)
    results["verdict"] = verdict_accuracy(results, cfg.verdict)
    wall = elapsed(started)
    summary = {"questions": len(items), "computed": len(todo), "reused": len(items) - len(todo),
               "questions_per_s": round(len(todo) / wall, 2) if wall else None, "rejected": len(rejects)}
    results = finish(out, "mcq", config, inputs, results, cfg.seed, started, rejects, ordered, summary)
    print_summary(results, cfg, mode, f"{len(todo)} computed in {wall} s -> {out}")
    if "pride" in results:
        d = results["pride"]
        console.print(f"  debiased (PriDe, prior from {d['estimation_items']} questions x their option orders): "
                      f"{d['accuracy']:.3f} (95% CI {d['ci95'][0]:.3f}-{d['ci95'][1]:.3f})", highlight=False)
    if "verdict" in results:
        console.print(f"  the verdict uses the {results['verdict']['uses']} accuracy", highlight=False)
    return results
