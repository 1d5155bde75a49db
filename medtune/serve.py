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
import hmac
import json
import logging
import os
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medtune.config import EMERGENCY_NUMBERS, GenerationSettings, ServeConfig
from medtune.engine import Engine, Job, load_engine
from medtune.generation import model_settings
from medtune.errors import ConfigError
from medtune.turn import Turn, prepare_turn

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("medtune serve needs the serve extra: pip install 'medtune[serve]'") from e

UNSUPPORTED = {"tools": None, "tool_choice": None, "functions": None, "function_call": None, "logprobs": False,
               "top_logprobs": None, "logit_bias": None, "response_format": None, "audio": None,
               "frequency_penalty": 0, "presence_penalty": 0}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_SEED = 2**63 - 1
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
log = logging.getLogger("medtune.serve")


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[dict] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, list):
            if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in v):
                raise ValueError("only text content parts are supported")
            return "".join(p["text"] for p in v)
        return v or ""


class ChatRequest(BaseModel):
    """The supported subset of OpenAI's chat completion request."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    medtune_locale: str | None = Field(None, description="the user's locale for the emergency number, e.g. en-GB "
                                                         "(extension; openai client: extra_body={'medtune_locale': ...})")


class Metrics:
    """Counters and a latency histogram rendered in Prometheus text format."""

    def __init__(self):
        self.paths: set[str] = set()  # the route table; any other path is counted as "other"
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.prompt_tokens = self.completion_tokens = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.paths else "other"
        self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
        if path == "/v1/chat/completions":
            self.latency_sum += seconds
            self.latency_count += 1
            for i, b in enumerate(LATENCY_BUCKETS):
                self.buckets[i] += seconds <= b

    def render(self, engine: Engine) -> str:
        out = ["# HELP medtune_requests_total HTTP requests by path and status.", "# TYPE medtune_requests_total counter"]
        out += [f'medtune_requests_total{{path="{_label(p)}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
        errors = sum(n for (_, s), n in self.requests.items() if s >= 400)
        out += ["# TYPE medtune_request_errors_total counter", f"medtune_request_errors_total {errors}",
                "# HELP medtune_request_latency_seconds Chat completion latency (request to last byte).",
                "# TYPE medtune_request_latency_seconds histogram"]
        out += [f'medtune_request_latency_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(LATENCY_BUCKETS, self.buckets)]
        out += [f'medtune_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                f"medtune_request_latency_seconds_sum {self.latency_sum:.6f}",
                f"medtune_request_latency_seconds_count {self.latency_count}",
                "# TYPE medtune_prompt_tokens_total counter", f"medtune_prompt_tokens_total {self.prompt_tokens}",
                "# TYPE medtune_completion_tokens_total counter", f"medtune_completion_tokens_total {self.completion_tokens}",
                "# TYPE medtune_queue_depth gauge", f"medtune_queue_depth {engine.queue_depth()}",
                "# TYPE medtune_batches_total counter", f"medtune_batches_total {engine.batches}",
                "# TYPE medtune_batched_requests_total counter", f"medtune_batched_requests_total {engine.batched_jobs}"]
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value with backslash, quote and newline escaped (text format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def api_key(cfg: ServeConfig) -> str | None:
    """The API key: ``cfg.api_key``, else the first line of ``cfg.api_key_file``, else env ``MEDTUNE_API_KEY``.

    Raises:
        ConfigError: ``api_key_file`` cannot be read or is empty.
    """
    if cfg.api_key:
        return cfg.api_key
    if cfg.api_key_file is not None:
        try:
            lines = cfg.api_key_file.read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{cfg.api_key_file}: cannot read the API key file ({e.__class__.__name__})") from None
        if not lines or not lines[0].strip():
            raise ConfigError(f"{cfg.api_key_file}: the API key file is empty")
        return lines[0].strip()
    return os.environ.get("MEDTUNE_API_KEY") or None


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
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "request body has invalid Unicode (a lone surrogate escape such as \\ud800)") from None
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{param}: {first['msg']}", param=param) from None
    for name, neutral in UNSUPPORTED.items():
        if data.get(name) not in (None, neutral):
            raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    if req.messages[-1].role != "user":
        raise APIError(400, "the last message must have role 'user'", param="messages")
    names = served_names(cfg)
    if req.model not in names:
        raise APIError(404, f"model {req.model[:100]!r} not found; available: {', '.join(names)}", param="model",
                       code="model_not_found")
    return (req, *_job(req, cfg, engine))


def _job(req: ChatRequest, cfg: ServeConfig, engine: Engine) -> tuple[Job, Turn]:
    if req.medtune_locale is not None and req.medtune_locale not in EMERGENCY_NUMBERS:
        raise APIError(400, f"unknown medtune_locale {req.medtune_locale!r}; known: {', '.join(EMERGENCY_NUMBERS)}",
                       param="medtune_locale")
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
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    job = Job(g.messages, settings, adapter=None if req.model == str(cfg.model) else req.model,
              stop=[s for s in stop if s], prompt_ids=prompt_ids)
    return job, g


def create_app(cfg: ServeConfig, engine: Engine):
    """The FastAPI application serving ``engine`` with the settings in ``cfg``."""
    docs = dict(docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json") if cfg.docs else \
        dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="medtune", version="1", **docs)
    metrics = Metrics()
    private = ("/metrics",) * (not cfg.metrics_public) + DOC_PATHS
    app.add_middleware(Gate, api_key=api_key(cfg), metrics=metrics, private=private,
                       max_body_bytes=cfg.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queue_depth": engine.queue_depth()}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "medtune"}
                                           for n in served_names(cfg)]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await _read_body(request, cfg.max_body_bytes)
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


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it grows past ``limit`` bytes (chunked bodies too)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


class Gate:
    """ASGI middleware: bearer-token check, body-size limit, last-resort error body, and request metrics.

    The key is required on ``/v1`` paths and on ``private`` ones (``/metrics`` unless public, the
    docs), compared in constant time. A declared ``Content-Length`` over ``max_body_bytes`` gets
    413 before the body is read. Any exception that escapes the app becomes a 500 OpenAI-style body
    without the exception text (logged here instead) and is not re-raised, so uvicorn keeps the
    connection. Plain ASGI (not ``BaseHTTPMiddleware``) so a client disconnect reaches the streaming
    body at once.
    """

    def __init__(self, app, api_key: str | None, metrics: Metrics, private: tuple[str, ...] = (),
                 max_body_bytes: int = 4 * 1024 * 1024):
        self.app, self.metrics, self.private, self.max_body_bytes = app, metrics, private, max_body_bytes
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, start, status = scope["path"], time.perf_counter(), [0]

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def answer(error: APIError):
            await JSONResponse(error.body(), status_code=error.status)(scope, receive, send_and_record)

        try:
            headers = dict(scope["headers"])
            if self.expected and (path.startswith("/v1") or path in self.private) and \
                    not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await answer(APIError(401, "missing or incorrect API key (send Authorization: Bearer <key>)",
                                      code="invalid_api_key"))
            elif _declared_length(headers) > self.max_body_bytes:
                await answer(_too_large(self.max_body_bytes))
            else:
                await self.app(scope, receive, send_and_record)
        except Exception:
            log.exception("internal error on %s", path[:200])
            if status[0]:
                raise  # the answer has begun; nothing better to send
            await answer(APIError(500, "internal server error", type_="server_error"))
        finally:
            self.metrics.observe(path, status[0] or 500, time.perf_counter() - start)


def _declared_length(headers: dict) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0


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
    text = "".join(pieces) + g.suffix
    message = {"role": "assistant", "content": text}
    if g.citations is not None:
        message["citations"] = g.citations  # extra field: clients that do not know it ignore it
    return JSONResponse({**meta, "object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": reason}],
        "usage": _usage(job)})


async def _sse(job: Job, g: Turn, events: asyncio.Queue, meta: dict, include_usage: bool, metrics: Metrics):
    """Server-Sent Events in OpenAI's chunk format; a client that goes away cancels the job (frees its row)."""
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body: dict[str, Any] = {**meta, "object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        first = {"role": "assistant", "content": ""}
        if g.citations is not None:
            first["citations"] = g.citations
        yield chunk(first)
        if g.prefix:
            yield chunk({"content": g.prefix})
        while True:
            event = await events.get()
            if event[0] == "text":
                yield chunk({"content": event[1]})
                continue
            _, reason, error = event
            if error is not None:
                log.error("generation failed: %r", error)
                yield f"data: {json.dumps(APIError(500, 'generation failed', type_='server_error').body())}\n\n"
                break
            if g.suffix:
                yield chunk({"content": g.suffix})
            yield chunk({}, finish=reason)
            if include_usage:
                yield chunk({}, usage=_usage(job))
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

    engine = load_engine(cfg)
    names = ", ".join(served_names(cfg))
    Console(stderr=True).print(f"medtune serve: models [{names}] on http://{cfg.host}:{cfg.port}/v1 "
                               f"(backend {cfg.backend}, batch <= {cfg.max_batch_size}, "
                               f"API key {'required' if api_key(cfg) else 'off'})", markup=False)
    uvicorn.run(create_app(cfg, engine), host=cfg.host, port=cfg.port, log_level="warning")
