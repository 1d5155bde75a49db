"""Gateway mode (``medtune serve --upstream``): the clinical layer in front of an OpenAI-compatible server.

The upstream is a real HTTP server on 127.0.0.1: the small stdlib server of ``fake_openai.py``
(for exact failure cases: refused, 429, 500, timeouts, streams cut mid-way), and real engines in
child processes: ``medtune serve`` on the tiny model, llama-cpp-python's OpenAI server on its GGUF,
and ``vllm serve`` when a vLLM venv is there (``MEDTUNE_VLLM_PYTHON``, scripts/setup_vllm_cpu.sh).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from medtune.config import SafetyConfig, ServeConfig  # noqa: E402
from medtune.safety import DISCLAIMER, guard  # noqa: E402
from servekit import Process, free_port, running_gateway  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

RED_FLAG = "My father has crushing chest pain and is sweating a lot."
ORDINARY = "What foods are high in fibre?"
SUFFIX = "\n\n" + DISCLAIMER["en"]
ROOT = Path(__file__).resolve().parents[1]


def _gateway_cfg(upstream: str, **kw) -> ServeConfig:
    return ServeConfig(upstream=upstream, upstream_read_timeout_s=kw.pop("upstream_read_timeout_s", 10), **kw)


def _ask(url: str, content: str, stream: bool = False, key: str | None = None, **extra) -> httpx.Response:
    body = {"model": extra.pop("model", "fake-model"), "messages": [{"role": "user", "content": content}],
            "stream": stream, **extra}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def _sse(r: httpx.Response) -> tuple[str, list[dict]]:
    """(content, events) of an SSE body."""
    events = [json.loads(ln[5:]) for ln in r.text.splitlines() if ln.startswith("data:") and ln != "data: [DONE]"]
    text = "".join((e.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for e in events if "choices" in e)
    return text, events


@pytest.fixture
def fake():
    with FakeOpenAI() as srv:
        yield srv


def test_ordinary_answer_passes_unchanged_and_a_red_flag_begins_with_the_urgent_message(fake):
    urgent = guard([{"role": "user", "content": RED_FLAG}], SafetyConfig()).prefix
    assert urgent
    with running_gateway(_gateway_cfg(fake.base_url)) as gw:
        plain = _ask(gw.url, ORDINARY).json()["choices"][0]["message"]["content"]
        assert plain == f"echo: {ORDINARY}" + SUFFIX
        text, events = _sse(_ask(gw.url, ORDINARY, stream=True))
        assert text == plain and len(events) >= 6  # one chunk per upstream word: streamed, not buffered
        for stream in (False, True):
            r = _ask(gw.url, RED_FLAG, stream=stream)
            text = _sse(r)[0] if stream else r.json()["choices"][0]["message"]["content"]
            assert text == urgent + f"echo: {RED_FLAG}" + SUFFIX
        first = _sse(_ask(gw.url, RED_FLAG, stream=True))[1]
        contents = [e["choices"][0]["delta"].get("content") for e in first if e.get("choices")]
        assert next(c for c in contents if c) == urgent  # the urgent message is the first text of the stream


def test_the_upstream_gets_the_guarded_conversation_and_the_client_sampling_fields(fake):
    seen = []
    fake.reply = lambda req: seen.append(req) or "ok"
    with running_gateway(_gateway_cfg(fake.base_url)) as gw:
        _ask(gw.url, ORDINARY, temperature=0.3, top_p=0.9, max_tokens=7, seed=5, stop=["x"])
    req = seen[0]
    assert req["stream"] is True and req["messages"][0]["role"] == "system"  # the safety system prompt
    assert {k: req[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")} == \
        {"temperature": 0.3, "top_p": 0.9, "max_tokens": 7, "seed": 5, "stop": ["x"]}
    assert "medtune_locale" not in req


@pytest.mark.parametrize("faults, status, code", [
    (["500"], 502, "upstream_error"), (["400"], 400, "upstream_rejected"), (["malformed"], 502, "upstream_error"),
    (["html"], 502, "upstream_error"), (["429", "429", "429"], 503, "upstream_busy"),
    (["slow"], 504, "upstream_timeout"), (["badchunk"], 502, "upstream_malformed"),
    (["stall"], 504, "upstream_timeout")])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_map_to_502_503_504_without_internal_text(faults, status, code, stream):
    with FakeOpenAI(faults=faults, slow_s=3) as fake, \
            running_gateway(_gateway_cfg(fake.base_url, upstream_read_timeout_s=0.5, upstream_retries=2)) as gw:
        start = time.perf_counter()
        r = _ask(gw.url, ORDINARY, stream=stream)
        took = time.perf_counter() - start
        if stream and faults[0] in ("badchunk", "stall"):  # a token was sent: the stream ends with an error event
            assert r.status_code == 200
            text, events = _sse(r)
            assert text == "echo: " and events[-1]["error"]["code"] == code and r.text.endswith("data: [DONE]\n\n")
            error = events[-1]["error"]
        else:
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
        assert "boom" not in r.text and "Traceback" not in r.text and "rate limited" not in r.text
        assert ("bad request" in error["message"]) == (code == "upstream_rejected")  # a client fault says why
        assert took < 5  # never hangs: bounded by the read timeout
        assert fake.calls == (3 if code == "upstream_busy" else 1)  # only safe failures were retried
        assert _ask(gw.url, ORDINARY).status_code == 200  # and the gateway still answers


def test_retries_safe_failures_before_the_first_token_only(fake):
    fake.faults.extend(["429", "cut"])  # busy (retried), then a stream cut after two words (not retried)
    with running_gateway(_gateway_cfg(fake.base_url, upstream_retries=2)) as gw:
        text, events = _sse(_ask(gw.url, "one two three four", stream=True))
        assert text == "echo: one " and events[-1]["error"]["code"] == "upstream_disconnected"
    assert fake.calls == 2
    fake.faults.append("429")
    with running_gateway(_gateway_cfg(fake.base_url, upstream_retries=1)) as gw:
        r = _ask(gw.url, ORDINARY)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("echo:")
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'medtune_upstream_errors_total{code="upstream_busy"} 1' in metrics
        assert "medtune_upstream_retries_total 1" in metrics


def test_upstream_down_is_503_with_retry_after_and_a_red_flag_keeps_its_urgent_message():
    port = free_port()  # nothing listens here
    cfg = _gateway_cfg(f"http://127.0.0.1:{port}/v1", upstream_model="m", upstream_retries=1)
    with running_gateway(cfg) as gw:
        r = _ask(gw.url, ORDINARY, model="m")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "upstream_unavailable"
        r = _ask(gw.url, RED_FLAG, model="m", stream=True)
        urgent = guard([{"role": "user", "content": RED_FLAG}], SafetyConfig()).prefix.strip()
        assert r.status_code == 503 and r.json()["error"]["message"].startswith(urgent)
        assert httpx.get(gw.url + "/health").json()["status"] == "ok"
        assert _ask(gw.url, ORDINARY, model="nope").status_code == 404


def test_a_client_that_goes_away_closes_the_upstream_stream():
    words = " ".join(f"w{i}" for i in range(400))
    with FakeOpenAI(chunk_delay_s=0.02, reply=lambda req: words) as fake, \
            running_gateway(_gateway_cfg(fake.base_url)) as gw:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 6:
                    break
        deadline = time.time() + 5
        while fake.dropped < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert fake.dropped == 1 and not fake.ok  # the upstream saw the disconnect and did not finish
        assert httpx.get(gw.url + "/health").json()["inflight"] == 0


def test_keys_rate_limits_and_a_log_without_message_text(fake, tmp_path, caplog):
    keys = tmp_path / "keys"
    keys.write_text("# clinic keys\nkey-a\nkey-b\n")
    secret = "my-secret-symptom-zebra"
    cfg = _gateway_cfg(fake.base_url, api_key_file=keys, rate_limit_per_minute=3)
    with caplog.at_level(logging.INFO), running_gateway(cfg) as gw:
        assert _ask(gw.url, secret).status_code == 401
        assert [_ask(gw.url, secret, key="key-a").status_code for _ in range(4)] == [200, 200, 200, 429]
        r = _ask(gw.url, secret, key="key-a")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert _ask(gw.url, secret, key="key-b").status_code == 200  # per key
        assert httpx.get(gw.url + "/metrics").status_code == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/v1/chat/completions 200" in logged and "key-a" not in logged and secret not in logged
    caplog.clear()
    with caplog.at_level(logging.INFO), running_gateway(_gateway_cfg(fake.base_url, log_message_text=True)) as gw:
        _ask(gw.url, secret)
    assert secret in "\n".join(r.getMessage() for r in caplog.records)


def test_cli_gateway_mode_and_its_errors(fake, tmp_path):
    from typer.testing import CliRunner

    from medtune.cli import app

    result = CliRunner().invoke(app, ["serve", "--upstream", f"http://127.0.0.1:{free_port()}/v1"])
    assert result.exit_code == 2 and "--upstream-model" in result.output
    result = CliRunner().invoke(app, ["serve", "--upstream", "127.0.0.1:8000"])
    assert result.exit_code == 2 and "http(s) URL" in result.output
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "medtune", "serve", "--upstream", fake.base_url, "--port", str(port)]
    with Process(cmd, port, env=env, timeout=120) as gw:
        r = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": ORDINARY}])
        assert r.choices[0].message.content == f"echo: {ORDINARY}" + SUFFIX


# ---- real upstream processes ------------------------------------------------------------------


def _medtune_serve(model_dir, port: int, *extra: str) -> Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "medtune", "serve", "--model", str(model_dir), "--port", str(port), *extra]
    return Process(cmd, port, env=env)


def _direct(url: str, model: str, messages: list[dict], stream: bool, **kw) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    if not stream:
        return client.chat.completions.create(model=model, messages=messages, **kw).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model=model, messages=messages, stream=True, **kw) if c.choices)


@pytest.mark.slow  # a server or trainer in a child process (seconds): full tier
@pytest.mark.parametrize("content", [ORDINARY, RED_FLAG])
def test_in_front_of_medtune_serve_the_answer_is_the_same_as_calling_it_directly(qwen_dir, content):
    """A medtune upstream runs the same turn pipeline: the gateway drops its copy of prefix and disclaimer."""
    port = free_port()
    greedy = dict(temperature=0, max_tokens=12)
    messages = [{"role": "user", "content": content}]
    with _medtune_serve(qwen_dir, port) as up, running_gateway(_gateway_cfg(up.url + "/v1")) as gw:
        for stream in (False, True):
            direct = _direct(up.url, str(qwen_dir), messages, stream, **greedy)
            via = _direct(gw.url, str(qwen_dir), messages, stream, **greedy)
            assert via == direct and via.endswith(SUFFIX)
            assert via.startswith("⚠️") == (content == RED_FLAG)


def test_in_front_of_llama_cpp_server(tiny_gguf):
    pytest.importorskip("llama_cpp.server.app", reason="needs the gguf extra with its server: pip install 'medtune[gguf]'")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--port", str(port),
           "--model_alias", "tiny", "--n_ctx", "512", "--verbose", "False"]
    greedy = dict(temperature=0, max_tokens=8, seed=0)
    with Process(cmd, port, timeout=120) as up, running_gateway(_gateway_cfg(up.url + "/v1")) as gw:
        for content in (ORDINARY, RED_FLAG):
            turn = guard([{"role": "user", "content": content}], SafetyConfig())
            direct = _direct(up.url, "tiny", turn.messages, False, **greedy)
            for stream in (False, True):
                via = _direct(gw.url, "tiny", [{"role": "user", "content": content}], stream, **greedy)
                assert via == turn.prefix + direct + turn.suffix


def _vllm_python() -> str | None:
    python = os.environ.get("MEDTUNE_VLLM_PYTHON", "/work/vllm-venv/bin/python")
    if not Path(python).is_file():
        return None
    ok = subprocess.run([python, "-c", "import vllm"], capture_output=True, timeout=120).returncode == 0
    return python if ok else None


def _vllm_tiny_dir(tokenizer, path: Path) -> Path:
    """A 2-layer random Qwen2 with head_dim 64 (vLLM's CPU attention has no kernel for the usual tiny head_dim 16)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=0,
                         tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_in_front_of_vllm_serve(tokenizer, tmp_path):
    python = _vllm_python()
    if python is None:
        pytest.skip("no vLLM venv: run scripts/setup_vllm_cpu.sh (or set MEDTUNE_VLLM_PYTHON)")
    model_dir = _vllm_tiny_dir(tokenizer, tmp_path / "tiny-hd64")
    port = free_port()
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--port", str(port),
           "--served-model-name", "tiny", "--max-model-len", "512", "--dtype", "float32"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    greedy = dict(temperature=0, max_tokens=8)
    with Process(cmd, port, env=env, timeout=600) as up, running_gateway(_gateway_cfg(up.url + "/v1")) as gw:
        for content in (ORDINARY, RED_FLAG):
            turn = guard([{"role": "user", "content": content}], SafetyConfig())
            direct = _direct(up.url, "tiny", turn.messages, False, **greedy)
            for stream in (False, True):
                via = _direct(gw.url, "tiny", [{"role": "user", "content": content}], stream, **greedy)
                assert via == turn.prefix + direct + turn.suffix


@pytest.mark.slow  # a server or trainer in a child process (seconds): full tier
def test_upstream_killed_mid_stream_gives_a_clean_error_event_and_the_gateway_stays_healthy(qwen_dir):
    port = free_port()
    up = _medtune_serve(qwen_dir, port, "--set", "serve.safety.enabled=false")
    with up, running_gateway(_gateway_cfg(up.url + "/v1", upstream_retries=0)) as gw:
        body = {"model": str(qwen_dir), "messages": [{"role": "user", "content": ORDINARY}], "stream": True,
                "max_tokens": 200, "temperature": 0.9, "seed": 1}
        lines = []
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in filter(None, r.iter_lines()):
                lines.append(line)
                if len(lines) == 4:  # role chunk + 3 tokens
                    up.kill()
        events = [json.loads(ln[5:]) for ln in lines if ln.startswith("data: {")]
        assert r.status_code == 200 and lines[-1] == "data: [DONE]"
        assert events[-1]["error"]["code"] == "upstream_disconnected" and "Traceback" not in json.dumps(events)
        assert httpx.get(gw.url + "/health").json() == {"status": "ok", "inflight": 0}
        r = _ask(gw.url, ORDINARY, model=str(qwen_dir))
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
        up.start()  # restarted: the same gateway answers again
        assert _ask(gw.url, ORDINARY, model=str(qwen_dir), max_tokens=4).status_code == 200


@pytest.mark.slow
def test_soak_with_the_upstream_killed_and_restarted_answers_no_5xx_but_502_503_504(qwen_dir):
    """bench/soak_gateway.py at a smaller size: 120 requests at c=8, the upstream killed after 40 answers."""
    sys.path.insert(0, str(ROOT / "bench"))
    from soak_gateway import run

    report = run(str(qwen_dir), 120, 8, 4, kill_at=40, down_s=1.0)
    assert report["5xx_not_502_503_504"] == 0 and report["client_errors"] == 0, report
    assert report["after_restart"] == "200" and report["statuses"].get("200", 0) >= 30, report
    assert set(report["statuses"]) <= {"200", "200+error", "400", "413", "502", "503", "504"}, report
