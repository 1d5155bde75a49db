"""Gateway mode: ``medtune serve --upstream URL``, the clinical layer in front of any OpenAI-compatible server.

The gateway loads no model. It answers the same OpenAI API as ``medtune serve`` (same request
checks, keys, rate limits, body limit, ``/metrics``, access log) and sends the generation to the
upstream's ``POST /chat/completions`` (vLLM, SGLang, llama.cpp's server, Ollama or another
``medtune serve``), always as a stream (OpenAI API reference, "Chat Completions", streaming):

1. the turn pipeline (:func:`medtune.turn.prepare_turn`) screens the conversation and, with
   ``--index``, grounds it in retrieved passages, in a worker thread;
2. the grounded conversation goes upstream; failures before the first token where the upstream
   began no answer (connection refused, 429/502/503, a stream closed before its first token) are
   retried up to ``upstream_retries`` times; a read timeout is not retried (the upstream may be
   busy with it);
3. the answer streams token by token: the urgent-care prefix first, the upstream's text pieces as
   they arrive (a copy of the prefix/disclaimer added by a medtune upstream is dropped), the
   disclaimer last; citations ride on the first chunk (or the message) as in ``medtune serve``.

Failures map to OpenAI-style JSON without internal text: connection refused 503, upstream 429/503
503, other upstream 5xx or a malformed answer 502, a timeout 504; an upstream 400/413/422 (e.g.
context too long) is a 400 with the upstream's message. After the first token, a failure ends the
stream with one ``data: {"error": ...}`` event and ``data: [DONE]``. A client that goes away closes
the upstream stream, so the upstream stops generating. The gateway keeps no conversation state:
any number of gateways can stand behind one load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from medtune.config import ServeConfig
from medtune.errors import ConfigError
from medtune.openai_http import (APIError, ChatRequest, Load, Metrics, api_keys, base_app, chunk, configure_access_log,
                                 label, parse_chat_request, read_body, read_secret)
from medtune.turn import Turn, Unrepeat, astream_turn, prepare_turn

try:
    import anyio
    import httpx
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("medtune serve --upstream needs the serve extra: pip install 'medtune[serve]'") from e

log = logging.getLogger("medtune.gateway")
RETRYABLE_STATUS = (429, 502, 503)
CLIENT_FAULT_STATUS = (400, 413, 422)


class UpstreamError(Exception):
    """A failure of the upstream, answered to the client as ``status`` with a fixed message."""

    MESSAGES = {502: "the model server failed to answer", 503: "the model server is unavailable, retry later",
                504: "the model server did not answer in time"}

    def __init__(self, status: int, code: str, retryable: bool = False, message: str | None = None):
        super().__init__(code)
        self.status, self.code, self.retryable = status, code, retryable
        self.message = message or self.MESSAGES.get(status, "the model server failed to answer")

    def api_error(self, turn: Turn | None = None) -> APIError:
        """The client's error; for a flagged turn the urgent-care message leads, so it is never lost."""
        urgent = turn.prefix.strip() + " " if turn is not None and turn.flags else ""
        client_fault = self.status == 400
        return APIError(self.status, urgent + self.message, code=self.code,
                        type_="invalid_request_error" if client_fault else "upstream_error",
                        headers={"Retry-After": "1"} if self.status == 503 else None)


@dataclass
class Upstream:
    """The upstream server and the gateway's counters of it."""

    url: str
    names: list[str]
    headers: dict
    client: httpx.AsyncClient
    retries: int
    load: Load = field(default_factory=Load)
    errors: dict = field(default_factory=dict)
    retried: int = 0
    flagged: int = 0

    def metrics(self) -> list[str]:
        out = ["# HELP medtune_upstream_errors_total Upstream failures by code.", "# TYPE medtune_upstream_errors_total counter"]
        out += [f'medtune_upstream_errors_total{{code="{label(c)}"}} {n}' for c, n in sorted(self.errors.items())]
        return out + ["# TYPE medtune_upstream_retries_total counter", f"medtune_upstream_retries_total {self.retried}",
                      "# TYPE medtune_inflight_requests gauge", f"medtune_inflight_requests {self.load.now}",
                      "# TYPE medtune_flagged_total counter", f"medtune_flagged_total {self.flagged}"]


def upstream_key(cfg: ServeConfig) -> str | None:
    """The upstream's API key: first line of ``upstream_key_file``, else env ``MEDTUNE_UPSTREAM_KEY``, else None.

    Raises:
        ConfigError: the key file cannot be read or is empty.
    """
    if cfg.upstream_key_file is not None:
        return read_secret(cfg.upstream_key_file)
    return os.environ.get("MEDTUNE_UPSTREAM_KEY") or None


def upstream_names(cfg: ServeConfig, headers: dict) -> list[str]:
    """Model ids the gateway answers for: ``upstream_model``, else the upstream's ``GET /models`` list.

    Raises:
        ConfigError: no ``upstream_model`` and the upstream cannot be listed (down, or not OpenAI-compatible).
    """
    if cfg.upstream_model:
        return [cfg.upstream_model]
    url = cfg.upstream.rstrip("/") + "/models"
    try:
        r = httpx.get(url, headers=headers, timeout=httpx.Timeout(cfg.upstream_read_timeout_s,
                                                                  connect=cfg.upstream_connect_timeout_s))
        r.raise_for_status()
        names = [str(m["id"]) for m in r.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot list the models of the upstream at {url} ({e.__class__.__name__}); "
                          "start it first or pass --upstream-model NAME") from None
    if not names:
        raise ConfigError(f"the upstream at {url} lists no model; pass --upstream-model NAME")
    return names


def connect_upstream(cfg: ServeConfig) -> Upstream:
    """An :class:`Upstream` for ``cfg.upstream`` with its timeouts and a pool of ``cfg.max_queue`` connections.

    Raises:
        ConfigError: no upstream URL, an unreadable key file, or no model name to be had.
    """
    if not cfg.upstream or not cfg.upstream.startswith(("http://", "https://")):
        raise ConfigError(f"serve.upstream must be an http(s) URL such as http://127.0.0.1:8001/v1, got {cfg.upstream!r}")
    key = upstream_key(cfg)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    names = upstream_names(cfg, headers)
    headers["Content-Type"] = "application/json"
    timeout = httpx.Timeout(connect=cfg.upstream_connect_timeout_s, read=cfg.upstream_read_timeout_s,
                            write=cfg.upstream_read_timeout_s, pool=cfg.upstream_connect_timeout_s)
    client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=cfg.max_queue,
                                                                     max_keepalive_connections=min(cfg.max_queue, 64)))
    return Upstream(cfg.upstream.rstrip("/"), names, headers, client, cfg.upstream_retries, Load(cfg.max_queue))


def upstream_body(req: ChatRequest, turn: Turn) -> dict:
    """The request sent upstream: the grounded conversation and the client's sampling fields, streamed."""
    body = {"model": req.model, "messages": turn.messages, "stream": True, "stream_options": {"include_usage": True}}
    wanted = req.max_completion_tokens or req.max_tokens
    fields = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": wanted, "seed": req.seed,
              "stop": req.stops() or None}
    return body | {k: v for k, v in fields.items() if v is not None}


async def _open(up: Upstream, body: bytes) -> httpx.Response:
    """One try at the upstream's streamed answer, up to its response headers.

    Raises:
        UpstreamError: the status to answer, and whether a retry is safe.
    """
    try:
        request = up.client.build_request("POST", up.url + "/chat/completions", content=body, headers=up.headers)
        resp = await up.client.send(request, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
        raise UpstreamError(503, "upstream_unavailable", retryable=True) from None
    except httpx.TimeoutException:
        raise UpstreamError(504, "upstream_timeout") from None
    except httpx.TransportError:  # closed before answering: nothing was generated for us
        raise UpstreamError(502, "upstream_error", retryable=True) from None
    if resp.status_code == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
        return resp
    error = await _status_error(resp)
    await resp.aclose()
    raise error


async def _status_error(resp: httpx.Response) -> UpstreamError:
    """The error for an upstream answer that is not a 200 event stream (its body read up to 64 KiB)."""
    status = resp.status_code
    if status in CLIENT_FAULT_STATUS:
        raw = b""
        async for part in resp.aiter_bytes():
            raw += part
            if len(raw) > 65536:
                break
        try:
            detail = str(json.loads(raw)["error"]["message"])[:300]
        except (ValueError, KeyError, TypeError):
            detail = ""
        return UpstreamError(400, "upstream_rejected", message="the model server rejected the request"
                             + (f": {detail}" if detail else ""))
    if status in (429, 503):
        return UpstreamError(503, "upstream_busy", retryable=True)
    if status == 504:
        return UpstreamError(504, "upstream_timeout")
    return UpstreamError(502, "upstream_error", retryable=status == 502)


async def _events(resp: httpx.Response, state: dict) -> AsyncIterator[str]:
    """Content pieces of an upstream SSE stream; ``state`` gets ``finish_reason`` and ``usage``.

    Raises:
        UpstreamError: an error event, a malformed event, a broken connection or a timeout, or a
            stream that ended before its last chunk (no ``finish_reason`` and no ``[DONE]``).
    """
    try:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            text, finish, usage = _parse_event(data)
            if text:
                yield text
            state["finish_reason"] = finish or state.get("finish_reason")
            if usage:
                state["usage"] = usage
    except httpx.TimeoutException:
        raise UpstreamError(504, "upstream_timeout") from None
    except httpx.TransportError:
        raise UpstreamError(502, "upstream_disconnected", retryable=True) from None
    if not state.get("finish_reason"):
        raise UpstreamError(502, "upstream_disconnected", retryable=True)


def _parse_event(data: str) -> tuple[str | None, str | None, dict | None]:
    """``(content, finish_reason, usage)`` of one ``chat.completion.chunk``.

    Raises:
        UpstreamError: 502 for an error event or a chunk that is not shaped as OpenAI's.
    """
    try:
        event = json.loads(data)
        if "error" in event:
            raise UpstreamError(502, "upstream_error")
        choice = (event.get("choices") or [{}])[0]
        text, finish = (choice.get("delta") or {}).get("content"), choice.get("finish_reason")
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else None
    except (ValueError, AttributeError, TypeError, IndexError, KeyError):
        raise UpstreamError(502, "upstream_malformed") from None
    if (text is not None and not isinstance(text, str)) or (finish is not None and not isinstance(finish, str)):
        raise UpstreamError(502, "upstream_malformed")
    return text, finish, usage


async def upstream_text(up: Upstream, body: bytes, state: dict) -> AsyncIterator[str]:
    """The upstream's answer as text pieces, retrying safe failures while no token has arrived.

    Yields:
        Text pieces as the upstream streams them.

    Raises:
        UpstreamError: the failure (after the retries allowed before the first token).
    """
    got = False
    for attempt in range(up.retries + 1):
        if attempt:
            up.retried += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        try:
            resp = await _open(up, body)
            try:
                async for piece in _events(resp, state):
                    got = True
                    yield piece
                return
            finally:
                with anyio.CancelScope(shield=True):  # close even when cancelled: the upstream stops generating
                    await resp.aclose()
        except UpstreamError as e:
            up.errors[e.code] = up.errors.get(e.code, 0) + 1
            log.warning("upstream failure %s (status %d, attempt %d, after a token: %s)", e.code, e.status,
                        attempt + 1, got)
            if got or not e.retryable or attempt == up.retries:
                raise


def parse_gateway_request(raw: bytes, cfg: ServeConfig, up: Upstream) -> tuple[ChatRequest, Turn, bytes]:
    """Validate a body, run the turn pipeline and encode the upstream request (in a worker thread: all
    the work linear in the body's size stays off the event loop).

    Raises:
        APIError: as :func:`medtune.openai_http.parse_chat_request`.
    """
    req = parse_chat_request(raw, up.names)
    messages = [m.model_dump() for m in req.messages]
    turn = prepare_turn(messages, cfg.safety, req.medtune_locale, cfg.rag)
    if cfg.log_message_text:
        log.info("request model=%s flags=%s text=%r", req.model, turn.flags, messages[-1]["content"][:2000])
    return req, turn, json.dumps(upstream_body(req, turn), ensure_ascii=False).encode("utf-8")


def create_gateway_app(cfg: ServeConfig, up: Upstream):
    """The FastAPI application of gateway mode (routes as :func:`medtune.serve.create_app`)."""
    metrics = Metrics()
    app = base_app(cfg, metrics, up.load)

    @app.get("/health")
    async def health():
        return {"status": "ok", "inflight": up.load.now}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(up.metrics()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "medtune"}
                                           for n in up.names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await read_body(request, cfg.max_body_bytes)
        return await _answer(request, raw, cfg, up, metrics)

    metrics.paths = {route.path for route in app.routes}
    return app


async def _answer(request, raw: bytes, cfg: ServeConfig, up: Upstream, metrics: Metrics):
    """Run one request: parse + turn pipeline off the loop, wait for the first upstream token, then answer."""
    req, turn, body = await asyncio.to_thread(parse_gateway_request, raw, cfg, up)
    up.flagged += bool(turn.flags)
    state: dict = {}
    strip = Unrepeat(turn.prefix, turn.suffix)  # a medtune upstream adds the prefix and disclaimer itself
    pieces = _unrepeated(upstream_text(up, body, state), strip)
    try:
        first = await _first(request, pieces)
    except UpstreamError as e:
        await pieces.aclose()
        raise e.api_error(turn) from None
    meta = dict(id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=req.model)
    text = astream_turn(turn, _chain(first, pieces))
    if req.stream:
        usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(text, turn, meta, state, usage, metrics), media_type="text/event-stream")
    return await _complete(request, text, turn, meta, state, metrics)


async def _unrepeated(pieces: AsyncIterator[str], strip: Unrepeat) -> AsyncIterator[str]:
    try:
        async for piece in pieces:
            out = strip.feed(piece)
            if out:
                yield out
        rest = strip.end()
        if rest:
            yield rest
    finally:
        await pieces.aclose()


async def _first(request, pieces: AsyncIterator[str]) -> str | None:
    """The first text piece (None for an empty answer), given up when the client goes away."""
    task = asyncio.ensure_future(anext(pieces, None))
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await request.is_disconnected():
            await _cancel(task)
            raise UpstreamError(499, "client_closed")


def _count(metrics: Metrics, usage: dict | None) -> None:
    """Add the upstream's token counts (when it sent usage) to the metrics."""
    for name in ("prompt_tokens", "completion_tokens"):
        value = (usage or {}).get(name)
        if isinstance(value, int) and value >= 0:
            setattr(metrics, name, getattr(metrics, name) + value)


async def _cancel(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has unwound (its generators closed)."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _chain(first: str | None, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        if first is not None:
            yield first
            async for piece in rest:
                yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await rest.aclose()


async def _complete(request, text: AsyncIterator[str], turn: Turn, meta: dict, state: dict, metrics: Metrics):
    """Collect the whole answer into one ``chat.completion`` (502/504 JSON if the upstream fails midway)."""
    parts: list[str] = []

    async def collect():
        async for piece in text:
            parts.append(piece)

    task = asyncio.ensure_future(collect())
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if not task.done() and await request.is_disconnected():
            await _cancel(task)  # closes the upstream stream
            raise UpstreamError(499, "client_closed").api_error()
    try:
        task.result()
    except UpstreamError as e:
        raise e.api_error(turn) from None
    usage = state.get("usage")
    _count(metrics, usage)
    message = {"role": "assistant", "content": "".join(parts)}
    if turn.citations is not None:
        message["citations"] = turn.citations
    body = {**meta, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": state.get("finish_reason") or "stop"}]}
    return JSONResponse(body | ({"usage": usage} if usage else {}))


async def _sse(text: AsyncIterator[str], turn: Turn, meta: dict, state: dict, include_usage: bool, metrics: Metrics):
    """The answer as OpenAI chunks; an upstream failure midway ends it with one error event and ``[DONE]``."""
    try:
        first = {"role": "assistant", "content": ""}
        if turn.citations is not None:
            first["citations"] = turn.citations
        yield chunk(meta, first)
        try:
            async for piece in text:
                yield chunk(meta, {"content": piece})
        except UpstreamError as e:
            yield e.api_error().event()
        else:
            yield chunk(meta, {}, finish=state.get("finish_reason") or "stop")
            if include_usage and state.get("usage"):
                yield chunk(meta, {}, usage=state["usage"])
            _count(metrics, state.get("usage"))
        yield "data: [DONE]\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await text.aclose()


def serve_gateway(cfg: ServeConfig) -> None:
    """Run gateway mode until interrupted (uvicorn on ``cfg.host:cfg.port``, generation at ``cfg.upstream``).

    Raises:
        ConfigError: a bad upstream URL or key file, or no model name to be had from the upstream.
    """
    import uvicorn
    from rich.console import Console

    configure_access_log(cfg.access_log)
    configure_access_log(cfg.log_message_text, "medtune.gateway")  # the opt-in log with message text
    up = connect_upstream(cfg)
    Console(stderr=True).print(
        f"medtune serve (gateway): models [{', '.join(up.names)}] from {up.url} on http://{cfg.host}:{cfg.port}/v1 "
        f"(index {cfg.rag.index or 'off'}, API key {'required' if api_keys(cfg) else 'off'})", markup=False)
    uvicorn.run(create_gateway_app(cfg, up), host=cfg.host, port=cfg.port, log_level="warning")
