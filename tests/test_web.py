"""medtune web: same greedy text as chat and serve, endpoint mode, and a real headless-browser test."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from rich.console import Console

pytest.importorskip("gradio")
pytest.importorskip("fastapi")

from medtune.chat import chat  # noqa: E402
from medtune.config import ChatConfig, GenerationSettings, SafetyConfig, ServeConfig, WebConfig  # noqa: E402
from medtune.safety import guard  # noqa: E402
from medtune.web import _without, launch_web, local_backend, reply_stream  # noqa: E402
from servekit import free_port, running_server  # noqa: E402

CHROMIUM = os.environ.get("MEDTUNE_CHROMIUM", "/usr/bin/chromium")
RED_FLAG = "My dad has crushing chest pain and is sweating."
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def web_local(qwen_dir):
    port = free_port()
    ui = launch_web(WebConfig(model=str(qwen_dir), port=port, generation=GREEDY), block=False)
    yield f"http://127.0.0.1:{port}/"
    ui.close()


def _web_reply(url: str, message: str) -> tuple[str, str]:
    """The page's final answer text and urgent-banner HTML for one message (through gradio's own client)."""
    from gradio_client import Client

    history, banner, _, _sources = Client(url, verbose=False).predict(message, [], "", 0.0, 1.0, GREEDY.max_new_tokens,
                                                             api_name="/respond")
    content = history[-1]["content"]
    return ("".join(p["text"] for p in content) if isinstance(content, list) else content), banner


def _web_answer(url: str, message: str) -> str:
    return _web_reply(url, message)[0]


@pytest.mark.parametrize("message", ["What is hypertension?", RED_FLAG, "고혈압 환자는 무엇을 해야 하나요?"])
def test_chat_serve_and_web_give_identical_greedy_text(qwen_dir, web_local, message):
    import openai

    said = chat(ChatConfig(model=str(qwen_dir), generation=GREEDY), prompt=message,
                out=Console(file=io.StringIO(), width=10_000))[-1]["content"]
    with running_server(ServeConfig(model=str(qwen_dir), generation=GREEDY)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        served = client.chat.completions.create(model=str(qwen_dir), messages=[{"role": "user", "content": message}],
                                                temperature=0, max_tokens=GREEDY.max_new_tokens).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=str(qwen_dir), messages=[{"role": "user", "content": message}], temperature=0,
            max_tokens=GREEDY.max_new_tokens, stream=True) if c.choices)
        shown = _web_answer(web_local, message)
        port = free_port()
        remote = launch_web(WebConfig(endpoint=server.url + "/v1", port=port, generation=GREEDY), block=False)
        try:
            via_endpoint = _web_answer(f"http://127.0.0.1:{port}/", message)
        finally:
            remote.close()
    assert said == served == streamed, (said, served, streamed)
    # gradio's Chatbot trims leading/trailing whitespace when it displays a message; the text is otherwise identical
    assert shown == via_endpoint == said.strip(), (shown, via_endpoint, said)
    web_text = "".join(reply_stream([{"role": "user", "content": message}], GREEDY, SafetyConfig(),
                                    local_backend(WebConfig(model=str(qwen_dir)))))
    assert web_text == said
    assert said.startswith("⚠️ URGENT") == (message == RED_FLAG)


@pytest.fixture(scope="module")
def gguf_web_and_server(tiny_gguf):
    """The tiny model's f16 GGUF behind ``medtune web --backend llamacpp`` and ``medtune serve --backend llamacpp``."""
    port = free_port()
    ui = launch_web(WebConfig(model=str(tiny_gguf), backend="llamacpp", port=port, generation=GREEDY), block=False)
    try:
        with running_server(ServeConfig(model=str(tiny_gguf), backend="llamacpp", generation=GREEDY)) as server:
            yield f"http://127.0.0.1:{port}/", server
    finally:
        ui.close()


@pytest.mark.parametrize("message", ["What is hypertension?", RED_FLAG])
def test_web_on_llamacpp_gives_the_chat_and_serve_answer_and_safety_flag(tiny_gguf, gguf_web_and_server, message):
    """Acceptance (issue 15): on a GGUF run by llama.cpp, web, chat and serve (plain and streamed) give the
    same greedy text, and the red-flag message gets the urgent notice first and the page's red banner."""
    import openai

    web_url, server = gguf_web_and_server
    model = str(tiny_gguf)
    said = chat(ChatConfig(model=model, backend="llamacpp", generation=GREEDY), prompt=message,
                out=Console(file=io.StringIO(), width=10_000))[-1]["content"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    request = {"model": model, "messages": [{"role": "user", "content": message}], "temperature": 0,
               "max_tokens": GREEDY.max_new_tokens}
    served = client.chat.completions.create(**request).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**request, stream=True)
                       if c.choices)
    web_text = "".join(reply_stream([{"role": "user", "content": message}], GREEDY, SafetyConfig(),
                                    local_backend(WebConfig(model=model, backend="llamacpp"))))
    shown, banner = _web_reply(web_url, message)
    assert said == served == streamed == web_text, (said, served, streamed, web_text)
    assert shown == said.strip()  # gradio's Chatbot trims the ends of a displayed message
    guarded = guard([{"role": "user", "content": message}], SafetyConfig())
    assert said.startswith(guarded.prefix) and said.endswith(guarded.suffix)
    assert said[len(guarded.prefix):len(said) - len(guarded.suffix)].strip()  # the model itself said something
    urgent = message == RED_FLAG
    assert said.startswith("⚠️ URGENT") == urgent and ("911" in banner) == urgent


def test_without_drops_messages_the_endpoint_already_added():
    pieces = ["WARN", "ING\n\n", "answer ", "text", "\n\nDISC"]
    assert "".join(_without(iter(pieces), "WARNING\n\n", "\n\nDISC")) == "answer text"
    assert "".join(_without(iter(["plain ", "answer"]), "WARNING\n\n", "\n\nDISC")) == "plain answer"
    assert "".join(_without(iter(["a", "b"]), "", "")) == "ab"


@pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM),
                    reason=f"no chromium at {CHROMIUM} (install: apt-get install -y chromium; see scripts/ci_system_deps.sh)")
def test_browser_sends_question_and_sees_streamed_answer(web_local):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(web_local, wait_until="domcontentloaded")
            page.wait_for_selector("#msg textarea", timeout=60_000)
            assert "not a diagnosis" in page.inner_text("#disclaimer")
            page.evaluate("""() => { window.lengths = [];
                new MutationObserver(() => { const b = document.querySelectorAll('#chat .bot');
                  if (b.length) window.lengths.push(b[b.length - 1].innerText.length); })
                .observe(document.querySelector('#chat'), {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#msg textarea", RED_FLAG)
            page.click("#send")
            page.wait_for_function("() => { const b = document.querySelectorAll('#chat .bot');"
                                   " return b.length && b[b.length - 1].innerText.includes('not a diagnosis'); }",
                                   timeout=60_000)
            answer = page.locator("#chat .bot").last.inner_text()
            banner = page.locator("#urgent-banner-box")
            assert banner.is_visible() and "911" in banner.inner_text()
            assert answer.lstrip().startswith("⚠️ URGENT") and "911" in answer
            lengths = page.evaluate("window.lengths")
            assert len(set(lengths)) >= 2, lengths  # the answer grew in steps: it was streamed
            page.screenshot(path=str(os.environ.get("MEDTUNE_SCREENSHOT", "/tmp/medtune-web.png")))
        finally:
            browser.close()
