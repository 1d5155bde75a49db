"""Chat, serve (plain and streamed), web and the gateway (serve --upstream) raise the same urgent message
for the same conversation."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

pytest.importorskip("fastapi")

from medtune.chat import chat  # noqa: E402
from medtune.config import ChatConfig, GenerationSettings, SafetyConfig, ServeConfig, WebConfig  # noqa: E402
from medtune.safety import guard  # noqa: E402
from medtune.web import banner_html, endpoint_backend, local_backend, reply_stream  # noqa: E402
from servekit import running_gateway, running_server  # noqa: E402

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=4)
CONVERSATIONS = [  # (user turns, whether the guard should flag it)
    (["My husband suddenly can't lift his right arm and his words come out wrong",
      "about 20 minutes ago. should he take an aspirin?"], True),
    (["我爸胸口很痛，一直出冷汗。"], True),
    (["오늘 회사 일 때문에 피곤해 죽겠어요", "잠이 잘 오는 차가 있나요?"], False),
]


def _urgent(text: str) -> str:
    """The urgent-care paragraph an answer begins with ("" when none)."""
    return text.split("\n\n")[0] if text.startswith("⚠️") else ""


@pytest.mark.parametrize("turns, flagged", CONVERSATIONS)
def test_same_flag_in_chat_serve_web_and_gateway(qwen_dir, turns, flagged):
    import openai

    said = chat(ChatConfig(model=str(qwen_dir), generation=GREEDY), stdin=io.StringIO("\n".join(turns) + "\n"),
                out=Console(file=io.StringIO(), width=10_000))
    # the conversation up to the last user turn; earlier answers shortened to fit the tiny model's 512 tokens
    messages = [dict(m, content="ok") if m["role"] == "assistant" else m for m in said[:-1] if m["role"] != "system"]
    expected = _urgent(said[-1]["content"])
    assert bool(expected) == flagged and expected == guard(messages, SafetyConfig()).prefix.strip()
    with running_server(ServeConfig(model=str(qwen_dir), generation=GREEDY)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        kw = dict(model=str(qwen_dir), messages=messages, temperature=0, max_tokens=GREEDY.max_new_tokens)
        served = client.chat.completions.create(**kw).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        gb = client.chat.completions.create(extra_body={"medtune_locale": "en-GB"}, **kw).choices[0].message.content
        with running_gateway(ServeConfig(upstream=server.url + "/v1")) as gateway:
            via = openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0).chat.completions
            gated = via.create(**kw).choices[0].message.content
            gated_stream = "".join(c.choices[0].delta.content or "" for c in via.create(stream=True, **kw) if c.choices)
            web_on_gateway = "".join(reply_stream(messages, GREEDY, SafetyConfig(), remote=True, backend=endpoint_backend(
                WebConfig(endpoint=gateway.url + "/v1"))))
    web = "".join(reply_stream(messages, GREEDY, SafetyConfig(), local_backend(WebConfig(model=str(qwen_dir)))))
    assert _urgent(served) == _urgent(streamed) == _urgent(web) == expected
    assert _urgent(gated) == _urgent(gated_stream) == _urgent(web_on_gateway) == expected
    assert gated == served and web_on_gateway == served  # the gateway drops the upstream's own copy of the urgent text
    assert bool(banner_html(messages, SafetyConfig())) == flagged
    if flagged and "URGENT" in expected:
        assert "Call 999" in _urgent(gb) and "Call 911" in expected


def test_serve_rejects_an_unknown_locale(qwen_dir):
    import httpx

    with running_server(ServeConfig(model=str(qwen_dir), generation=GREEDY)) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json={
            "model": str(qwen_dir), "messages": [{"role": "user", "content": "hi"}], "medtune_locale": "xx-XX"})
    assert r.status_code == 400 and "medtune_locale" in r.json()["error"]["message"]
