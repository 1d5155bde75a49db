"""Typed configs of the evaluation commands and of the recipe's ``eval`` stage.

Each field's description is its ``--help`` text. Models are written ``[NAME=]SPEC`` (see
:mod:`medtune.eval.backends`): a pack, a model or adapter directory, a hub id, or
``http://host:port/v1#MODEL`` for an OpenAI-compatible endpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medtune.config import GenerationSettings, RagSettings, Section


class McqConfig(Section):
    """Multiple-choice benchmark evaluation (``medtune eval mcq``)."""

    data: Path = Field(..., description="Benchmark file (CSV/TSV/JSONL/JSON) in one of the published formats.")
    format: Literal["auto", "cmexam", "cmb", "kormedmcqa", "medqa", "medmcqa", "pubmedqa", "generic"] = Field(
        "auto", description="Benchmark format; auto detects it from the columns.")
    column_map: dict[str, str] = Field(default_factory=dict, description="generic format: field -> column, e.g. "
                                       "{question: stem, A: opt1, B: opt2, answer: key, subject: area}.")
    ground_truth: Path | None = Field(None, description="PubMedQA ground-truth JSON for the test-set form.")
    encodings: list[str] = Field(default_factory=list, description="Encodings tried per line, in order (mixed files: [utf-8, gb18030]); empty: detect (UTF-8, GB18030, CP949 ...).")
    cop_base: int | None = Field(None, ge=0, le=1, description="MedMCQA cop base: 1 original release, 0 HF copy; None detects.")
    model: str = Field(..., description="Model as [NAME=]SPEC: pack, directory, adapter dir, hub id or URL#MODEL.")
    adapter: Path | None = Field(None, description="LoRA adapter applied on `model`.")
    mode: Literal["auto", "loglik", "generate"] = Field("auto", description="loglik: next-token log-probability of "
                                                        "the option letters (local models); generate: parse the reply; auto: loglik for local models, generate for endpoints.")
    cot: bool = Field(False, description="generate mode: ask for step-by-step reasoning before 'Answer: X'.")
    calibrate: bool = Field(False, description="loglik mode: also report accuracy after content-free calibration (Zhao et al. 2021, 'Calibrate Before Use'): option-letter probabilities divided by those for an 'N/A' question and options, which removes a prior for one letter.")
    pride: bool = Field(False, description="loglik mode: also report accuracy after PriDe (Zheng et al. 2024, 'Large Language Models Are Not Robust Multiple Choice Selectors'): the prior over option letters is estimated by cycling the options of a few questions through every position, then divided out of every other question's letter probabilities.")
    pride_fraction: float = Field(0.05, gt=0, le=1, description="PriDe: share of the questions (per option-letter set, at least 5) used to estimate the prior; each costs one forward pass per option.")
    verdict: Literal["auto", "raw", "calibrated", "pride"] = Field("auto", description="Accuracy that base-vs-fine-tuned comparisons use; auto: PriDe when computed, else calibrated when computed, else raw.")
    shots: int = Field(0, ge=0, description="Number of solved examples shown before each question (k-shot).")
    shots_file: Path | None = Field(None, description="Where the k-shot examples come from (default: other items of `data`).")
    language: Literal["auto", "en", "zh", "ko"] = Field("auto", description="Language of the prompt instructions; auto follows the question's script.")
    batch_size: int = Field(8, ge=1, description="Questions per forward pass / generate call / concurrent endpoint batch.")
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N questions (smoke runs).")
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=16),
                                           description="Decoding settings of generate mode.")
    output_dir: Path = Field(Path("runs/eval/mcq"), description="Where results.json, predictions.jsonl, rejects.jsonl and manifest.json go.")
    seed: int = Field(42, description="Seed for k-shot sampling and sampled decoding.")
    overwrite: bool = Field(False, description="Discard predictions of a different earlier run in output_dir.")


class FactConfig(Section):
    """Knowledge-base fact recall (``medtune eval fact``)."""

    data: Path = Field(..., description="JSONL/JSON of {id, question, expected: [items], synonyms?: {item: [..]}}, or CSV/.xlsx with a question and an expected-items column.")
    synonyms: Path | None = Field(None, description="Optional JSON {item: [synonyms]} applied to every question.")
    entities: Path | None = Field(None, description="Knowledge base the facts were taught from (kb JSONL/JSON/CSV with a name field): an item in the asked entry's own text is never counted as bleed.")
    unanswerable: Path | None = Field(None, description="Questions the sources do not answer (rows with `question`), asked too: the share whose answer says the sources do not cover it is reported apart (with --index: RAG abstention).")
    encodings: list[str] = Field(default_factory=list, description="Encodings tried per line, in order (mixed files: [utf-8, gb18030]); empty: detect (UTF-8, GB18030, CP949 ...).")
    question_column: str | None = Field(None, description="Column holding the question (default: question, 问题, 질문 ...).")
    expected_column: str | None = Field(None, description="Column holding the expected items, a list or a string split on | ， 、 ; (default: expected, answer, 答案, 정답 ...).")
    model: str = Field(..., description="Model as [NAME=]SPEC (see `eval mcq`).")
    adapter: Path | None = Field(None, description="LoRA adapter applied on `model`.")
    system: str | None = Field(None, description="Optional system prompt.")
    batch_size: int = Field(32, ge=1, description="Questions per generate call (left-padded, greedy answers as one at a time). One call decodes every row at once, so the weights are read once per token for the whole batch, not once per question: the quickstart's 18 questions take 40 forward passes, not 200 at 4 per call (docs/benchmarks.md).")
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N questions.")
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=64))
    rag: RagSettings = Field(default_factory=RagSettings, description="With rag.index (--index DIR): each question is grounded in the index first (RAG); without: closed-book.")
    output_dir: Path = Field(Path("runs/eval/fact"), description="Where results.json, predictions.jsonl and manifest.json go.")
    seed: int = Field(42, description="Seed for sampled decoding.")
    overwrite: bool = Field(False, description="Discard predictions of a different earlier run in output_dir.")


class JudgeConfig(Section):
    """LLM-as-judge: rubric scores or order-swapped pairwise comparison (``medtune eval judge``)."""

    data: Path = Field(..., description="CSV/JSONL with a question column and answer column(s) (e.g. from `eval answers`).")
    mode: Literal["rubric", "pairwise"] = Field("rubric", description="rubric: 1-4 on accuracy, conciseness, "
                                                "understandability; pairwise: A vs B judged in both orders.")
    judge: str = Field(..., description="Judge model: URL#MODEL endpoint or a local model spec.")
    question_column: str = Field("prompt", description="Column holding the question.")
    answer_columns: list[str] = Field(..., description="rubric: answer column(s) to score; pairwise: exactly two (A, B).")
    reference_column: str | None = Field(None, description="Optional column with a reference answer shown to the judge.")
    language: Literal["auto", "en", "zh", "ko"] = Field("auto", description="Rubric prompt language; auto follows the question's script.")
    prompts_dir: Path | None = Field(None, description="Directory with replacement rubric_<lang>.txt / pairwise_<lang>.txt files.")
    temperature: float = Field(0.0, ge=0.0, description="Judge temperature; > 0 takes the median of `samples` judgements.")
    samples: int = Field(1, ge=1, description="Judgements per item when temperature > 0 (median score / majority verdict).")
    max_retries: int = Field(2, ge=0, description="Re-asks after an off-format judge reply before counting it invalid.")
    max_tokens: int = Field(256, ge=16, description="Judge reply length limit (tokens).")
    max_items: int | None = Field(None, ge=1, description="Judge only the first N rows.")
    output_dir: Path = Field(Path("runs/eval/judge"), description="Where results.json, judgements.jsonl and manifest.json go.")
    seed: int = Field(42, description="Seed sent to the judge (sample i uses seed + i).")
    overwrite: bool = Field(False, description="Discard judgements of a different earlier run in output_dir.")


class AnswersConfig(Section):
    """Answer a prompt file with several models (``medtune eval answers``)."""

    data: Path = Field(..., description="CSV/JSONL of prompts.")
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    models: list[str] = Field(..., description="Models as NAME=SPEC; each adds a <NAME>_answer column.")
    system: str | None = Field(None, description="Optional system prompt.")
    batch_size: int = Field(4, ge=1, description="Prompts per generate call.")
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=128))
    output: Path = Field(Path("runs/eval/answers.jsonl"), description="Output CSV/JSONL (same rows plus one column per model).")
    seed: int = Field(42, description="Seed for sampled decoding.")


class LmEvalConfig(Section):
    """lm-evaluation-harness tasks on a model medtune loads (``medtune eval lm-eval``)."""

    tasks: list[str] = Field(..., description="Harness task or group names (medqa_4options, kormedmcqa, mmlu_clinical_knowledge, cmmlu_clinical_knowledge ...; see docs/evaluation.md) or local task YAML files.")
    model: str = Field(..., description="Model as [NAME=]SPEC: pack, model directory, merged output or adapter directory (local models only).")
    adapter: Path | None = Field(None, description="LoRA adapter applied on `model`.")
    data: dict[str, Path] = Field(default_factory=dict, description="TASK=FILE: run a harness task on a local copy of its dataset (JSONL/JSON/CSV/Parquet with the dataset's own columns); the file is the task's evaluation split and its few-shot pool.")
    include_path: Path | None = Field(None, description="Folder of extra task YAMLs, as the harness's --include_path.")
    num_fewshot: int | None = Field(None, ge=0, description="Solved examples before each question; None: the task's own default.")
    apply_chat_template: bool = Field(True, description="Render prompts with the model's chat template, as medtune's own MCQ, chat and serving do; false gives the plain-text prompts of most published harness numbers.")
    system: str | None = Field(None, description="Optional system prompt (the harness's system_instruction).")
    batch_size: int = Field(8, ge=1, description="Requests per forward pass.")
    max_new_tokens: int | None = Field(None, ge=1, description="Generative tasks: at most this many new tokens per reply (the harness's max_gen_toks); None: the task's own setting.")
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N documents of each task (the harness's --limit; smoke runs).")
    offline: bool = Field(True, description="Never contact a hub: a task whose dataset is neither cached nor local fails with a message naming the dataset. False lets the harness download datasets.")
    bootstrap_iters: int = Field(1000, ge=0, description="Bootstrap resamples for the stderr of metrics without a closed form (0: none).")
    output_dir: Path = Field(Path("runs/eval/lm_eval"), description="Where <task>/results.json, <task>/predictions.jsonl and the harness's request cache go.")
    seed: int = Field(42, description="Seed of the harness (python, numpy, torch and few-shot sampling).")


class RubricConfig(Section):
    """Rubric-graded conversations in the HealthBench format (``medtune eval rubric``)."""

    data: Path = Field(..., description="JSONL of conversations: {prompt: [messages], rubrics: [{criterion, points, tags}], prompt_id?, example_tags?} (HealthBench format).")
    model: str | None = Field(None, description="Model that answers, as [NAME=]SPEC (see `eval mcq`); with `answers`: only the name used in the report.")
    adapter: Path | None = Field(None, description="LoRA adapter applied on `model`.")
    answers: Path | None = Field(None, description="Take the answers from this CSV/JSONL instead of generating them: an id column (prompt_id or id) and `answer_column`.")
    answer_column: str = Field("answer", description="Column of `answers` holding the answer text (e.g. base_answer from `eval answers`).")
    judge: str = Field(..., description="Grader model: URL#MODEL endpoint or a local model spec (as `eval judge --judge`).")
    system: str | None = Field(None, description="Optional system prompt for answering.")
    batch_size: int = Field(4, ge=1, description="Conversations per generate call.")
    max_items: int | None = Field(None, ge=1, description="Grade only the first N conversations.")
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=256), description="Decoding settings for answering.")
    prompts_dir: Path | None = Field(None, description="Directory with replacement rubric_item_<lang>.txt grader prompts ($conversation, $criterion).")
    max_retries: int = Field(2, ge=0, description="Re-asks after an off-format grader reply before counting the criterion invalid (not met).")
    max_tokens: int = Field(256, ge=16, description="Grader reply length limit (tokens).")
    judge_concurrency: int = Field(8, ge=1, description="Grader requests in flight at once (lower it for a grader served on a CPU).")
    judge_timeout_s: float = Field(120.0, gt=0, description="Seconds one grader request may take before it is retried.")
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples of conversations for the score's 95% interval.")
    output_dir: Path = Field(Path("runs/eval/rubric"), description="Where results.json, predictions.jsonl, rejects.jsonl and the grader cache go.")
    seed: int = Field(42, description="Seed for sampled decoding, the grader and the bootstrap.")
    overwrite: bool = Field(False, description="Discard graded conversations of a different earlier run in output_dir.")


class EvalConfig(Section):
    """Recipe ``eval`` stage: base vs fine-tuned (merged) model -- and the aligned model when the recipe has an
    ``align`` stage -- on MCQ, fact recall, held-out data, (with ``safety_file``) urgent care, (with
    ``lm_eval_tasks``) lm-evaluation-harness tasks and (with ``rubric_file``) rubric-graded conversations, then a report."""

    mcq_files: list[Path] = Field([Path("examples/eval/mcq_mixed.jsonl")], description="MCQ files (any supported format) scored by log-likelihood.")
    fact_file: Path | None = Field(Path("examples/eval/kb_facts.jsonl"), description="Fact-recall questions; None skips fact recall.")
    fact_question_column: str | None = Field(None, description="Column of fact_file holding the question (fact recall's `question_column`).")
    fact_expected_column: str | None = Field(None, description="Column of fact_file holding the expected items (fact recall's `expected_column`).")
    fact_unanswerable: Path | None = Field(None, description="Questions the sources do not answer, asked with the fact questions (fact recall's `unanswerable`).")
    fact_entities: Path | None = Field(None, description="Knowledge base the fact questions are about (fact recall's `entities`): its entries' own items are never bleed.")
    heldout: bool = Field(True, description="Score the train stage's held-out examples (validation_file or split) by answer log-likelihood.")
    max_fact_items: int | None = Field(4, ge=1, description="Fact-recall questions per model (generation is the slow part on CPU).")
    fact_generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=40))
    batch_size: int = Field(8, ge=1, description="Questions per forward pass.")
    mcq_calibrate: bool = Field(True, description="MCQ: also report accuracy after content-free calibration (Zhao et al. 2021).")
    mcq_pride: bool = Field(True, description="MCQ: also report accuracy after PriDe (Zheng et al. 2024; prior over option letters from cyclic permutations of a few questions).")
    mcq_verdict: Literal["auto", "raw", "calibrated", "pride"] = Field("auto", description="MCQ accuracy the base-vs-fine-tuned verdict uses; auto: PriDe when computed, else calibrated, else raw.")
    lm_eval_tasks: list[str] = Field([], description="lm-evaluation-harness tasks (names or local task YAMLs) run on each model (needs pip install 'medtune[lm-eval]'); [] skips them.")
    lm_eval_data: dict[str, Path] = Field({}, description="TASK=FILE: local copies of harness task datasets (see `eval lm-eval --data`).")
    lm_eval_max_items: int | None = Field(None, ge=1, description="Documents per harness task (the harness's limit).")
    rubric_file: Path | None = Field(None, description="Rubric-graded conversations (HealthBench format, e.g. examples/eval/rubric_health.jsonl) answered by each model; needs rubric_judge; None skips them.")
    rubric_judge: str | None = Field(None, description="Grader of the rubric criteria: URL#MODEL endpoint or a local model spec.")
    max_rubric_items: int | None = Field(None, ge=1, description="Rubric conversations per model.")
    rubric_generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=192))
    answers_per_language: int = Field(3, ge=0, description="Answers per evaluation and language shown side by side in the report's 'What the models said'.")
    safety_file: Path | None = Field(None, description="Red-flag-labelled messages (e.g. medtune/safety/data/dev/dev_en.jsonl): share answered with urgent care by the model itself, safety layer off (medtune.eval.urgent); None skips it.")
    max_safety_items: int | None = Field(12, ge=1, description="Red-flag messages, and as many without a red flag, answered per model.")
    safety_generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=48))

    rag_index: Path | None = Field(None, description="Also score fact recall with each question grounded in this index (closed-book vs RAG, both models); default: the recipe's rag index when it has a rag section.")
    rag_top_k: int = Field(3, ge=1, le=20, description="Passages per question in the RAG fact run.")
    rag_min_answer_support: float | None = Field(None, ge=0.0, le=1.0, description="RAG fact run: the answer-support check of chat / serve (RagSettings.min_answer_support); the reply's verdict, with medtune's notes, is reported beside the model's own.")
    rag_candidates: int = Field(1, ge=1, le=16, description="RAG fact run: answers per question, the one best supported by the passages kept (RagSettings.candidates, docs/rag.md); 1: as decoded. Raise rag_min_answer_support with it.")
    rag_judge: str | None = Field(None, description="Judge of citation precision of the RAG fact answers (URL#MODEL endpoint or a local model spec); None skips it.")


class RagEvalConfig(Section):
    """Retrieval quality of an index (``medtune eval rag``): recall@k and MRR on question -> passage pairs;
    with ``answers`` and ``judge``, citation precision of RAG answers (does the cited passage support the sentence?)."""

    data: Path | None = Field(None, description="JSONL of questions that know their source: a data build's train/validation.jsonl ({messages, meta: {passage_id | doc_id}}) or {question, passage_id | doc_id}; None: citation precision only.")
    index: Path | None = Field(None, description="Index directory built by `medtune index build` over the same sources (needed with data).")
    k: list[int] = Field([1, 3, 5, 10], description="Cut-offs for recall@k.")
    modes: list[Literal["hybrid", "lexical", "dense"]] = Field(["lexical", "dense", "hybrid"], description="Rankers to compare.")
    off_topic: Path | None = Field(None, description="Questions the sources do not cover (one per line or JSONL {question}), for calibrating min_score; default: the shipped zh/ko/en set.")
    target_coverage: float = Field(0.95, gt=0, le=1, description="Calibration: the suggested min_score keeps at least this share of answerable questions covered.")
    max_items: int | None = Field(None, ge=1, description="Evaluate only the first N questions (and judge only the first N answers).")
    answers: Path | None = Field(None, description="RAG answers whose citations the judge checks: predictions.jsonl of `medtune eval fact --index DIR` (rows with question, answer and citations = the passages shown).")
    judge: str | None = Field(None, description="Judge of citation precision: URL#MODEL endpoint or a local model spec (as `eval judge --judge`); needed with answers.")
    judge_max_retries: int = Field(2, ge=0, description="Re-asks after an off-format judge reply before counting it invalid.")
    judge_max_tokens: int = Field(128, ge=16, description="Judge reply length limit (tokens).")
    prompts_dir: Path | None = Field(None, description="Directory with replacement citation_<lang>.txt judge prompts ($question, $passage, $sentence).")
    seed: int = Field(42, description="Seed sent to the judge.")
    output_dir: Path = Field(Path("runs/eval/rag"), description="Where results.json and predictions.jsonl go.")
