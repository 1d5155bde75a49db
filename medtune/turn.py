"""One conversational turn, the same in chat, serve and web: screen → ground → generate → stream.

Every front end prepares a turn with :func:`prepare_turn` and streams the answer with
:func:`stream_turn`; they only adapt input and output. The order is fixed:

1. the guard (:func:`medtune.safety.guard`) adds the default system prompt, screens the
   conversation for red flags and sets the urgent-care prefix and the disclaimer;
2. with a retrieval index (``RagSettings.index``), :func:`medtune.retrieval.ground` puts the top
   passages into the system turn and lists them as ``citations``; when nothing relevant is found a
   note ("the guideline does not cover this") follows the urgent message;
3. the model's text is streamed between the prefix and the suffix (:func:`stream_turn`, or
   :func:`astream_turn` for an async source such as the gateway's upstream stream). When the model
   text comes from a server that runs this pipeline itself (``medtune web --endpoint`` or a gateway
   in front of ``medtune serve``), :class:`Unrepeat` drops its copy of the prefix and suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

from medtune.config import RagSettings, SafetyConfig
from medtune.retrieval import best_supported, ground, open_index, unsupported_note
from medtune.safety import guard


@dataclass
class Turn:
    """What surrounds one answer.

    Attributes:
        messages: the conversation to generate from (system prompt and retrieved passages added).
        lang: language of the last user message.
        flags: red-flag categories found (empty when none).
        layer: which safety layer raised the flags ("rules", "classifier", "rules+classifier", "").
        score: the classifier's P(emergency), None when it did not run.
        prefix: text that must come before any model text (urgent-care message, retrieval note).
        suffix: disclaimer after the model text ("" per policy).
        citations: retrieved passages ``[{marker, source_file, passage_id, ...}]``; None without an index.
        min_answer_support: ``RagSettings.min_answer_support`` (None: answers are not checked against the passages).
        candidates: ``RagSettings.candidates``: answers generated when passages are shown, the best supported
            kept (:func:`medtune.retrieval.best_supported`); 1: the answer as it streams.
    """

    messages: list[dict]
    lang: str
    flags: list[str]
    layer: str
    score: float | None
    prefix: str
    suffix: str
    citations: list[dict] | None = None
    min_answer_support: float | None = None
    candidates: int = 1

    def closing(self, answer: str) -> str:
        """What follows the model's ``answer``: the note that the passages shown do not support it
        (:func:`medtune.retrieval.unsupported_note`, with ``min_answer_support``), then the suffix."""
        return unsupported_note(answer, self.citations, self.min_answer_support, self.lang) + self.suffix


def prepare_turn(messages: list[dict], safety: SafetyConfig, locale: str | None = None,
                 rag: RagSettings | None = None) -> Turn:
    """Screen a conversation and, with ``rag.index``, ground it in retrieved passages.

    Args:
        messages: ``[{"role", "content"}, ...]`` ending with a user turn (not modified).
        safety: the safety policy.
        locale: the user's locale for this request (e.g. ``en-GB``), see :func:`medtune.safety.guard`.
        rag: retrieval settings (index directory, ``top_k``, ``mode``, ``min_score``); None or no
            index: no retrieval.

    Returns:
        A :class:`Turn`.

    Raises:
        ValueError: an unknown ``locale``.
        MedtuneError: the index cannot be opened (see :func:`medtune.retrieval.open_index`).
    """
    g = guard(messages, safety, locale)
    turn = Turn(messages=g.messages, lang=g.lang, flags=g.flags, layer=g.layer, score=g.score,
                prefix=g.prefix, suffix=g.suffix)
    if rag is not None and rag.index is not None:
        found = ground(turn.messages, open_index(rag.index), rag.top_k, rag.mode, rag.min_score, g.lang)
        turn.messages, turn.citations = found.messages, found.citations
        turn.min_answer_support, turn.candidates = rag.min_answer_support, rag.candidates
        turn.prefix += found.note + "\n\n" if found.note else ""
    return turn


def stream_turn(turn: Turn, generate: Callable[[list[dict]], Iterator[str]]) -> Iterator[str]:
    """Stream an answer: the turn's prefix first, then the model's pieces, then :meth:`Turn.closing`.

    Args:
        turn: from :func:`prepare_turn`.
        generate: function from messages to text pieces (e.g. a partial of
            :func:`medtune.generation.stream_chat`, or an endpoint's stream).

    Yields:
        Text pieces; the first is the urgent-care message when a red flag was found. With passages shown
        and ``turn.candidates`` > 1, ``generate`` is called that many times (it should sample) and the
        best-supported answer comes as one piece.
    """
    if turn.prefix:
        yield turn.prefix
    if turn.candidates > 1 and turn.citations:
        question = next((m.get("content") or "" for m in reversed(turn.messages) if m.get("role") == "user"), "")
        answers = ["".join(generate(turn.messages)) for _ in range(turn.candidates)]
        answer = [answers[best_supported(answers, question, turn.citations)]]
        yield answer[0]
    else:
        answer = []
        for piece in generate(turn.messages):
            answer.append(piece)
            yield piece
    if closing := turn.closing("".join(answer)):
        yield closing


async def astream_turn(turn: Turn, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    """:func:`stream_turn` for an async source of model text (the gateway's upstream stream).

    Args:
        turn: from :func:`prepare_turn`.
        pieces: the model's text pieces for ``turn.messages``.

    Yields:
        Text pieces: the prefix, the model's pieces, the closing (:meth:`Turn.closing`).
    """
    if turn.prefix:
        yield turn.prefix
    answer = []
    async for piece in pieces:
        answer.append(piece)
        yield piece
    if closing := turn.closing("".join(answer)):
        yield closing


class Unrepeat:
    """Drop a leading ``prefix`` and trailing ``suffix`` from streamed text when the source added them too.

    Feed pieces with :meth:`feed` and call :meth:`end` once; the text out is the text in, less a
    copy of ``prefix`` at its start and of ``suffix`` at its end. While streaming, only text that
    may still be the prefix, or the start of the suffix, is held back; the rest passes at once.
    """

    def __init__(self, prefix: str, suffix: str):
        self.prefix, self.suffix = prefix, suffix
        self.head, self.tail, self.started = "", "", not prefix

    def feed(self, piece: str) -> str:
        """The part of the text so far that can be passed on now ("" while held back)."""
        if not self.started:
            self.head += piece
            if len(self.head) < len(self.prefix) and self.prefix.startswith(self.head):
                return ""
            piece, self.started = self.head.removeprefix(self.prefix), True
        self.tail += piece
        keep = next((k for k in range(min(len(self.tail), len(self.suffix)), 0, -1)
                     if self.tail.endswith(self.suffix[:k])), 0)
        out, self.tail = self.tail[: len(self.tail) - keep], self.tail[len(self.tail) - keep:]
        return out

    def end(self) -> str:
        """What was held back, less the suffix when the source ended with it."""
        rest = (self.head if not self.started else "") + self.tail
        return rest.removesuffix(self.suffix) if self.suffix else rest
