"""medtune serve: a real server on 127.0.0.1 with the tiny model, driven by the official openai client and httpx."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from medtune.models import load_chat_model  # noqa: E402
from medtune.config import GenerationSettings, SafetyConfig, ServeConfig  # noqa: E402
from medtune.generation import chat_once, render_prompt  # noqa: E402
from medtune.safety import guard  # noqa: E402
from servekit import free_port, make_adapter, running_server  # noqa: E402

KEY = "test-key"
HI = [{"role": "user", "content": "What is hypertension?"}]


@pytest.fixture(scope="module")
def adapter_dir(qwen_dir, tmp_path_factory):
    return make_adapter(qwen_dir, tmp_path_factory.mktemp("cardio"))


@pytest.fixture(scope="module")
def server(qwen_dir, adapter_dir):
    cfg = ServeConfig(model=str(qwen_dir), adapters={"cardio": adapter_dir}, api_key=KEY, max_batch_size=8,
                      generation=GenerationSettings(max_new_tokens=16))
    with running_server(cfg) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def backend(request, server, qwen_dir):
    """The core cases run on both backends: the transformers server above, and the same tiny model as
    an f16 GGUF served by llama.cpp (``serve.backend=llamacpp``; needs the medtune[gguf] extra)."""
    if request.param == "transformers":
        yield SimpleNamespace(server=server, model=str(qwen_dir), names=[str(qwen_dir), "cardio"],
                              expected=lambda m, n=16: _expected(qwen_dir, m, max_tokens=n))
        return
    gguf = request.getfixturevalue("tiny_gguf")
    cfg = ServeConfig(model=str(gguf), backend="llamacpp", api_key=KEY, generation=GenerationSettings(max_new_tokens=16))
    with running_server(cfg) as s:
        yield SimpleNamespace(server=s, model=str(gguf), names=[str(gguf)],
                              expected=lambda m, n=16: _expected(gguf, m, max_tokens=n, backend="llamacpp"))


def _expected(model_spec, messages, adapter=None, max_tokens=16, backend="transformers"):
    model, tok = load_chat_model(str(model_spec), adapter, backend=backend)
    g = guard(messages, SafetyConfig())
    return g.prefix + chat_once(model, tok, g.messages, GenerationSettings(max_new_tokens=max_tokens)) + g.suffix


def test_openai_client_plain_and_streaming(backend):
    server, model = backend.server, backend.model
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    r = client.chat.completions.create(model=model, messages=HI, temperature=0, max_tokens=16)
    text = r.choices[0].message.content
    assert text == backend.expected(HI)
    assert r.choices[0].finish_reason in ("stop", "length")
    prompt = render_prompt(server.engine.tokenizer, guard(HI, SafetyConfig()).messages).shape[1]
    assert r.usage.prompt_tokens == prompt and 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == prompt + r.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=model, messages=HI, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_sse_wire_format_ends_with_done(backend):
    body = {"model": backend.model, "messages": HI, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", backend.server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    assert json.loads(lines[1][6:])["object"] == "chat.completion.chunk"


def test_adapter_is_chosen_by_model_field(client, qwen_dir, adapter_dir):
    base = client.chat.completions.create(model=str(qwen_dir), messages=HI, max_tokens=16).choices[0].message.content
    cardio = client.chat.completions.create(model="cardio", messages=HI, max_tokens=16).choices[0].message.content
    assert cardio != base
    assert cardio == _expected(qwen_dir, HI, adapter=adapter_dir)
    again = client.chat.completions.create(model=str(qwen_dir), messages=HI, max_tokens=16).choices[0].message.content
    assert again == base  # the adapter was switched off again for base requests


def test_models_health_metrics(backend):
    server = backend.server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == backend.names
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    client.chat.completions.create(model=backend.model, messages=HI, max_tokens=4)
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'medtune_requests_total{path="/v1/chat/completions",status="200"}' in text
    for name in ("medtune_request_latency_seconds_count", "medtune_completion_tokens_total",
                 "medtune_prompt_tokens_total", "medtune_request_errors_total"):
        value = float(next(ln for ln in text.splitlines() if ln.startswith(name + " ")).split()[-1])
        assert value >= (0 if name == "medtune_request_errors_total" else 1), name


def test_red_flag_message_comes_first_in_both_modes(backend):
    client = openai.OpenAI(base_url=backend.server.url + "/v1", api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": "我爸胸口很痛，一直出冷汗。"}]
    r = client.chat.completions.create(model=backend.model, messages=msgs, max_tokens=8)
    assert r.choices[0].message.content.startswith("⚠️ 紧急提示") and "120" in r.choices[0].message.content
    stream = client.chat.completions.create(model=backend.model, messages=msgs, max_tokens=8, stream=True)
    first = next(c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content)
    assert first.startswith("⚠️ 紧急提示")


LONG = "hypertension " * 600


@pytest.mark.parametrize("body, status, needle", [
    ({"messages": HI}, 400, "model"),
    ({"model": "M", "messages": []}, 400, "messages"),
    ({"model": "M", "messages": [{"role": "doctor", "content": "hi"}]}, 400, "role"),
    ({"model": "M", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}, 400, "last message"),
    ({"model": "M", "messages": HI, "max_tokens": 10**9}, 400, "context"),
    ({"model": "M", "messages": HI, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "M", "messages": [{"role": "user", "content": LONG}]}, 400, "context"),
    ({"model": "M", "messages": HI, "temperature": -1}, 400, "temperature"),
    ({"model": "M", "messages": HI, "n": 2}, 400, "n"),
    ({"model": "M", "messages": HI, "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "M", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "text"),
    ({"model": "no-such-model", "messages": HI}, 404, "not found"),
])
def test_bad_requests_get_openai_style_4xx(backend, body, status, needle):
    body = {k: (backend.model if v == "M" else v) for k, v in body.items()}
    r = httpx.post(backend.server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_non_json_body_and_api_key(backend):
    server = backend.server
    url = server.url + "/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    body = {"model": backend.model, "messages": HI, "max_tokens": 2}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_disconnect_mid_stream_frees_the_row(backend):
    server = backend.server
    jobs = []
    submit = server.engine.submit
    server.engine.submit = lambda job: (jobs.append(job), submit(job))[1]
    try:
        body = {"model": backend.model, "messages": [{"role": "user", "content": "Tell me about asthma."}],
                "max_tokens": 200, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i >= 4:
                    break
        deadline = time.time() + 10
        while not jobs[0].done and time.time() < deadline:
            time.sleep(0.05)
        assert jobs[0].done and jobs[0].cancelled.is_set() and len(jobs[0].tokens) < 200
    finally:
        server.engine.submit = submit
    assert httpx.get(server.url + "/health").json()["queue_depth"] == 0


@pytest.mark.slow
def test_load_200_requests_at_concurrency_16(server, qwen_dir):
    """200 requests (half streaming) at concurrency 16: no 5xx, every answer complete, batching used."""
    batches_before, jobs_before = server.engine.batches, server.engine.batched_jobs

    async def one(http, i):
        body = {"model": str(qwen_dir), "max_tokens": 12, "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": f"Question {i}: what is hypertension?"}]}
        if not body["stream"]:
            r = await http.post("/v1/chat/completions", json=body)
            return r.status_code, r.json()["choices"][0]["finish_reason"] is not None
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = [ln async for ln in r.aiter_lines() if ln]
        finished = any('"finish_reason": "' in ln for ln in lines)
        return r.status_code, lines[-1] == "data: [DONE]" and finished

    async def main():
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:
            async def limited(i):
                async with sem:
                    return await one(http, i)
            return await asyncio.gather(*(limited(i) for i in range(200)))

    results = asyncio.run(main())
    assert [s for s, _ in results if s != 200] == []
    assert all(complete for _, complete in results)
    batches = server.engine.batches - batches_before
    assert server.engine.batched_jobs - jobs_before == 200 and batches < 200  # several requests shared a generate call


@pytest.mark.slow
def test_cli_serve_subprocess(qwen_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medtune", "serve", "--model", str(qwen_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()
        r = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0).chat.completions.create(
            model=str(qwen_dir), messages=HI, max_tokens=4)
        assert r.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_real_pack_answers_the_openai_client():
    """Acceptance: `medtune serve --model qwen2.5-coder-0.5b-instruct` answers, streaming and not."""
    from medtune.models import PACKS, pack_status

    if not pack_status(PACKS["qwen2.5-coder-0.5b-instruct"])["cached"]:
        pytest.skip("pack not prepared: medtune models prepare qwen2.5-coder-0.5b-instruct")
    cfg = ServeConfig(model="qwen2.5-coder-0.5b-instruct", generation=GenerationSettings(max_new_tokens=12))
    with running_server(cfg) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        msgs = [{"role": "user", "content": "What is hypertension? One sentence."}]
        # greedy: without temperature a request takes the pack's own sampling defaults (T 0.7, top-p 0.8)
        text = client.chat.completions.create(model=cfg.model, messages=msgs, max_tokens=12,
                                              temperature=0).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=cfg.model, messages=msgs, max_tokens=12, temperature=0, stream=True) if c.choices)
        assert streamed == text and len(text.split()) > 3
        assert httpx.get(server.url + "/health").status_code == 200


def test_batched_answer_equals_the_same_request_sent_alone(server, qwen_dir):
    """Greedy answers to prompts of very different lengths are the same whether they share a batch
    (left padding, per-row stopping) or are sent one at a time."""
    prompts = ["Hi?", "What is hypertension and how is it treated in older adults with diabetes and kidney disease?",
               "高血压患者在生活方式上应该注意什么？请详细说明饮食、运动和用药。", "천식이란?",
               "List three signs of dehydration in a child, then explain when to see a doctor, then what to drink."]
    body = lambda p: {"model": str(qwen_dir), "max_tokens": 12, "messages": [{"role": "user", "content": p}]}  # noqa: E731
    headers = {"Authorization": f"Bearer {KEY}"}

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=120, headers=headers) as http:
            rs = await asyncio.gather(*(http.post("/v1/chat/completions", json=body(p)) for p in prompts))
        return [r.json()["choices"][0]["message"]["content"] for r in rs]

    batches_before, jobs_before = server.engine.batches, server.engine.batched_jobs
    wait, server.engine.batch_wait = server.engine.batch_wait, 1.0  # each request is screened before it queues
    try:
        batched = asyncio.run(together())
    finally:
        server.engine.batch_wait = wait
    assert server.engine.batches - batches_before < len(prompts), "the requests were not batched"
    alone = []
    with httpx.Client(base_url=server.url, timeout=120, headers=headers) as http:
        for p in prompts:
            alone.append(http.post("/v1/chat/completions", json=body(p)).json()["choices"][0]["message"]["content"])
    assert server.engine.batched_jobs - jobs_before == 2 * len(prompts)
    assert batched == alone
