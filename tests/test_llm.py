"""The teacher client against a real HTTP server on 127.0.0.1 that injects faults, and kill/resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtune.llm import SensitiveDataError, LLMClient, LLMConfig, LLMError, _RateLimiter, is_local_url
from tests.fake_openai import FakeOpenAI, cache_rows

ROOT = Path(__file__).resolve().parents[1]


def _msgs(n: int, tag: str = "q") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{tag}{i}"}] for i in range(n)]


def _cfg(srv: FakeOpenAI, **kw) -> LLMConfig:
    return LLMConfig(base_url=srv.base_url, model="m", backoff_initial_s=0.01, timeout_s=1.0, **kw)


def test_faults_are_retried_and_every_answer_arrives_once():
    faults = ["429", "500", "malformed", "html", "slow", "429"]
    with FakeOpenAI(faults=faults, slow_s=3.0) as srv:
        t = LLMClient(_cfg(srv, concurrency=3))
        out = t.complete_many(_msgs(8))
    assert [c.text for c in out] == [f"echo: q{i}" for i in range(8)]
    assert t.usage["retries"] == len(faults)
    assert t.usage["requests"] == 8 + len(faults) == srv.calls
    assert set(srv.ok.values()) == {1} and len(srv.ok) == 8
    assert t.usage["completion_tokens"] == sum(len(c.text) for c in out)


def test_cache_makes_a_second_run_free(tmp_path):
    with FakeOpenAI() as srv:
        first = LLMClient(_cfg(srv), cache_path=tmp_path / "c.sqlite")
        a = first.complete_many(_msgs(5))
        first.close()
        second = LLMClient(_cfg(srv), cache_path=tmp_path / "c.sqlite")
        b = second.complete_many(_msgs(5))
        changed = second.complete_many(_msgs(1), temperature=0.7)  # other params: another key
    assert [x.text for x in a] == [x.text for x in b] and all(x.cached for x in b)
    assert second.usage["cache_hits"] == 5 and second.usage["requests"] == 1 and not changed[0].cached
    assert srv.calls == 6


def test_the_same_call_made_twice_at_once_is_paid_once(tmp_path):
    with FakeOpenAI() as srv:
        t = LLMClient(_cfg(srv, concurrency=1), cache_path=tmp_path / "c.sqlite")
        out = t.complete_many(_msgs(2) + _msgs(2))  # two sources asking the teacher the same questions
    assert [c.text for c in out] == ["echo: q0", "echo: q1"] * 2
    assert srv.calls == 2 and t.usage["cache_hits"] == 2


def test_non_retryable_and_exhausted_errors_do_not_lose_other_results():
    with FakeOpenAI(faults=["400"]) as srv:
        t = LLMClient(_cfg(srv, concurrency=1))
        out = t.complete_many(_msgs(3))
    assert isinstance(out[0], LLMError) and "HTTP 400" in str(out[0])
    assert [c.text for c in out[1:]] == ["echo: q1", "echo: q2"] and t.usage["retries"] == 0
    with FakeOpenAI(faults=["500"] * 3) as srv:
        t = LLMClient(_cfg(srv, concurrency=1, max_retries=2))
        out = t.complete_many(_msgs(2))
    assert isinstance(out[0], LLMError) and "after 3 attempts" in str(out[0])
    assert out[1].text == "echo: q1" and t.usage["failures"] == 1


def test_concurrency_limit_is_respected():
    with FakeOpenAI(latency_s=0.2) as srv:
        t = LLMClient(_cfg(srv, concurrency=4))
        t0 = time.perf_counter()
        t.complete_many(_msgs(12))
        wall = time.perf_counter() - t0
    assert srv.max_inflight == 4
    assert 0.55 < wall < 2.0  # three waves of 0.2 s


def test_rate_limiter_requests_and_tokens_per_window():
    async def timed(limiter, tokens, n):
        t0 = time.perf_counter()
        for _ in range(n):
            await limiter.acquire(tokens)
        return time.perf_counter() - t0

    assert asyncio.run(timed(_RateLimiter(2, None, window_s=0.3), 1, 6)) >= 0.6  # 3 windows of 2
    assert asyncio.run(timed(_RateLimiter(None, 100, window_s=0.3), 50, 4)) >= 0.3  # 2 windows of 100 tokens
    assert asyncio.run(timed(_RateLimiter(None, None), 10**9, 100)) < 0.05


def test_sensitive_sources_stay_local():
    assert is_local_url(None) and is_local_url("http://127.0.0.1:9/v1") and is_local_url("http://localhost/v1")
    assert is_local_url("http://[::1]:8000/v1")
    assert not is_local_url("https://api.example.com/v1") and not is_local_url("http://10.0.0.5/v1")
    remote = LLMClient(LLMConfig(base_url="https://api.example.com/v1", model="m"))
    with pytest.raises(SensitiveDataError, match="allow_sensitive_remote"):
        asyncio.run(remote.complete([{"role": "user", "content": "x"}], sensitive=True))
    with FakeOpenAI() as srv:  # loopback is allowed
        out = LLMClient(_cfg(srv)).complete_many(_msgs(1), sensitive=True)
    assert out[0].text == "echo: q0"


def test_local_backend_uses_the_in_process_model(qwen_dir, tmp_path):
    t = LLMClient(LLMConfig(model=str(qwen_dir), max_tokens=4), cache_path=tmp_path / "c.sqlite")
    first = t.complete_many(_msgs(2))
    again = t.complete_many(_msgs(2))
    assert all(isinstance(c.text, str) and c.prompt_tokens > 0 for c in first)
    assert all(c.completion_tokens > 0 for c in first if c.text)  # re-tokenised reply length
    assert all(c.cached for c in again) and t.usage["requests"] == 2


CLIENT = """
import json, sys
from pathlib import Path
from medtune.llm import LLMClient, LLMConfig
base_url, cache, out = sys.argv[1:4]
t = LLMClient(LLMConfig(base_url=base_url, model="m", concurrency=2, timeout_s=60), cache_path=Path(cache))
res = t.complete_many([[{"role": "user", "content": f"q{i}"}] for i in range(20)])
Path(out).write_text(json.dumps([r.text for r in res]))
print(json.dumps(t.usage))
"""



def test_killed_run_resumes_without_repeating_or_losing_calls(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cache, out = tmp_path / "cache.sqlite", tmp_path / "out.json"
    with FakeOpenAI(hang_after=8) as srv:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, srv.base_url, str(cache), str(out)], env=env)
        deadline = time.time() + 60
        while cache_rows(cache) < 8 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert cache_rows(cache) == 8 and not out.exists()
        srv.hang_after = None
        done = subprocess.run([sys.executable, "-c", CLIENT, srv.base_url, str(cache), str(out)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == [f"echo: q{i}" for i in range(20)]  # zero lost
    assert sorted(srv.ok) == sorted(f"q{i}" for i in range(20)) and set(srv.ok.values()) == {1}  # zero repeated
    assert json.loads(done.stdout.splitlines()[-1])["cache_hits"] == 8
