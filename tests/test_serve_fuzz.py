"""Property tests (Hypothesis) on the chat-completions body of a real medtune server on 127.0.0.1.

Whatever the body, the server answers 200 or a 4xx with an OpenAI-style JSON error body, never a
5xx, and the kept-alive connection still serves the next request; the same for gateway mode in front
of the server (``serve --upstream``). Examples are few (the tiny
model answers 2 tokens) so the suite runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medtune.config import GenerationSettings  # noqa: E402
from servekit import serving  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MODEL = "M"  # replaced by the served model's name

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
contents = st.text(max_size=200) | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": st.text(max_size=40)}), max_size=3)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", ""]), "content": contents | json_values}),
    max_size=4) | json_values
bodies = st.fixed_dictionaries({"model": st.sampled_from([MODEL, "cardio", ""]) | json_values, "messages": messages},
                               optional={
    "max_tokens": st.integers(min_value=-2, max_value=4) | st.sampled_from([10**9, 2**64]) | json_values,
    "temperature": st.floats(min_value=-1, max_value=3, allow_nan=False) | json_values,
    "top_p": st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
    "seed": st.integers(min_value=-2**65, max_value=2**65) | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3) | json_values,
    "stream": st.booleans() | json_values, "n": st.integers(min_value=0, max_value=3),
    "stream_options": st.just({"include_usage": True}) | json_values,
    "tools": json_values, "logprobs": json_values})


@pytest.fixture(scope="module", params=["engine", "gateway"])
def server(request, qwen_dir):
    with serving(request.param, qwen_dir, generation=GenerationSettings(max_new_tokens=2), max_body_bytes=16 * 1024) as s:
        u = urlparse(s.url)
        s.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        yield s


def _post(server, body: bytes) -> tuple[int, bytes]:
    server.conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = server.conn.getresponse()
    return r.status, r.read()


def _check(status: int, data: bytes, stream: bool) -> None:
    assert status < 500, data[:500]
    if status >= 400:
        err = json.loads(data)["error"]
        assert isinstance(err["message"], str) and err["type"]
    elif not stream:
        assert json.loads(data)["object"] == "chat.completion"


def _fill(body, name: str):
    return {k: (name if v == MODEL else v) for k, v in body.items()} if isinstance(body, dict) else body


@FUZZ
@given(body=bodies)
def test_any_json_body_gets_200_or_a_json_4xx(server, body):
    body = _fill(body, str(server.cfg.model))
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    status, data = _post(server, raw)
    _check(status, data, stream=body.get("stream") is True)
    # the same connection still answers a good request
    good = {"model": str(server.cfg.model), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert _post(server, json.dumps(good).encode())[0] == 200


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_get_a_json_4xx(server, raw):
    status, data = _post(server, raw)
    _check(status, data, stream=False)
