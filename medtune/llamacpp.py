"""llama.cpp through llama-cpp-python (the optional ``medtune[gguf]`` extra): GGUF loading, decoding
for chat/serve/web, logits for the export parity check, and llama.cpp's own quantizer.

A loaded GGUF is handed around as ``(LlamaCppModel, GGUFTokenizer)``, the same pair shape as a
transformers model and tokenizer, so :func:`medtune.generation.render_prompt`, the safety layer
and the server's request handling run unchanged. The prompt is rendered with the chat template
stored in the GGUF (llama-cpp-python's ``Jinja2ChatFormatter``, which follows transformers'
Jinja settings) and tokenised without an added BOS, exactly as the transformers path does
(a template that wants a BOS writes it itself). Generation stops at every token llama.cpp marks
as end-of-generation (``llama_vocab_is_eog``: EOS, EOT and the known end-of-turn texts).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Iterator

from medtune.config import GenerationSettings
from medtune.errors import ModelError

GGUF_HINT = ("this needs llama-cpp-python: pip install 'medtune[gguf]' (it compiles llama.cpp: ~6 min on 2 CPU "
             "cores; prebuilt CPU wheels: pip install llama-cpp-python --extra-index-url "
             "https://abetlen.github.io/llama-cpp-python/whl/cpu)")
QUANT_FTYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def import_llama_cpp():
    """The ``llama_cpp`` module, or ModelError with the install hint."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(GGUF_HINT) from None
    return llama_cpp


def llama_cpp_version() -> str:
    """Installed llama-cpp-python version (raises ModelError with the install hint when absent)."""
    return import_llama_cpp().__version__


def threads() -> int:
    """llama.cpp threads: ``$MEDTUNE_LLAMA_THREADS``, else the thread count chosen for the process
    (:func:`medtune.threads.use_free_cores`: ``num_threads``, ``$MEDTUNE_THREADS``, or the cores free at start).
    More threads than free cores is far slower, not a little: ggml's threads wait for each other at every
    step (2 threads on a busy 2-core machine: 0.23 tokens/s, 1 thread: 2.2)."""
    from medtune.threads import chosen_threads

    own = os.environ.get("MEDTUNE_LLAMA_THREADS")
    return int(own) if own else chosen_threads()


def load_gguf(path: Path | str, n_ctx: int = 4096, logits_all: bool = False):
    """Open a ``.gguf`` file with llama.cpp on :func:`threads` CPU threads.

    Args:
        path: the GGUF file.
        n_ctx: context window in tokens (capped at the model's training context).
        logits_all: keep the logits of every evaluated position (needed for log-probabilities).

    Raises:
        ModelError: missing file, llama-cpp-python not installed, or llama.cpp cannot load it.
    """
    path = Path(path)
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelError(f"{path}: not a .gguf file (the llamacpp backend runs GGUF files; export one with "
                         "`medtune export MODEL --format gguf`)")
    llama = import_llama_cpp()
    trained = trained_context(path)
    try:
        return llama.Llama(model_path=str(path), n_ctx=min(n_ctx, trained) if trained > 0 else n_ctx,
                           logits_all=logits_all, verbose=False, n_threads=threads(), n_threads_batch=threads())
    except ValueError as e:
        raise ModelError(f"llama.cpp cannot load {path}: {e}") from None


def trained_context(path: Path) -> int:
    """The model's training context in tokens (``<arch>.context_length`` in the GGUF metadata; 0 if absent),
    read before llama.cpp is asked for a context, so a longer one is neither allocated nor warned about."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
    except (ValueError, IndexError, KeyError, OSError) as e:  # how the reader fails on a truncated or foreign file
        raise ModelError(f"llama.cpp cannot load {path}: not a readable GGUF file ({e.__class__.__name__}: {e})") from None
    arch = fields.get("general.architecture")
    length = fields.get(f"{arch.contents()}.context_length") if arch else None
    return int(length.contents()) if length else 0


def eog_ids(llm) -> list[int]:
    """Every token id llama.cpp treats as end-of-generation for this model."""
    llama = import_llama_cpp()
    vocab = llama.llama_model_get_vocab(llm.model)
    return [i for i in range(llm.n_vocab()) if llama.llama_vocab_is_eog(vocab, i)]


class GGUFTokenizer:
    """The slice of a transformers tokenizer that chat, serve and web use, backed by a GGUF's own
    tokenizer and chat template."""

    def __init__(self, llm):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llm
        self.chat_template = llm.metadata.get("tokenizer.chat_template")
        if not self.chat_template:
            raise ModelError("the GGUF file has no tokenizer.chat_template; re-export it with `medtune export`")
        text = lambda i: llm.detokenize([i], special=True).decode("utf-8", "replace") if i >= 0 else ""  # noqa: E731
        self.eos_token_id = llm.token_eos()
        self.eos_token, self.bos_token = text(self.eos_token_id), text(llm.token_bos())
        self.pad_token_id = self.eos_token_id
        self._formatters = {g: Jinja2ChatFormatter(self.chat_template, self.eos_token, self.bos_token, add_generation_prompt=g)
                            for g in (True, False)}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        text = self._formatters[add_generation_prompt](messages=messages).prompt
        return self(text)["input_ids"] if tokenize else text

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", "replace")


class LlamaCppModel:
    """A GGUF model for chat/serve/web: one sequence at a time, streaming token ids."""

    backend = "llamacpp"
    generation_config = None  # decoding defaults: medtune's (the GGUF carries none)

    def __init__(self, llm, path: Path):
        self.llm, self.path = llm, Path(path)
        self.stop_ids = eog_ids(llm)

    def eval(self):
        return self

    def stream_tokens(self, prompt_ids: list[int], settings: GenerationSettings) -> Iterator[int]:
        """Generated token ids after ``prompt_ids`` (greedy when temperature is 0), ending with the
        end-of-generation token or after ``settings.max_new_tokens``.

        The repetition penalty is llama.cpp's (over the last 64 tokens), not transformers' (over the
        whole context); both are off at 1.0.
        """
        if settings.seed is not None:
            self.llm.set_seed(settings.seed % 2**32)
        greedy = settings.temperature == 0
        gen = self.llm.generate(prompt_ids, temp=settings.temperature, top_p=1.0 if greedy else settings.top_p,
                                top_k=0, min_p=0.0, repeat_penalty=settings.repetition_penalty)
        for n, token in enumerate(gen, 1):
            yield token
            if token in self.stop_ids or n >= settings.max_new_tokens:
                return


def load_gguf_chat(path: Path | str, n_ctx: int = 4096) -> tuple[LlamaCppModel, GGUFTokenizer]:
    """``(model, tokenizer)`` of a GGUF file for chat, serve and web.

    Raises:
        ModelError: see :func:`load_gguf`; or the file has no chat template.
    """
    llm = load_gguf(path, n_ctx=n_ctx)
    return LlamaCppModel(llm, Path(path)), GGUFTokenizer(llm)


def quantize(src: Path, dst: Path, level: str, tensor_types: dict[str, str] | None = None) -> Path:
    """Quantize a GGUF file with llama.cpp's own quantizer (``llama_model_quantize``).

    Args:
        src: an f16 (or f32) GGUF file.
        dst: output file.
        level: ``q8_0`` or ``q4_k_m`` (tensors whose rows do not fit a k-quant block fall back to
            llama.cpp's own choice).
        tensor_types: per-tensor type overrides, ``{regex on tensor names: ggml type name}`` (e.g.
            ``{"ffn_up\\.weight": "iq4_nl"}``; llama-quantize's ``--tensor-type``); None: llama.cpp's mixture.

    Raises:
        ModelError: llama-cpp-python missing, or llama.cpp reports a failure.
    """
    import tempfile

    llama = import_llama_cpp()
    params = llama.llama_model_quantize_default_params()
    params.ftype = getattr(llama, QUANT_FTYPES[level])
    params.nthread = os.cpu_count() or 1
    if tensor_types:
        overrides = (llama.llama_model_tensor_override * (len(tensor_types) + 1))()  # the last stays NULL: the end
        patterns = [pattern.encode() for pattern in tensor_types]  # kept alive until the call returns
        for entry, pattern, typ in zip(overrides, patterns, tensor_types.values()):
            entry.pattern, entry.type = pattern, getattr(llama, "GGML_TYPE_" + typ.upper())
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama.llama_model_tensor_override))
    with tempfile.TemporaryFile() as log:  # llama.cpp logs every tensor to stderr; shown only on failure
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            rc = llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    if rc != 0 or not dst.is_file():
        raise ModelError(f"llama.cpp could not quantize {src} to {level} (code {rc}):\n{text[-1500:]}")
    return dst
