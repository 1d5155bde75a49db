"""The ``data:`` section of a recipe: sources, generators, teacher, filters and output.

Example::

    data:
      sources:
        - {path: examples/sources/kb/drugs.jsonl, type: kb}
        - {path: examples/sources/guidelines, type: guideline, max_items: 2, questions_per_item: 1}
        - {path: examples/sources/reports, type: report, sensitive: true, generator: none}
      teacher: {base_url: null}           # null: the local offline pack in process
      filters: {decontam_files: [examples/benchmark_questions.jsonl]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medtune.llm import LLMConfig

GENERATORS = ("kb-template", "guideline-qa", "report-qa", "safety-pairs", "safety-sft", "pairwise-judge", "rag-qa", "none")
DEFAULT_GENERATOR = {"kb": "kb-template", "guideline": "guideline-qa", "report": "report-qa",
                     "qa_tree": "none", "corpus": "none", "labelled": "safety-pairs"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KbAugmentConfig(_Section):
    """Knowledge views of a kb source: each fact (entry x field) in many question phrasings, answer
    statements and item orders, asked in both directions, and several entries in one answer.

    Allen-Zhu & Li 2023, "Physics of Language Models: Part 3.1, Knowledge Storage and Extraction"
    (a fact seen in many phrasings and orders becomes extractable under new questions); Berglund et al.
    2023, "The Reversal Curse" (A -> B training does not teach B -> A, so both directions are written).
    Phrasings: ``medtune/data/kb_views.yaml`` (or ``data.view_templates``)."""

    views: int = Field(8, ge=1, description="Question/answer views per fact (entry x field): question phrasings (templates, then teacher paraphrases), answer statements and item orders, each drawn without repeats while they last.")
    reverse: bool = Field(True, description="Also ask each list item back (item -> the entries of this source, same language and field, that list it) where the field has reverse phrasings.")
    reverse_views: int = Field(1, ge=1, description="Phrasings per reversed item.")
    passages: int = Field(1, ge=0, description="Multi-fact answers each entry appears in: passage_size entries of the same source, language and field answered together (0: none).")
    passage_size: int = Field(3, ge=2, description="Entries per multi-fact answer.")
    teacher_questions: int = Field(0, ge=0, description="Extra question phrasings per fact written by the teacher (data.teacher, one call per fact, cached); 0: templates only.")
    fields: list[str] | None = Field(None, description="Fields to augment (default: every field with a kb template label).")


class SourceConfig(_Section):
    """One source: what it is, how to read it and which generator turns it into QA pairs."""

    path: Path = Field(..., description="File or directory (read recursively).")
    type: Literal["guideline", "kb", "report", "qa_tree", "corpus", "labelled"] = Field(..., description="guideline | kb | report | qa_tree | corpus | labelled (red-flag-labelled messages, medtune/safety/data/LABELS.md).")
    generator: Literal["kb-template", "guideline-qa", "report-qa", "safety-pairs", "safety-sft", "pairwise-judge", "rag-qa", "none"] | None = Field(
        None, description="kb-template | guideline-qa | report-qa | safety-pairs (labelled -> preference pairs in pairs.jsonl) | safety-sft (labelled -> SFT examples: urgent-care opener for red flags, a calm answer otherwise) | pairwise-judge (corpus / qa_tree / labelled prompts -> sampled answers judged in both orders -> preference pairs in pairs.jsonl; settings in data.pairwise_judge) | rag-qa (guideline/kb: their QA with retrieved passages, distractors and not-covered cases in the prompt) | none (QA records pass through); default by type.")
    encoding: str | None = Field(None, description="Force an encoding (utf-8, gb18030, cp949 ...); default: detect.")
    sensitive: bool = Field(False, description="Only a local teacher (in process or loopback) may see this source.")
    language: str | None = Field(None, description="Force the language tag (zh, ko, en); default: detect per record.")
    columns: dict[str, str] | None = Field(None, description="corpus: map question/answer/system to column names, e.g. {question: 问题, answer: 回答}; kb: map template fields to a table's columns, e.g. {indications: 医学专家标注的适应病症}.")
    item_separator: str | None = Field(None, description="kb: split string values holding this separator into item lists (e.g. '|' for a cell 高血压|心绞痛).")
    name_field: str | None = Field(None, description="kb: the field holding the entry name (default: name, title, 名称 ...).")
    question_field: str = Field("question", description="qa_tree: field of the question JSON files.")
    answer_field: str = Field("answer", description="qa_tree: field of the answer JSON files (string, list or {intro, body, conclusion}).")
    max_chars: int = Field(800, ge=50, description="guideline: maximum passage length in characters.")
    overlap_chars: int = Field(100, ge=0, description="guideline: overlap between windows of a long paragraph, in characters.")
    max_file_mb: float = Field(100.0, gt=0, description="guideline / kb documents: refuse a file larger than this (MB), and a .docx/.hwpx whose zip directory declares more uncompressed (zip bomb).")
    max_items: int | None = Field(None, ge=1, description="Use only the first N passages / reports / entries (caps teacher calls).")
    validation: bool = Field(True, description="False keeps all of this source's records in training, out of the validation split (e.g. the KB whose facts an evaluation asks about in other words).")
    questions_per_item: int = Field(2, ge=1, description="guideline-qa / report-qa: questions asked per passage or report.")
    augment: KbAugmentConfig | None = Field(None, description="kb: knowledge views (many phrasings, both directions, multi-fact answers; see KbAugmentConfig) instead of data.paraphrases template questions per field.")
    multi_turn: bool = Field(False, description="guideline-qa / report-qa: join the kept pairs of one passage or report into one multi-turn conversation whose first user turn carries the source text (a chat that keeps the report in context, as Ko-Radiology-GPT trained).")


class DialogueConfig(_Section):
    """Self-instruct scenario tasks from seed tasks (Wang et al. 2023, "Self-Instruct"; BELLE)."""

    seed_file: Path = Field(..., description="Seed tasks, JSONL or a JSON array: {instruction, input?, output?, category?}.")
    rounds: int = Field(1, ge=1, description="LLMClient calls that propose new tasks.")
    tasks_per_round: int = Field(4, ge=1, description="New tasks asked for per call.")
    examples_per_prompt: int = Field(3, ge=1, description="Seed / kept tasks shown as examples per call (k).")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="Keep a new task only if its ROUGE-L to every kept task is below this.")
    consultations: int = Field(0, ge=0, description="Also write this many multi-turn doctor-patient consultations from kept tasks.")
    language: str = Field("auto", description="Language of the prompts and tasks: auto (the seeds' most common language), en, zh (shipped) or one with dialogue_tasks.txt / dialogue_answer.txt under prompts_dir/<language>/.")


class PairwiseJudgeConfig(_Section):
    """``pairwise-judge`` preference pairs: answers sampled from a model, every two judged in both orders and
    kept only when the two verdicts agree (Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and
    Chatbot Arena"). When sampler and judge name the same model on the same backend one client serves both
    (the sampler's limits), so a local model is loaded once."""

    sampler: LLMConfig = Field(default_factory=lambda: LLMConfig(temperature=0.8, top_p=0.95, max_tokens=128),
                               description="Model that writes the answers (default: the local offline pack in process, temperature 0.8, top_p 0.95, 128 tokens); its seed (default: the data seed) is the seed of sample 0, sample i uses seed + i.")
    samples: int = Field(2, ge=2, description="Answers sampled per prompt; each of the samples*(samples-1)/2 pairs is judged in both orders.")
    judge: LLMConfig = Field(default_factory=lambda: LLMConfig(max_tokens=128), description="Judge model (default: the local offline pack, greedy); an OpenAI-compatible endpoint for a stronger judge.")
    judge_samples: int = Field(1, ge=1, description="Judgements per order (majority verdict); > 1 only helps with judge.temperature > 0.")
    max_retries: int = Field(2, ge=0, description="Re-asks after an off-format judge reply before the pair is dropped as invalid.")
    reference: bool = Field(True, description="Show the source record's own answer (when it has one) to the judge as the expert reference.")
    prompts_dir: Path | None = Field(None, description="Folder with replacement pairwise_<lang>.txt judge prompts (shipped: medtune/judge_prompts).")


class FilterConfig(_Section):
    """Filters applied to every QA record, in this order: answer, length, language, PHI, exact, near-dup, decontam."""

    min_chars: int = Field(2, ge=0, description="Minimum question and answer length in characters.")
    max_chars: int = Field(6000, ge=1, description="Maximum question and answer length in characters.")
    language_check: bool = Field(True, description="Drop records whose answer language differs from the record's language.")
    phi: bool = Field(True, description="Replace PHI/PII with [PHONE] [ID] [EMAIL] [DATE] [NAME].")
    phi_types: list[str] = Field(["EMAIL", "ID", "PHONE", "DATE", "NAME"], description="Placeholder types to apply.")
    mrn_patterns: list[str] | None = Field(None, description="Regexes for medical record numbers (group 1 becomes [ID]); default: MRN/病历号/등록번호 labels.")
    near_dup_threshold: float | None = Field(0.7, gt=0, le=1, description="MinHash-LSH Jaccard threshold on 5-character shingles; null disables near-dup removal. 0.7 caught 98% of planted near-duplicates (Jaccard 0.85-0.9) with no false positive in bench/data_pipeline.py; 0.8 caught 85%.")
    shingle_chars: int = Field(5, ge=1, description="Character n-gram length of near-dup shingles.")
    num_perm: int = Field(64, ge=16, description="MinHash permutations.")
    decontam_files: list[Path] = Field(default_factory=list, description="Benchmark question files (.jsonl/.json/.txt) to decontaminate against.")
    decontam_word_ngram: int = Field(13, ge=3, description="n in words for space-delimited benchmark questions.")
    decontam_char_ngram: int = Field(15, ge=5, description="n in characters for Chinese/Korean benchmark questions.")


class DataConfig(_Section):
    """Build instruction data from sources (``medtune data build``; the ``data`` stage of ``medtune run``)."""

    sources: list[SourceConfig] = Field(default_factory=list, description="Sources to read (see SourceConfig).")
    output_dir: Path | None = Field(None, description="Where train/validation JSONL, stats.json and the data card go; default <recipe output_dir>/data.")
    teacher: LLMConfig = Field(default_factory=LLMConfig, description="LLM for the generators (default: local offline pack).")
    templates: Path | None = Field(None, description="kb-template YAML (default: medtune/data/kb_templates.yaml).")
    prompts_dir: Path | None = Field(None, description="Folder with <language>/<name>.txt prompt templates overriding the shipped ones.")
    view_templates: Path | None = Field(None, description="Phrasings of the kb knowledge views (default: medtune/data/kb_views.yaml; used by sources with augment).")
    paraphrases: int = Field(2, ge=1, description="kb-template: question paraphrases used per field.")
    rag_passages: int = Field(3, ge=1, le=20, description="rag-qa: passages in each prompt, numbered [1]..[k] (use the top_k of chat/serve/web).")
    rag_not_covered: float = Field(0.2, ge=0.0, le=1.0, description="rag-qa: share of examples whose gold passage is removed; their answer says the guideline does not cover the question.")
    judge: bool = Field(False, description="guideline-qa / report-qa: ask the teacher whether each answer is supported; drop unsupported.")
    min_answer_support: float = Field(0.0, ge=0.0, le=1.0, description="guideline-qa / report-qa: drop a teacher answer when less than this share of its content units (words and numbers; CJK/Hangul character bigrams) occurs in its passage or report (medtune.text.answer_support: an offline wording check; 'Yes' or an invented claim scores low). 0: off. A small local teacher writes many unsupported answers: 0.5 keeps those written from the text.")
    dialogue: DialogueConfig | None = Field(None, description="Self-instruct scenario dialogues (absent: not generated).")
    pairwise_judge: PairwiseJudgeConfig = Field(default_factory=PairwiseJudgeConfig, description="Sampler and judge of the pairwise-judge generator (used only by sources with generator: pairwise-judge).")
    translate_to: str | None = Field(None, description="Also translate generated pairs into this language (zh, ko, en) with the teacher.")
    translate_max: int = Field(10, ge=1, description="Translate at most this many pairs.")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.9, description="Share of source documents whose records go to validation.jsonl.")
    format: Literal["messages", "alpaca"] = Field("messages", description="Output form: messages (with meta) or Alpaca instruction/input/output (with meta).")
    seed: int | None = Field(None, description="Seed for templates, sampling and the split; default the recipe seed.")
    strict: bool = Field(False, description="Fail the build when the audit finds model-format tokens or questions that refer to a document absent from the prompt (outputs are still written for inspection).")
