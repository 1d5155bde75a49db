"""medtune serve under hostile input (issue 11): no request content gives a 5xx, freezes the event
loop or drops the connection; /metrics, /docs and keys are locked down. Real server on 127.0.0.1,
run twice: the engine itself, and gateway mode (``serve --upstream``) in front of it (issue 26)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

pytest.importorskip("fastapi")

from medtune.config import GenerationSettings, ServeConfig  # noqa: E402
from medtune.errors import ConfigError  # noqa: E402
from medtune.serve import api_key  # noqa: E402
from servekit import running_server, serving  # noqa: E402

KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
LIMIT = 64 * 1024


@pytest.fixture(scope="module", params=["engine", "gateway"])
def server(request, qwen_dir):
    with serving(request.param, qwen_dir, api_key=KEY, max_body_bytes=LIMIT,
                 generation=GenerationSettings(max_new_tokens=4)) as s:
        yield s


def _body(qwen_dir, content="What is hypertension?", **extra) -> bytes:
    return json.dumps({"model": str(qwen_dir), "messages": [{"role": "user", "content": content}],
                       "max_tokens": 2, **extra}).encode()


class Conn:
    """One kept-alive HTTP/1.1 connection; ``post`` fails if the server closed it."""

    def __init__(self, url: str):
        u = urlparse(url)
        self.http = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.sock = None

    def post(self, body: bytes, path="/v1/chat/completions", headers=AUTH) -> tuple[int, dict]:
        self.http.request("POST", path, body=body, headers=headers)
        r = self.http.getresponse()
        data = json.loads(r.read())
        if self.sock is None:
            self.sock = self.http.sock
        assert self.http.sock is self.sock, "the server closed the connection"
        return r.status, data


def _assert_error(status: int, data: dict, expected: int, needle: str = ""):
    assert status == expected, data
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]
    assert "Traceback" not in err["message"] and "Error(" not in err["message"]


def test_seed_out_of_range_is_400_and_the_connection_stays(server, qwen_dir):
    conn = Conn(server.url)
    for seed in (2**64, 2**63, -1):
        status, data = conn.post(_body(qwen_dir, seed=seed, temperature=0.7))
        _assert_error(status, data, 400, "seed")
    status, data = conn.post(_body(qwen_dir, seed=2**63 - 1, temperature=0.7))
    assert status == 200 and data["choices"][0]["message"]["content"]


def test_lone_surrogate_is_400_and_the_connection_stays(server, qwen_dir):
    conn = Conn(server.url)
    for raw in (b'{"model": "M", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
                b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
                b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud83d"]}'):
        status, data = conn.post(raw.replace(b'"M"', json.dumps(str(qwen_dir)).encode()))
        _assert_error(status, data, 400, "Unicode")
    assert conn.post(_body(qwen_dir))[0] == 200


def test_body_over_the_limit_is_413(server, qwen_dir):
    big = _body(qwen_dir, content="a" * LIMIT)
    conn = Conn(server.url)
    _assert_error(*conn.post(big), 413, str(LIMIT))
    chunks = (big[i:i + 4096] for i in range(0, len(big), 4096))  # no Content-Length: counted while read
    r = httpx.post(server.url + "/v1/chat/completions", content=chunks, headers=AUTH)
    _assert_error(r.status_code, r.json(), 413)
    assert conn.post(_body(qwen_dir))[0] == 200


def test_internal_error_hides_its_text_and_keeps_the_connection(server, qwen_dir, monkeypatch):
    def boom(messages):
        raise RuntimeError("secret internal detail")

    conn = Conn(server.url)
    if server.kind == "engine":
        monkeypatch.setattr(server.engine, "prompt_ids", boom)
    else:
        monkeypatch.setattr("medtune.gateway.prepare_turn", lambda *a, **k: boom(a))
    status, data = conn.post(_body(qwen_dir))
    _assert_error(status, data, 500)
    assert "secret" not in json.dumps(data) and data["error"]["type"] == "server_error"
    monkeypatch.undo()
    assert conn.post(_body(qwen_dir))[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["engine", "gateway"])
def test_health_answers_while_a_large_request_is_checked(qwen_dir, kind):
    """A 3.5 MB message is parsed, tokenised and screened off the event loop: /health stays fast
    (through a gateway, the upstream's context-length 400 comes back as a 400 that says so)."""
    with serving(kind, qwen_dir, generation=GenerationSettings(max_new_tokens=2)) as s:
        big = _body(qwen_dir, content="he is not unconscious " * 160_000)
        result = {}
        t = threading.Thread(target=lambda: result.update(
            r=httpx.post(s.url + "/v1/chat/completions", content=big, timeout=300)))
        t.start()
        worst = 0.0
        while t.is_alive():
            start = time.perf_counter()
            assert httpx.get(s.url + "/health", timeout=30).status_code == 200
            worst = max(worst, time.perf_counter() - start)
            time.sleep(0.02)
        t.join()
        _assert_error(result["r"].status_code, result["r"].json(), 400, "context")
        assert worst < 1.0, worst


def test_metrics_need_the_key_and_label_only_known_routes(server):
    assert httpx.get(server.url + "/metrics").status_code == 401
    for i in range(30):
        httpx.get(server.url + f"/junk{i}")
    httpx.get(server.url + '/x"} 1%0Afake_metric{a="b')
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert "junk" not in text and "fake_metric" not in text
    assert 'medtune_requests_total{path="other",status="404"}' in text
    paths = {ln.split('path="')[1].split('"')[0] for ln in text.splitlines() if ln.startswith("medtune_requests_total{")}
    assert paths <= {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "other"}


def test_docs_are_off_by_default(server):
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = httpx.get(server.url + path, headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["message"]


def test_docs_and_public_metrics_when_asked(qwen_dir):
    cfg = ServeConfig(model=str(qwen_dir), api_key=KEY, docs=True, metrics_public=True)
    with running_server(cfg) as s:
        assert httpx.get(s.url + "/metrics").status_code == 200
        assert httpx.get(s.url + "/openapi.json").status_code == 401
        assert httpx.get(s.url + "/openapi.json", headers=AUTH).json()["info"]["title"] == "medtune"
        assert httpx.get(s.url + "/docs", headers=AUTH).status_code == 200


def test_api_key_from_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDTUNE_API_KEY", raising=False)
    assert api_key(ServeConfig()) is None
    monkeypatch.setenv("MEDTUNE_API_KEY", "from-env")
    assert api_key(ServeConfig()) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert api_key(ServeConfig(api_key_file=tmp_path / "key")) == "from-file"
    assert api_key(ServeConfig(api_key="given", api_key_file=tmp_path / "key")) == "given"
    (tmp_path / "empty").write_text("\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ConfigError, match=str(bad.name)):
            api_key(ServeConfig(api_key_file=bad))


def test_a_stream_dropped_mid_way_leaves_the_server_serving(server, qwen_dir):
    body = json.loads(_body(qwen_dir, max_tokens=3))
    for _ in range(3):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                          headers=AUTH, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event, then the client goes away
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    assert Conn(server.url).post(_body(qwen_dir))[0] == 200
