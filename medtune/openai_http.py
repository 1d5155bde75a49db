"""The OpenAI-compatible HTTP surface shared by ``medtune serve`` and its gateway mode.

What both servers answer the same way lives here, once: the chat-completion request model and
its validation (OpenAI API reference, "Chat Completions"), OpenAI-style error bodies
``{"error": {"message", "type", "param", "code"}}``, API keys (one or several), per-key rate
limits, the body-size limit, the ASGI :class:`Gate` in front of every route (keys, limits, a
last-resort 500 without internal text, metrics, an access log without message text), the
Prometheus text rendering of :class:`Metrics` (text format 0.0.4) and the SSE chunk format.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
import os
import time
from collections import OrderedDict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medtune.config import EMERGENCY_NUMBERS, ServeConfig
from medtune.errors import ConfigError

try:
    from fastapi.responses import JSONResponse
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("medtune serve needs the serve extra: pip install 'medtune[serve]'") from e

UNSUPPORTED = {"tools": None, "tool_choice": None, "functions": None, "function_call": None, "logprobs": False,
               "top_logprobs": None, "logit_bias": None, "response_format": None, "audio": None,
               "frequency_penalty": 0, "presence_penalty": 0}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_SEED = 2**63 - 1
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
CHAT_PATH = "/v1/chat/completions"
RATE_LIMIT_CLIENTS = 10_000  # most clients (keys or addresses) whose buckets are kept
log = logging.getLogger("medtune.serve")
access_log = logging.getLogger("medtune.access")


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status (and optional extra headers)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def event(self) -> str:
        """The error as one SSE ``data:`` event (for a stream that has already begun)."""
        return f"data: {json.dumps(self.body())}\n\n"


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

    def stops(self) -> list[str]:
        """The non-empty stop strings as a list."""
        return [s for s in ([self.stop] if isinstance(self.stop, str) else list(self.stop or [])) if s]


def parse_chat_request(raw: bytes, names: list[str]) -> ChatRequest:
    """Validate a chat-completion request body (bounded work: linear in its size).

    Args:
        raw: the request body.
        names: model ids this server answers for.

    Raises:
        APIError: 400 for malformed JSON, invalid Unicode, bad fields, wrong roles, unsupported
            features or an unknown ``medtune_locale``; 404 for an unknown model.
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
    if req.model not in names:
        raise APIError(404, f"model {req.model[:100]!r} not found; available: {', '.join(names)}", param="model",
                       code="model_not_found")
    if req.medtune_locale is not None and req.medtune_locale not in EMERGENCY_NUMBERS:
        raise APIError(400, f"unknown medtune_locale {req.medtune_locale!r}; known: {', '.join(EMERGENCY_NUMBERS)}",
                       param="medtune_locale")
    return req


def chunk(meta: dict, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
    """One ``chat.completion.chunk`` as an SSE ``data:`` event; with ``usage``, the usage-only chunk."""
    body: dict[str, Any] = {**meta, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class Metrics:
    """Request counters and a latency histogram rendered in Prometheus text format 0.0.4."""

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

    def render(self, extra: list[str] = ()) -> str:
        """The metrics as Prometheus text; ``extra``: further lines from the server (queue, upstream)."""
        out = ["# HELP medtune_requests_total HTTP requests by path and status.", "# TYPE medtune_requests_total counter"]
        out += [f'medtune_requests_total{{path="{label(p)}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
        errors = sum(n for (_, s), n in self.requests.items() if s >= 400)
        out += ["# TYPE medtune_request_errors_total counter", f"medtune_request_errors_total {errors}",
                "# HELP medtune_request_latency_seconds Chat completion latency (request to last byte).",
                "# TYPE medtune_request_latency_seconds histogram"]
        out += [f'medtune_request_latency_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(LATENCY_BUCKETS, self.buckets)]
        out += [f'medtune_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                f"medtune_request_latency_seconds_sum {self.latency_sum:.6f}",
                f"medtune_request_latency_seconds_count {self.latency_count}",
                "# TYPE medtune_prompt_tokens_total counter", f"medtune_prompt_tokens_total {self.prompt_tokens}",
                "# TYPE medtune_completion_tokens_total counter", f"medtune_completion_tokens_total {self.completion_tokens}"]
        return "\n".join(out + list(extra)) + "\n"


def label(value: str) -> str:
    """A Prometheus label value with backslash, quote and newline escaped (text format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _read_key_lines(path) -> list[str]:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the API key file ({e.__class__.__name__})") from None
    if not lines or not lines[0]:
        raise ConfigError(f"{path}: the API key file is empty")
    return [ln for ln in lines if ln and not ln.startswith("#")]


def api_keys(cfg: ServeConfig) -> list[str]:
    """The accepted API keys: ``cfg.api_key``, else every line of ``cfg.api_key_file`` (one key a line,
    ``#`` comments skipped), else env ``MEDTUNE_API_KEY``; empty: no key required.

    Raises:
        ConfigError: ``api_key_file`` cannot be read or is empty.
    """
    if cfg.api_key:
        return [cfg.api_key]
    if cfg.api_key_file is not None:
        return _read_key_lines(cfg.api_key_file)
    return [os.environ["MEDTUNE_API_KEY"]] if os.environ.get("MEDTUNE_API_KEY") else []


def api_key(cfg: ServeConfig) -> str | None:
    """The first accepted API key (see :func:`api_keys`), or None when none is required."""
    keys = api_keys(cfg)
    return keys[0] if keys else None


def read_secret(path) -> str:
    """The first line of a key file (e.g. the upstream's key for a gateway).

    Raises:
        ConfigError: the file cannot be read or is empty.
    """
    return _read_key_lines(path)[0]


class RateLimiter:
    """Token buckets per client: at most ``per_minute`` requests a minute, bursts up to ``per_minute``.

    Memory is bounded: the least recently seen of more than ``RATE_LIMIT_CLIENTS`` clients is forgotten.
    """

    def __init__(self, per_minute: int):
        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        """Spend one request of ``client``'s bucket; returns 0 when allowed, else seconds until allowed."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[client] = (tokens - (wait == 0), now)
        if len(self.buckets) > RATE_LIMIT_CLIENTS:
            self.buckets.popitem(last=False)
        return wait


def key_id(authorization: bytes) -> str:
    """A short, non-reversible id of a bearer token for logs and rate-limit buckets ("-" when absent)."""
    return hashlib.sha256(authorization).hexdigest()[:10] if authorization else "-"


class Load:
    """Chat completions in flight (counted by :class:`Gate` from request to last byte) and their limit."""

    def __init__(self, limit: int | None = None):
        self.limit, self.now = limit, 0


class Gate:
    """ASGI middleware: API keys, rate limits, body-size limit, last-resort error body, metrics, access log.

    A key is required on ``/v1`` paths and on ``private`` ones (``/metrics`` unless public, the
    docs), compared in constant time with each accepted key. With ``rate_limit_per_minute``, each
    key (each client address when no key is set) gets that many ``/v1`` requests a minute; more
    get 429 with ``Retry-After``. A declared ``Content-Length`` over ``max_body_bytes`` gets 413
    before the body is read. Any exception that escapes the app becomes a 500 OpenAI-style body
    without the exception text (logged instead) and is not re-raised, so uvicorn keeps the
    connection. With a ``load`` limit, chat completions beyond it get 429. One access-log line per request (``medtune.access``: method, path, status, ms, key
    id) and never message text. Plain ASGI (not ``BaseHTTPMiddleware``) so a client disconnect
    reaches a streaming body at once.
    """

    def __init__(self, app, keys: list[str], metrics: Metrics, private: tuple[str, ...] = (),
                 max_body_bytes: int = 4 * 1024 * 1024, rate_limit_per_minute: int | None = None,
                 load: Load | None = None):
        self.app, self.metrics, self.private, self.max_body_bytes = app, metrics, private, max_body_bytes
        self.load = load or Load()
        self.expected = [f"Bearer {k}".encode() for k in keys]
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute else None

    def _refuse(self, scope, headers: dict) -> APIError | None:
        """The error that stops this request before the app, or None."""
        path = scope["path"]
        given = headers.get(b"authorization", b"")
        if self.expected and (path.startswith("/v1") or path in self.private) and \
                not any([hmac.compare_digest(given, e) for e in self.expected]):
            return APIError(401, "missing or incorrect API key (send Authorization: Bearer <key>)", code="invalid_api_key")
        if self.limiter is not None and path.startswith("/v1"):
            client = key_id(given) if self.expected else str((scope.get("client") or ("-",))[0])
            wait = self.limiter.take(client)
            if wait:
                return APIError(429, "rate limit reached for this API key, retry later", type_="rate_limit_error",
                                code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait)))})
        if _declared_length(headers) > self.max_body_bytes:
            return too_large(self.max_body_bytes)
        if self.load.limit is not None and path == CHAT_PATH and self.load.now >= self.load.limit:
            return APIError(429, "server busy: too many requests in flight, retry later", type_="rate_limit_error")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, start, status = scope["path"], time.perf_counter(), [0]

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = dict(scope["headers"])
        counted = False
        try:
            error = self._refuse(scope, headers)
            if error is not None:
                await error.response()(scope, receive, send_and_record)
            else:
                counted = path == CHAT_PATH
                self.load.now += counted
                await self.app(scope, receive, send_and_record)
        except Exception:
            log.exception("internal error on %s", path[:200])
            if status[0]:
                raise  # the answer has begun; nothing better to send
            await APIError(500, "internal server error", type_="server_error").response()(scope, receive, send_and_record)
        finally:
            self.load.now -= counted
            seconds = time.perf_counter() - start
            self.metrics.observe(path, status[0] or 500, seconds)
            access_log.info("%s %s %d %.1fms key=%s", scope.get("method", "-"), path[:200], status[0] or 500,
                            seconds * 1000, key_id(headers.get(b"authorization", b"")))


def _declared_length(headers: dict) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


async def read_body(request, limit: int) -> bytes:
    """The request body, or 413 as soon as it grows past ``limit`` bytes (chunked bodies too)."""
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large(limit)
        chunks.append(part)
    return b"".join(chunks)


def base_app(cfg: ServeConfig, metrics: Metrics, load: Load | None = None):
    """A FastAPI app with the :class:`Gate` (``load``: in-flight count and limit), OpenAI-style error
    handlers, and docs only when ``cfg.docs``."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException

    docs = dict(docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json") if cfg.docs else \
        dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="medtune", version="1", **docs)
    private = ("/metrics",) * (not cfg.metrics_public) + DOC_PATHS
    app.add_middleware(Gate, keys=api_keys(cfg), metrics=metrics, private=private,
                       max_body_bytes=cfg.max_body_bytes, rate_limit_per_minute=cfg.rate_limit_per_minute, load=load)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return APIError(exc.status_code, str(exc.detail)).response()

    return app


class _Stderr(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of each line (not the one at
    start: a replaced or closed stderr, e.g. a test runner's capture, would otherwise raise on every line)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_access_log(enabled: bool, name: str = "medtune.access") -> None:
    """Send the INFO lines of logger ``name`` (the access log: no message text) to stderr when ``enabled``."""
    logger = logging.getLogger(name)
    if enabled and not logger.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
