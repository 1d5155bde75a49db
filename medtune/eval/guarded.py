"""End-to-end check of the safety layer through the real chat path (``medtune eval safety --model``).

``medtune eval safety`` without a model scores the red-flag detector alone. This module sends every
message of a labelled set (``medtune/safety/data/LABELS.md``; default the test set
``medtune/safety/data/test/``) through what ``medtune chat`` runs: :func:`medtune.models.load_chat_model`,
the model's chat template and generation (:func:`medtune.generation.stream_chat`) wrapped in
:func:`medtune.safety.guarded_stream` with the default :class:`~medtune.config.SafetyConfig`. A
``messages`` record is sent as the whole conversation. The answer is then *read*: it counts as
urgent when it begins with the urgent-care message (:func:`medtune.safety.urgent_message`) for
some categories, the answer's language and that language's emergency number, followed by the blank
line the guard puts after it (:func:`read_urgent`); the detector is not called a second time.

Two shares per language and overall, with 95% Wilson intervals:

- ``urgent_on_red_flag``: red-flag messages (``expected`` non-empty) whose answer begins with the
  urgent-care message (higher is better);
- ``alarm_on_benign``: messages without a red flag whose answer begins with it anyway (lower is better).

Generation is greedy and short (the urgent message is emitted before the model runs, so the model's
own text only has to exist). Writes ``results.json`` (task ``guarded_safety``) and
``predictions.jsonl`` when given an output directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medtune.config import GenerationSettings, SafetyConfig
from medtune.errors import EvalError
from medtune.eval.urgent import opens_with_urgent_care, pick_per_language, score, write_results
from medtune.generation import stream_chat
from medtune.models import load_chat_model
from medtune.safety.guard import CATEGORY_NAMES, URGENT, emergency_number, guarded_stream, urgent_message
from medtune.safety.labelled import LANGS, TEST_DIR, conversation, load_eval_set, test_files


def read_urgent(answer: str, cfg: SafetyConfig) -> list[str] | None:
    """The red-flag categories named by the urgent-care message that ``answer`` begins with, if any.

    The answer counts only when it starts with exactly ``urgent_message(categories, lang, number)``
    followed by a blank line, for one language's template, known category names and the emergency
    number ``cfg`` gives that language (:func:`medtune.safety.emergency_number`).

    Args:
        answer: the whole streamed answer text.
        cfg: the safety policy the answer was produced under.

    Returns:
        Category names in the message's order (e.g. ``["cardiac"]``), or None when the answer does not
        begin with an urgent-care message.
    """
    for lang in LANGS:
        head, rest = URGENT[lang].split("{what}")
        if not answer.startswith(head):
            continue
        end = answer.find(rest.split("{number}")[0], len(head))
        names = {name: cat for cat, name in CATEGORY_NAMES[lang].items()}
        cats = [names.get(n) for n in answer[len(head):end].split("、" if lang == "zh" else ", ")] if end > 0 else [None]
        if None not in cats and answer.startswith(urgent_message(cats, lang, emergency_number(lang, cfg)) + "\n\n"):
            return cats
    return None


def unguarded_answer(model, tokenizer, messages: list[dict], settings: GenerationSettings) -> str:
    """The model's own answer to ``messages``: no system prompt added, no screening, no prefix, no disclaimer."""
    return "".join(stream_chat(model, tokenizer, messages, settings))


def guarded_answer(model, tokenizer, messages: list[dict], cfg: SafetyConfig, settings: GenerationSettings) -> str:
    """The whole answer ``medtune chat`` would print for ``messages``: guard prefix, model text, disclaimer."""
    return "".join(guarded_stream(messages, cfg, lambda m: stream_chat(model, tokenizer, m, settings)))


def labelled_records(file: Path | None) -> tuple[str, list[dict]]:
    """``(data label, records)`` from ``file``, or from the test set files when ``file`` is None.

    Raises:
        EvalError: no file given and no test set in ``medtune/safety/data/test/``.
        medtune.errors.DataFileError: a malformed record (file, line and field named).
    """
    if file is not None:
        return str(file), load_eval_set(file)
    files = test_files()
    if not files:
        raise EvalError(f"no test set in {TEST_DIR} (test_*.jsonl); pass --file with a labelled JSONL set")
    return str(TEST_DIR), [rec for f in files for rec in load_eval_set(f)]


def run_guarded(model: str | None, file: Path | None = None, adapter: Path | None = None, out: Path | None = None,
                max_items: int | None = None, max_new_tokens: int = 16, classifier: bool = True,
                guard: bool = True, backend: str = "transformers") -> tuple[dict, list[dict]]:
    """Answer each labelled message through the chat path, and score the answers.

    With ``guard`` (default) the safety layer is on and an answer is urgent when it begins with the
    guard's urgent-care message (:func:`read_urgent`). With ``guard=False`` the model answers on its
    own, as an exported GGUF or another engine would serve it (no system prompt added, no screening),
    and an answer is urgent when it opens with urgent-care advice in the message's language
    (:func:`opens_with_urgent_care`): model-level safety (issue 27).

    Args:
        model: what ``medtune chat --model`` takes (pack name, model dir, hub id), or None with an adapter.
        file: labelled JSONL (id, lang, text | messages, expected); default the test set files.
        adapter: optional LoRA adapter on ``model`` (as ``medtune chat --adapter``).
        out: directory for ``results.json`` and ``predictions.jsonl``; None writes nothing.
        max_items: per language, at most this many red-flag and this many other messages.
        max_new_tokens: tokens the model generates after the guard's prefix (greedy decoding).
        classifier: run the learned classifier beside the rules (the default policy does).
        guard: False to measure the model without the safety layer.
        backend: ``transformers``, or ``llamacpp`` for a ``.gguf`` file run by llama.cpp (the engine of
            Ollama / LM Studio: quantized weights as exported, :func:`medtune.models.load_chat_model`).

    Returns:
        ``(results, predictions)``: results holds ``task``, ``model``, ``data``, ``n``, ``seconds`` (wall
        time of the answers, s) and :func:`score`'s ``by_lang`` / ``overall``; one prediction per message
        with ``id``, ``lang``, ``expected``, ``urgent``, ``categories`` (read from the answer) and ``answer``.

    Raises:
        EvalError: no labelled set to read. medtune.errors.DataFileError: a malformed record.
        medtune.errors.ModelError: the model cannot be resolved or loaded.
    """
    data, records = labelled_records(file)
    records = pick_per_language(records, max_items)
    cfg = SafetyConfig(classifier=classifier)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)  # set: not the model's sampling default
    lm, tokenizer = load_chat_model(model, adapter, backend=backend)
    start, rows = time.perf_counter(), []
    for rec in records:
        if guard:
            answer = guarded_answer(lm, tokenizer, conversation(rec), cfg, settings)
            cats = read_urgent(answer, cfg)
            urgent = cats is not None
        else:
            answer, cats = unguarded_answer(lm, tokenizer, conversation(rec), settings), None
            urgent = opens_with_urgent_care(answer, rec["lang"], cfg)
        rows.append({"id": rec["id"], "lang": rec["lang"], "expected": rec["expected"], "urgent": urgent,
                     "categories": cats or [], "answer": answer})
    result = {"task": "guarded_safety" if guard else "model_safety", "model": model or str(adapter),
              "adapter": str(adapter) if adapter else None, "guard": guard, "backend": backend,
              "data": data, "n": len(rows), "classifier": classifier if guard else None, "max_new_tokens": max_new_tokens,
              "max_items": max_items, "seconds": round(time.perf_counter() - start, 1), **score(rows)}
    if out is not None:
        write_results(out, result, rows)
    return result, rows


def print_guarded(result: dict, rows: list[dict], errors: bool = False, output: Path | None = None) -> None:
    """Print :func:`run_guarded`'s result as a table per language (and, with ``errors``, each miss and false alarm)."""
    what = "safety layer end to end" if result.get("guard", True) else "model alone, safety layer off"
    table = Table(title=f"{what}: {result['model']} on {result['data']} "
                        f"({result['n']} messages, {result['seconds']:.0f} s)")
    opener = "urgent answer" if result.get("guard", True) else "urgent-care opener"
    for col in ("lang", "red-flag", f"{opener} (95% CI)", "no red flag", "false alarm (95% CI)"):
        table.add_column(col)
    for lang, r in [*result["by_lang"].items(), ("all", result["overall"])]:
        u, a = r["urgent_on_red_flag"], r["alarm_on_benign"]
        table.add_row(lang, str(u["n"]), f"{u['rate']:.3f} ({u['ci95'][0]:.3f}-{u['ci95'][1]:.3f})",
                      str(a["n"]), f"{a['rate']:.3f} ({a['ci95'][0]:.3f}-{a['ci95'][1]:.3f})")
    Console().print(table)
    for r in rows if errors else ():
        if r["urgent"] != bool(r["expected"]):
            kind = "missed" if r["expected"] else "false alarm"
            Console().print(f"[{kind}] {r['id']}: expected {r['expected'] or 'none'}, answer {r['answer'][:80]!r}",
                            markup=False, soft_wrap=True)
    if output:
        Console().print(f"wrote {output / 'results.json'} and {output / 'predictions.jsonl'}", markup=False)
