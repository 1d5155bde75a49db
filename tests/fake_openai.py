"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks (stdlib only).

``POST /v1/chat/completions`` answers ``"echo: <last user content>"``. Faults are taken in
order from ``server.faults`` (one per request): ``"400"``, ``"429"``, ``"500"``, ``"slow"`` (sleeps
``slow_s`` before answering, to trip the client timeout), ``"malformed"`` (a truncated JSON
body), ``"html"`` (a 200 with an HTML page). ``latency_s`` delays every answer; after
``hang_after`` successful answers every further request blocks until shutdown (for kill tests).
Counters: ``calls`` (every request), ``ok`` (a Counter of answered prompts), ``max_inflight``.

With ``"stream": true`` the answer is Server-Sent Events (chunked), one ``chat.completion.chunk`` per
word, ``chunk_delay_s`` apart, then a usage chunk and ``data: [DONE]``. Stream faults: ``"cut"``
(the connection closes after two chunks), ``"stall"`` (silence after one chunk, ``slow_s``),
``"error_event"`` (an error event after one chunk), ``"badchunk"`` (a chunk that is not JSON).
``dropped`` counts streams whose client went away before the end. ``GET /v1/models`` lists ``model``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _event(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _sse_chunks(req: dict, text: str) -> list[bytes]:
    meta = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": req["model"]}
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1][:-1]
    out = [_event({**meta, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
    out += [_event({**meta, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in words]
    out.append(_event({**meta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    out.append(_event({**meta, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)}}))
    return out + [b"data: [DONE]\n\n"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY, as real servers: small SSE chunks leave at once

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, srv: "FakeOpenAI", req: dict, text: str, fault: str):
        """Answer as SSE over chunked transfer encoding (with the stream faults)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = _sse_chunks(req, text)
        if fault == "badchunk":
            events = events[:2] + [b"data: {not json\n\n"]
        try:
            for i, event in enumerate(events):
                if i and srv.chunk_delay_s:
                    time.sleep(srv.chunk_delay_s)
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()
                if i == 2 and fault == "cut":
                    self.close_connection = True
                    return
                if i == 1 and fault == "stall":
                    srv.stop.wait(srv.slow_s)
                    return
                if i == 1 and fault == "error_event":
                    err = _event({"error": {"message": "internal boom", "type": "server_error"}})
                    self.wfile.write(f"{len(err):x}\r\n".encode() + err + b"\r\n0\r\n\r\n")
                    return
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            with srv.lock:
                srv.dropped += 1
            self.close_connection = True
            return
        with srv.lock:
            srv.ok[req["messages"][-1]["content"]] += 1

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            return self._send(200, json.dumps({"object": "list", "data": [{"id": self.server.owner.model}]}).encode())
        self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self):
        try:
            self._answer(self.server.owner)
        finally:
            with self.server.owner.lock:
                self.server.owner.inflight -= 1

    def _answer(self, srv: "FakeOpenAI"):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with srv.lock:
            srv.calls += 1
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
            fault = srv.faults.popleft() if srv.faults else "ok"
            # answers are reserved under the lock, so concurrent requests cannot overshoot ``hang_after``
            hang = srv.hang_after is not None and fault in ("ok", "slow") and srv.granted >= srv.hang_after
            srv.granted += fault in ("ok", "slow") and not hang
        if hang:
            srv.stop.wait()
            return
        if fault == "429":
            return self._send(429, b'{"error": {"message": "rate limited"}}', headers={"Retry-After": "0"})
        if fault == "400":
            return self._send(400, b'{"error": {"message": "bad request"}}')
        if fault == "500":
            return self._send(500, b'{"error": {"message": "boom"}}')
        if fault == "malformed":
            return self._send(200, b'{"id": "x", "choices": [{"message": ')
        if fault == "html":
            return self._send(200, b"<html>Bad gateway</html>", ctype="text/html")
        if fault == "slow":
            srv.stop.wait(srv.slow_s)
        if srv.latency_s:
            time.sleep(srv.latency_s)
        prompt = req["messages"][-1]["content"]
        text = srv.reply(req) if srv.reply else f"echo: {prompt}"
        if req.get("stream"):
            return self._stream(srv, req, text, fault)
        body = {"id": "cmpl-1", "object": "chat.completion", "created": int(time.time()), "model": req["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text), "total_tokens": len(prompt) + len(text)}}
        try:
            self._send(200, json.dumps(body).encode())
        except (BrokenPipeError, ConnectionResetError):
            return
        with srv.lock:
            srv.ok[prompt] += 1




class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class FakeOpenAI:
    """Start with ``with FakeOpenAI() as srv:``; ``srv.base_url`` is ``http://127.0.0.1:<port>/v1``."""

    def __init__(self, faults=(), latency_s: float = 0.0, slow_s: float = 5.0, hang_after: int | None = None,
                 reply=None, chunk_delay_s: float = 0.0, model: str = "fake-model"):
        self.faults, self.latency_s, self.slow_s, self.hang_after = deque(faults), latency_s, slow_s, hang_after
        self.reply, self.chunk_delay_s, self.model, self.dropped = reply, chunk_delay_s, model, 0
        self.calls, self.ok, self.lock, self.stop = 0, Counter(), threading.Lock(), threading.Event()
        self.granted = 0  # answers promised so far (counted before sending, unlike ``ok``)
        self.inflight = self.max_inflight = 0
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def cache_rows(db) -> int:
    """Number of replies in a teacher cache file (0 while it does not exist yet)."""
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT count(*) FROM replies").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


if __name__ == "__main__":  # manual use and benchmarks: python tests/fake_openai.py [latency_s] [chunk_delay_s]
    import sys

    args = [float(a) for a in sys.argv[1:3]]
    with FakeOpenAI(latency_s=args[0] if args else 0.0, chunk_delay_s=args[1] if len(args) > 1 else 0.0) as s:
        print(s.base_url, flush=True)
        s.stop.wait()
