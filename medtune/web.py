"""Web chat (``medtune web``): a gradio page on a local model or any OpenAI-compatible endpoint.

The page has a multi-turn streaming chat, a system prompt box, generation settings, the medical
disclaimer always visible and a red urgent-care banner that appears above the chat when the
safety layer finds a red flag. With ``rag.index`` (``--index DIR``) answers are grounded in the
index and the sources of the last answer show under the chat as expandable blocks. Answers are produced by :func:`reply_stream`, which for a local
model is exactly the chat path (:func:`medtune.turn.stream_turn` over
:func:`medtune.generation.stream_chat`), so chat, serve and web give the same greedy text.
"""

from __future__ import annotations

import html
import os
from typing import Callable, Iterator

from medtune.config import GenerationSettings, RagSettings, SafetyConfig, WebConfig
from medtune.safety import DISCLAIMER, guard
from medtune.turn import Turn, Unrepeat, prepare_turn, stream_turn

try:
    import gradio as gr
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("medtune web needs the web extra: pip install 'medtune[web]'") from e

BANNER_STYLE = ("background:#b00020;color:#fff;font-size:1.15em;font-weight:700;padding:14px 18px;"
                "border-radius:8px;margin:6px 0")


def local_backend(cfg: WebConfig) -> Callable[..., Iterator[str]]:
    """Model text pieces from the local model in ``cfg`` (no safety layer; see :func:`reply_stream`)."""
    from medtune.models import load_chat_model
    from medtune.generation import stream_chat

    model, tokenizer = load_chat_model(cfg.model, cfg.adapter, cfg.trust_remote_code, cfg.backend)
    return lambda messages, settings, meta=None: stream_chat(model, tokenizer, messages, settings)


def endpoint_backend(cfg: WebConfig) -> Callable[..., Iterator[str]]:
    """Model text pieces streamed from an OpenAI-compatible endpoint with the official client.

    The returned ``generate(messages, settings, meta=None)`` puts the ``citations`` that a medtune
    server or gateway with an index sends on its first chunk into ``meta["citations"]``.
    """
    import openai

    client = openai.OpenAI(base_url=cfg.endpoint, api_key=cfg.api_key or os.environ.get("MEDTUNE_API_KEY") or "none",
                           max_retries=1)
    name = cfg.endpoint_model or client.models.list().data[0].id

    def generate(messages: list[dict], settings: GenerationSettings, meta: dict | None = None) -> Iterator[str]:
        stream = client.chat.completions.create(
            model=name, messages=messages, stream=True, temperature=settings.temperature, top_p=settings.top_p,
            max_tokens=settings.max_new_tokens, seed=settings.seed)
        for chunk in stream:
            if not chunk.choices:
                continue
            cited = (chunk.choices[0].delta.model_extra or {}).get("citations")
            if cited is not None and meta is not None:
                meta["citations"] = cited
            if chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return generate


def _without(pieces: Iterator[str], prefix: str, suffix: str) -> Iterator[str]:
    """Pass ``pieces`` through, dropping a leading ``prefix`` and trailing ``suffix`` if the source already
    added them (endpoints that run the medtune turn pipeline themselves), see :class:`medtune.turn.Unrepeat`."""
    strip = Unrepeat(prefix, suffix)
    for piece in pieces:
        out = strip.feed(piece)
        if out:
            yield out
    yield strip.end()


def reply_stream(messages: list[dict], settings: GenerationSettings, safety: SafetyConfig,
                 backend: Callable[..., Iterator[str]], remote: bool = False, rag: RagSettings | None = None,
                 turn: Turn | None = None, meta: dict | None = None) -> Iterator[str]:
    """The answer as text pieces: urgent message first, model text, then disclaimer (per ``safety``);
    grounded in ``rag.index`` when set (retrieval runs here, also in front of an endpoint).
    ``turn``: an already prepared :class:`medtune.turn.Turn` for ``messages`` (else prepared here);
    ``meta``: gets the ``citations`` an endpoint sends (a medtune gateway or server with an index)."""
    turn = turn or prepare_turn(messages, safety, rag=rag)
    if remote:
        return stream_turn(turn, lambda m: _without(backend(m, settings, meta), turn.prefix, turn.suffix))
    return stream_turn(turn, lambda m: backend(m, settings))


def sources_html(citations: list[dict] | None) -> str:
    """The reply's sources as expandable ``<details>`` blocks (summary: marker, doc › section › page, then
    file, passage id, span, score)."""
    if not citations:
        return ""
    items = []
    for c in citations:
        span = f", chars {c['char_span'][0]}&ndash;{c['char_span'][1]}" if c.get("char_span") else ""
        items.append(f"<details class='source'><summary>[{c['marker']}] {html.escape(str(c.get('label') or ''))} "
                     f"({html.escape(str(c['source_file']))}, "
                     f"{html.escape(str(c['passage_id']))}{span}, score {c['score']:.4f})</summary>"
                     f"<blockquote style='white-space:pre-wrap'>{html.escape(c.get('text', ''))}</blockquote></details>")
    return "<div id='sources-list'><b>Sources</b>" + "".join(items) + "</div>"


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def banner_html(messages: list[dict], safety: SafetyConfig) -> str:
    """Red urgent-care banner for the last user message, or "" when there is no red flag."""
    g = guard(messages, safety)
    return f'<div id="urgent-banner-box" role="alert" style="{BANNER_STYLE}">{html.escape(g.prefix.strip())}</div>' if g.prefix else ""


def build_ui(cfg: WebConfig, backend: Callable[..., Iterator[str]]) -> "gr.Blocks":
    """The gradio page: chat, system prompt, settings, disclaimer and urgent banner."""
    remote = cfg.endpoint is not None and cfg.model is None
    g0 = cfg.generation

    def respond(message: str, history: list[dict], system: str, temperature: float, top_p: float, max_tokens: int):
        history = [{"role": m["role"], "content": _text(m["content"])} for m in history or []]
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + history
        messages.append({"role": "user", "content": message})
        banner = banner_html(messages, cfg.safety)
        turn = prepare_turn(messages, cfg.safety, rag=cfg.rag)
        sources = sources_html(turn.citations)
        settings = g0.model_copy(update={"temperature": temperature, "top_p": top_p, "max_new_tokens": int(max_tokens)})
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, banner, "", sources
        meta: dict = {}  # citations from an endpoint that retrieves (a medtune gateway or server with --index)
        for piece in reply_stream(messages, settings, cfg.safety, backend, remote=remote, rag=cfg.rag, turn=turn, meta=meta):
            history[-1]["content"] += piece
            if turn.citations is None and meta.get("citations") is not None:
                sources = sources_html(meta["citations"])
            yield history, banner, "", sources

    with gr.Blocks(title="medtune chat") as ui:
        gr.Markdown("## medtune chat\n" + f"*{DISCLAIMER['en']} {DISCLAIMER['zh']} {DISCLAIMER['ko']}*",
                    elem_id="disclaimer")
        banner = gr.HTML("", elem_id="urgent-banner")
        chatbot = gr.Chatbot(elem_id="chat", label="conversation", height=420)
        sources = gr.HTML("", elem_id="sources")
        with gr.Row():
            box = gr.Textbox(placeholder="Describe your question or symptoms...", show_label=False, elem_id="msg", scale=5)
            send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
        with gr.Accordion("System prompt and generation settings", open=False):
            system = gr.Textbox(cfg.system or cfg.safety.system_prompt or "", label="System prompt", lines=3)
            temperature = gr.Slider(0.0, 2.0, value=g0.temperature, step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=g0.top_p, step=0.05, label="top_p")
            max_tokens = gr.Slider(1, 2048, value=g0.max_new_tokens, step=1, label="max tokens")
        clear = gr.Button("Clear conversation")
        inputs = [box, chatbot, system, temperature, top_p, max_tokens]
        send.click(respond, inputs, [chatbot, banner, box, sources], api_name="respond")
        box.submit(respond, inputs, [chatbot, banner, box, sources], api_name=False)
        clear.click(lambda: ([], "", ""), None, [chatbot, banner, sources], api_name=False)
    return ui


def launch_web(cfg: WebConfig, block: bool = True):
    """Start the web chat on ``cfg.host:cfg.port`` (local model, or ``cfg.endpoint``).

    Returns:
        The running gradio app (when ``block`` is False, e.g. in tests; call ``.close()``).

    Raises:
        ModelError: neither a model nor an endpoint given, or the model cannot be loaded.
    """
    from medtune.models import ModelError

    if cfg.model is None and cfg.endpoint is None:
        raise ModelError("medtune web needs --model (a local model) or --endpoint (an OpenAI-compatible URL)")
    backend = local_backend(cfg) if cfg.model else endpoint_backend(cfg)
    ui = build_ui(cfg, backend)
    ui.queue(default_concurrency_limit=4 if cfg.model is None else 1)
    ui.launch(server_name=cfg.host, server_port=cfg.port, prevent_thread_lock=not block, quiet=not block)
    return ui
