"""The one small async client for every LLM call medtune makes: data teacher, judge, eval endpoints.

Public interface (everything else is private)::

    from medtune.llm import LLMClient, LLMConfig, LLMError, SensitiveDataError

    teacher = LLMClient(LLMConfig(base_url="http://127.0.0.1:8000/v1", model="qwen2.5-7b-instruct"),
                      cache_path=Path("runs/x/teacher_cache.sqlite"))
    reply = await teacher.complete([{"role": "user", "content": "..."}], max_tokens=256)
    reply.text, reply.prompt_tokens, reply.completion_tokens, reply.cached
    texts = teacher.complete_many([messages, ...])   # sync helper: asyncio.run + gather, in order
    teacher.usage      # dict: requests, cache_hits, retries, failures, prompt_tokens, completion_tokens
    teacher.close()

Backends:

- ``base_url`` set: any OpenAI-compatible ``/v1/chat/completions`` endpoint through the
  ``openai`` package's ``AsyncOpenAI``; the API key is read from the environment variable named
  by ``api_key_env`` (a placeholder is sent when it is unset, which local servers accept).
- ``base_url`` unset: the local model (``model``, default the offline pack
  ``qwen2.5-coder-0.5b-instruct``) in this process through :func:`medtune.generation.chat_once`,
  one request at a time, so the whole data stage works offline.

Every call goes through a concurrency limit (``concurrency``), a sliding-window limiter of
requests and tokens per minute, a per-request timeout, and retries with capped exponential
backoff and full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015) on HTTP
429, 5xx, timeouts, connection errors and malformed bodies (``Retry-After`` is honoured when
longer). Other 4xx errors are not retried.

Results are stored in a SQLite cache keyed by sha256 of ``(model, messages, params)`` and
committed as soon as each reply arrives, so a run killed at any moment and restarted repeats
no finished call and loses no finished result.

Data governance: ``complete(..., sensitive=True)`` is refused with :class:`SensitiveDataError`
unless the backend is local (in-process, ``localhost`` or a loopback IP literal) or
``allow_sensitive_remote`` is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import random
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from medtune.errors import LLMError, SensitiveDataError

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-0.5b-instruct"


class LLMConfig(BaseModel):
    """Which LLM answers, and how hard we may push it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; unset = local model in process.")
    model: str | None = Field(None, description="Model name sent to the endpoint; for the local backend a pack, directory or hub id (default: the offline pack).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the API key (never put the key in the recipe).")
    concurrency: int = Field(8, ge=1, description="Maximum requests in flight (the local backend always runs one at a time).")
    requests_per_minute: int | None = Field(None, ge=1, description="Request rate limit (sliding 60 s window); unset = unlimited.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Token rate limit: prompt estimate (chars/4) + max_tokens per request; unset = unlimited.")
    max_retries: int = Field(6, ge=0, description="Retries after the first attempt on 429/5xx/timeouts/connection errors/malformed bodies.")
    backoff_initial_s: float = Field(1.0, gt=0, description="First backoff cap in seconds; doubles per retry (full jitter).")
    backoff_max_s: float = Field(60.0, gt=0, description="Upper bound of one backoff in seconds.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    temperature: float = Field(0.0, ge=0.0, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Default nucleus mass.")
    max_tokens: int = Field(512, ge=1, description="Default maximum completion tokens per call.")
    seed: int | None = Field(None, description="Seed sent with each request (part of the cache key).")
    allow_sensitive_remote: bool = Field(False, description="Allow sources marked sensitive to go to a non-local endpoint (explicit override).")


@dataclass
class Completion:
    """One reply: ``text`` plus token counts; ``cached`` is True when no call was made."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    model: str


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def is_local_url(base_url: str | None) -> bool:
    """True for the in-process backend (None) and for ``localhost`` / loopback IP literals (no DNS lookup)."""
    if base_url is None:
        return True
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    """sha256 hex of the canonical JSON of ``(model, messages, params)``."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Cache:
    """SQLite key -> reply store; every put is committed at once (WAL), so a kill loses nothing finished."""

    def __init__(self, path: Path | None):
        self.db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, text TEXT,"
                            " prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")

    def get(self, key: str) -> Completion | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT model, text, prompt_tokens, completion_tokens FROM replies WHERE key=?", (key,)).fetchone()
        return Completion(row[1], row[2], row[3], True, row[0]) if row else None

    def put(self, key: str, c: Completion) -> None:
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO replies VALUES (?,?,?,?,?,?)",
                            (key, c.model, c.text, c.prompt_tokens, c.completion_tokens, time.time()))

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class _RateLimiter:
    """Sliding 60 s window over request count and token count."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 60.0):
        self.rpm, self.tpm, self.window = rpm, tpm, window_s
        self.events: deque[tuple[float, int]] = deque()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if self.rpm is None and self.tpm is None:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                while self.events and now - self.events[0][0] >= self.window:
                    self.events.popleft()
                used = sum(t for _, t in self.events)
                if (self.rpm is None or len(self.events) < self.rpm) and \
                        (self.tpm is None or not self.events or used + tokens <= self.tpm):
                    self.events.append((now, tokens))
                    return
                await asyncio.sleep(self.window - (now - self.events[0][0]) + 1e-3)


class LLMClient:
    """Async chat-completion client with limits, retries and a persistent cache (see module docstring).

    Args:
        cfg: backend, limits and default sampling parameters.
        cache_path: SQLite file for the reply cache; None keeps no cache (every call is made).
        key: the recipe key ``cfg`` was read from, named in error messages (``data.teacher``).
    """

    def __init__(self, cfg: LLMConfig, cache_path: Path | None = None, key: str = "data.teacher"):
        self.cfg, self.key = cfg, key
        self.model = cfg.model or (DEFAULT_LOCAL_MODEL if cfg.base_url is None else "default")
        self.local = cfg.base_url is None
        self.cache = _Cache(cache_path)
        self.usage = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        self._client = None
        self._local_model = None
        self._local_lock = threading.Lock()
        self._loop_state: tuple | None = None

    @property
    def is_local(self) -> bool:
        """True when calls stay on this machine (in-process model or loopback endpoint)."""
        return is_local_url(self.cfg.base_url)

    def params(self, **overrides) -> dict:
        """Sampling parameters of a call: config defaults updated with ``overrides`` (None values ignored)."""
        p = {"temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_tokens}
        if self.cfg.seed is not None:
            p["seed"] = self.cfg.seed
        p.update({k: v for k, v in overrides.items() if v is not None})
        return p

    async def complete(self, messages: list[dict], *, sensitive: bool = False, **params) -> Completion:
        """Answer ``messages`` (from the cache when this exact call was made before).

        Args:
            messages: ``[{"role", "content"}, ...]`` in OpenAI chat form.
            sensitive: the content comes from a source marked ``sensitive: true``.
            **params: ``temperature``, ``top_p``, ``max_tokens``, ``seed`` overriding the config.

        Returns:
            The :class:`Completion`.

        Raises:
            SensitiveDataError: sensitive content and a non-local backend without the override.
            LLMError: retries exhausted, non-retryable HTTP error, or the local model failed.
        """
        if sensitive and not self.is_local and not self.cfg.allow_sensitive_remote:
            raise SensitiveDataError(
                f"refusing to send a source marked sensitive to {self.cfg.base_url}: only the local model or a "
                f"loopback endpoint may see it; to override, --set {self.key}.allow_sensitive_remote=true")
        p = self.params(**params)
        key = cache_key(self.model, messages, p)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage["cache_hits"] += 1
            return hit
        sem, limiter = self._loop_objects()
        async with sem:
            hit = self.cache.get(key)  # the same call, made twice at once, was answered while this one waited
            if hit is not None:
                self.usage["cache_hits"] += 1
                return hit
            reply = await self._with_retries(messages, p)
        self.cache.put(key, reply)
        self.usage["prompt_tokens"] += reply.prompt_tokens
        self.usage["completion_tokens"] += reply.completion_tokens
        return reply

    def complete_many(self, requests: list[list[dict]], *, sensitive: bool = False, **params) -> list[Completion | LLMError]:
        """Run many calls concurrently from synchronous code; results in input order.

        A failed call yields its :class:`LLMError` in place of a completion, so one bad
        item never loses the others (they are cached as they finish).
        """
        async def run():
            try:
                return await asyncio.gather(*(self.complete(m, sensitive=sensitive, **params) for m in requests),
                                            return_exceptions=True)
            finally:
                await self.aclose()

        out = asyncio.run(run())
        for r in out:
            if isinstance(r, BaseException) and not isinstance(r, LLMError):
                raise r
        return out

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop (a later call opens a new one)."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    def close(self) -> None:
        """Close the cache database."""
        self.cache.close()

    def _loop_objects(self):
        loop = asyncio.get_running_loop()
        if self._loop_state is None or self._loop_state[0] is not loop:
            limit = 1 if self.local else self.cfg.concurrency
            self._loop_state = (loop, asyncio.Semaphore(limit),
                                _RateLimiter(self.cfg.requests_per_minute, self.cfg.tokens_per_minute))
            self._client = None
        return self._loop_state[1], self._loop_state[2]

    async def _with_retries(self, messages: list[dict], p: dict) -> Completion:
        _, limiter = self._loop_state[1], self._loop_state[2]
        estimate = sum(len(str(m.get("content", ""))) for m in messages) // 4 + p["max_tokens"]
        for attempt in range(self.cfg.max_retries + 1):
            await limiter.acquire(estimate)
            self.usage["requests"] += 1
            try:
                return await (self._call_local(messages, p) if self.local else self._call_remote(messages, p))
            except _Retryable as e:
                if attempt == self.cfg.max_retries:
                    self.usage["failures"] += 1
                    raise LLMError(f"teacher {self.model}: giving up after {attempt + 1} attempts: {e}") from None
                self.usage["retries"] += 1
                cap = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** attempt)
                await asyncio.sleep(max(random.uniform(0, cap), min(e.retry_after or 0.0, self.cfg.backoff_max_s)))
        raise AssertionError("unreachable")

    async def _call_remote(self, messages: list[dict], p: dict) -> Completion:
        import openai

        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.cfg.base_url, max_retries=0, timeout=self.cfg.timeout_s,
                                              api_key=os.environ.get(self.cfg.api_key_env) or "not-needed")
        try:
            resp = await self._client.chat.completions.create(model=self.model, messages=messages, **p)
        except openai.APIStatusError as e:
            if e.status_code == 429 or e.status_code >= 500:
                raise _Retryable(f"HTTP {e.status_code}", _retry_after(e.response.headers)) from None
            self.usage["failures"] += 1
            raise LLMError(f"teacher {self.model} at {self.cfg.base_url}: HTTP {e.status_code}: {e.message}") from None
        except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None  # timeouts, resets, undecodable JSON
        return _parse_reply(resp, self.model)

    async def _call_local(self, messages: list[dict], p: dict) -> Completion:
        return await asyncio.to_thread(self._generate_local, messages, p)

    def _generate_local(self, messages: list[dict], p: dict) -> Completion:
        from medtune.config import GenerationSettings
        from medtune.generation import chat_once, render_prompt

        with self._local_lock:
            if self._local_model is None:
                from medtune.models import load_chat_model

                self._local_model = load_chat_model(self.model)
            model, tok = self._local_model
            # every field given: the reply depends only on the cached request's params (no model defaults)
            settings = GenerationSettings(temperature=p["temperature"], top_p=p["top_p"], repetition_penalty=1.0,
                                          max_new_tokens=p["max_tokens"], seed=p.get("seed"))
            try:
                text = chat_once(model, tok, messages, settings)
            except Exception as e:
                self.usage["failures"] += 1
                raise LLMError(f"local teacher {self.model} failed: {e}") from e
            n_prompt = int(render_prompt(tok, messages).shape[1])
            n_out = len(tok(text, add_special_tokens=False)["input_ids"])
        return Completion(text, n_prompt, n_out, False, self.model)


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("retry-after")) if headers and headers.get("retry-after") else None
    except ValueError:
        return None


def _parse_reply(resp, model: str) -> Completion:
    """Text and usage of a chat completion; a body without a string message content is retryable."""
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        raise _Retryable(f"malformed response body: {str(resp)[:200]!r}")
    usage = getattr(resp, "usage", None)
    return Completion(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0,
                      False, model)
