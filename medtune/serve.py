"""OpenAI-compatible HTTP server: ``medtune serve``.

Endpoints (OpenAI API reference, "Chat Completions" and "Models"):

- ``POST /v1/chat/completions`` with ``model``, ``messages``, ``temperature``, ``top_p``,
  ``max_tokens`` (or ``max_completion_tokens``), ``stop``, ``seed``, ``stream``
  (``stream_options.include_usage`` too); streaming answers are Server-Sent Events of
  ``chat.completion.chunk`` objects ending with ``data: [DONE]``.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text format 0.0.4; behind the
  API key unless ``metrics_public``). ``/docs`` and ``/openapi.json`` only with ``docs: true``.

Every answer goes through the turn pipeline (:func:`medtune.turn.prepare_turn`: safety layer, retrieval): the urgent-care
message is the first content of the answer, the disclaimer the last. With ``rag.index`` the top
passages of the index go into the prompt numbered [1], [2] ... and the reply message carries an
extra ``citations`` list (source file, passage id, char span, score, text); a streamed reply
carries it on the first chunk's ``delta``. Bad requests get 400 (401
without the right API key, 404 for an unknown model, 429 when the queue is full) with an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``; never a bare 500.
Request content cannot cause a 5xx: bodies over ``max_body_bytes`` get 413, invalid Unicode and
out-of-range seeds 400, and an internal failure answers a 500 body without its exception text
while the connection stays open. Parsing, the context-length check and the red-flag scan run in a
worker thread, so one large request does not stall ``/health`` for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from medtune.config import GenerationSettings, ServeConfig
from medtune.engine import Engine, Job, load_engine
from medtune.generation import model_settings
from medtune.openai_http import (APIError, ChatRequest, Metrics, api_key, base_app, chunk, configure_access_log,
                                 parse_chat_request, read_body)
from medtune.turn import Turn, prepare_turn

try:
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("medtune serve needs the serve extra: pip install 'medtune[serve]'") from e

__all__ = ["APIError", "ChatRequest", "api_key", "create_app", "parse_request", "serve", "served_names"]
log = logging.getLogger("medtune.serve")


def engine_metrics(engine: Engine) -> list[str]:
    """Prometheus lines of the engine: queue depth and batches."""
    return ["# TYPE medtune_queue_depth gauge", f"medtune_queue_depth {engine.queue_depth()}",
            "# TYPE medtune_batches_total counter", f"medtune_batches_total {engine.batches}",
            "# TYPE medtune_batched_requests_total counter", f"medtune_batched_requests_total {engine.batched_jobs}"]


def served_names(cfg: ServeConfig) -> list[str]:
    """Model ids listed by ``/v1/models``: the base model (as given) and each adapter name."""
    return [str(cfg.model)] + list(cfg.adapters)


def parse_request(raw: bytes, cfg: ServeConfig, engine: Engine) -> tuple[ChatRequest, Job, Turn]:
    """Validate a request body and turn it into an engine :class:`Job` (callbacks not yet set) and the
    :class:`~medtune.turn.Turn` whose prefix/suffix wrap the answer (and whose citations it lists).

    Raises:
        APIError: 400 for malformed JSON, bad fields, wrong roles, unsupported features or a
            prompt + ``max_tokens`` longer than the context; 404 for an unknown model.
    """
    req = parse_chat_request(raw, served_names(cfg))
    return (req, *_job(req, cfg, engine))


def _job(req: ChatRequest, cfg: ServeConfig, engine: Engine) -> tuple[Job, Turn]:
    messages = [m.model_dump() for m in req.messages]
    # system prompt + disclaimer only: the red-flag scan waits until the cheap checks have passed
    g = prepare_turn(messages, cfg.safety.model_copy(update={"enabled": False}), req.medtune_locale, cfg.rag)
    d = model_settings(engine.model, cfg.generation)  # the model's own sampling defaults where unset
    prompt_ids = engine.prompt_ids(g.messages)
    room = engine.context_length - len(prompt_ids)
    wanted = req.max_completion_tokens or req.max_tokens
    if room < 1 or (wanted is not None and wanted > room):
        raise APIError(400, f"this model's context is {engine.context_length} tokens; the prompt has "
                            f"{len(prompt_ids)} and max_tokens asks for {wanted or 1} more", param="messages",
                       code="context_length_exceeded")
    if cfg.safety.enabled:
        g = prepare_turn(messages, cfg.safety, req.medtune_locale, cfg.rag)
    settings = GenerationSettings(
        temperature=d.temperature if req.temperature is None else req.temperature,
        top_p=d.top_p if req.top_p is None else req.top_p,
        max_new_tokens=wanted or min(d.max_new_tokens, room), repetition_penalty=d.repetition_penalty,
        seed=req.seed if req.seed is not None else d.seed)
    job = Job(g.messages, settings, adapter=None if req.model == str(cfg.model) else req.model,
              stop=req.stops(), prompt_ids=prompt_ids)
    return job, g


def create_app(cfg: ServeConfig, engine: Engine):
    """The FastAPI application serving ``engine`` with the settings in ``cfg``."""
    metrics = Metrics()
    app = base_app(cfg, metrics)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queue_depth": engine.queue_depth()}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(engine_metrics(engine)), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "medtune"}
                                           for n in served_names(cfg)]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await read_body(request, cfg.max_body_bytes)
        req, job, g = await asyncio.to_thread(parse_request, raw, cfg, engine)
        if engine.queue_depth() >= cfg.max_queue:
            raise APIError(429, "server busy: too many queued requests, retry later", type_="rate_limit_error")
        events = _attach_queue(job)
        engine.submit(job)
        metrics.prompt_tokens += len(job.prompt_ids)
        meta = dict(id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=req.model)
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(job, g, events, meta, usage, metrics), media_type="text/event-stream")
        return await _complete(request, job, g, events, meta, metrics)

    metrics.paths = {route.path for route in app.routes}
    return app


def _attach_queue(job: Job) -> asyncio.Queue:
    """Route the job's worker-thread callbacks into an asyncio queue of ("text", str) / ("done", reason, error)."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job.on_text = lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text))
    job.on_done = lambda reason, error: loop.call_soon_threadsafe(events.put_nowait, ("done", reason, error))
    return events


def _usage(job: Job) -> dict:
    n = len(job.tokens)
    return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": n, "total_tokens": len(job.prompt_ids) + n}


async def _complete(request, job: Job, g: Turn, events: asyncio.Queue, meta: dict, metrics: Metrics):
    """Wait for the whole answer (cancelling the job if the client goes away) and return one JSON object."""
    pieces = [g.prefix]
    while True:
        try:
            event = await asyncio.wait_for(events.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
            continue
        if event[0] == "text":
            pieces.append(event[1])
            continue
        _, reason, error = event
        if error is not None:
            log.error("generation failed: %r", error)
            raise APIError(500, "generation failed", type_="server_error")
        break
    metrics.completion_tokens += len(job.tokens)
    text = "".join(pieces)
    text += g.closing(text.removeprefix(g.prefix))
    message = {"role": "assistant", "content": text}
    if g.citations is not None:
        message["citations"] = g.citations  # extra field: clients that do not know it ignore it
    return JSONResponse({**meta, "object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": reason}],
        "usage": _usage(job)})


async def _sse(job: Job, g: Turn, events: asyncio.Queue, meta: dict, include_usage: bool, metrics: Metrics):
    """Server-Sent Events in OpenAI's chunk format; a client that goes away cancels the job (frees its row)."""
    try:
        first = {"role": "assistant", "content": ""}
        if g.citations is not None:
            first["citations"] = g.citations
        yield chunk(meta, first)
        if g.prefix:
            yield chunk(meta, {"content": g.prefix})
        answer = []
        while True:
            event = await events.get()
            if event[0] == "text":
                answer.append(event[1])
                yield chunk(meta, {"content": event[1]})
                continue
            _, reason, error = event
            if error is not None:
                log.error("generation failed: %r", error)
                yield APIError(500, "generation failed", type_="server_error").event()
                break
            if closing := g.closing("".join(answer)):
                yield chunk(meta, {"content": closing})
            yield chunk(meta, {}, finish=reason)
            if include_usage:
                yield chunk(meta, {}, usage=_usage(job))
            break
        metrics.completion_tokens += len(job.tokens)
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # no-op when finished; frees the batch row when the client disconnected


def serve(cfg: ServeConfig) -> None:
    """Load the model and run the server until interrupted (uvicorn on ``cfg.host:cfg.port``).

    Raises:
        ModelError: the model or an adapter cannot be loaded, or vllm is not installed.
    """
    import uvicorn
    from rich.console import Console

    configure_access_log(cfg.access_log)
    engine = load_engine(cfg)
    names = ", ".join(served_names(cfg))
    Console(stderr=True).print(f"medtune serve: models [{names}] on http://{cfg.host}:{cfg.port}/v1 "
                               f"(backend {cfg.backend}, batch <= {cfg.max_batch_size}, "
                               f"API key {'required' if api_key(cfg) else 'off'})", markup=False)
    uvicorn.run(create_app(cfg, engine), host=cfg.host, port=cfg.port, log_level="warning")
