"""An Ollama ``Modelfile`` for an exported GGUF: FROM, TEMPLATE, PARAMETER stop, SYSTEM.

The chat template is not translated construct by construct (a Jinja template can be any program);
it is *measured*: the tokenizer's own template renders a few conversations whose contents are
unique markers, and the text around the markers gives each role's prefix and suffix, the
generation prompt, and whether the system turn is a block of its own (ChatML, Llama-3, EXAONE) or
is folded into the first user turn (Gemma). From these pieces a Go template over Ollama's
``.Messages`` is written. A leading BOS text is left out: llama.cpp's tokenizer adds it (as
Ollama's own templates assume). The result is then checked by rendering the same conversations
both ways in the tests (``tests/gotemplate.py``). Templates whose turns depend on more than the
role (tools, per-message date stamps) are outside this scheme and raise ExportError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from medtune.errors import ExportError

S, U1, A1, U2 = "\x01SYS\x01", "\x01USER1\x01", "\x01ASSISTANT1\x01", "\x01USER2\x01"


@dataclass
class TurnFormat:
    """The text around each turn's content, as the chat template writes it."""

    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    system_in_user: bool  # Gemma style: system content + system_suffix open the first user turn


def _render(tokenizer, messages: list[dict], generation: bool) -> str:
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False,
                                         add_generation_prompt=generation)
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text


def _between(text: str, start: str | None, end: str | None) -> str:
    i = text.index(start) + len(start) if start else 0
    return text[i: text.index(end, i) if end else len(text)]


def measure_turns(tokenizer) -> TurnFormat:
    """The :class:`TurnFormat` of ``tokenizer.chat_template`` (see module doc).

    Raises:
        ExportError: the template does not follow a role-prefix/suffix pattern.
    """
    conv = [("system", S), ("user", U1), ("assistant", A1), ("user", U2)]
    try:
        full = _render(tokenizer, conv, True)
        first = _render(tokenizer, conv[:2], False)
        first_gen = _render(tokenizer, conv[:2], True)
        answered = _render(tokenizer, conv[:3], False)
    except Exception as e:  # a template may raise on any of these (e.g. no system role)
        raise ExportError(f"the chat template cannot render a system/user/assistant conversation: {e}") from None
    gen = first_gen[len(first):]
    user_suffix = _between(full, U2, None)[: -len(gen) or None]
    assistant_suffix = _between(answered, A1, None)
    assistant_prefix = _between(full, U1, A1)[len(user_suffix):]
    user_prefix = _between(full, A1, U2)[len(assistant_suffix):]
    head = first[: first.index(U1)]
    if head.endswith(user_prefix) and head.index(S) < len(head) - len(user_prefix):
        fmt = TurnFormat(head[: head.index(S)], head[head.index(S) + len(S): len(head) - len(user_prefix)],
                         user_prefix, user_suffix, assistant_prefix, assistant_suffix, gen, False)
    elif head.startswith(user_prefix):
        fmt = TurnFormat(user_prefix, _between(head, S, None), user_prefix, user_suffix, assistant_prefix,
                         assistant_suffix, gen, True)
    else:
        raise ExportError("cannot find the system turn's place in the chat template's output: " + json.dumps(head))
    if any(m in piece for piece in vars(fmt).values() if isinstance(piece, str) for m in (S, U1, A1, U2)):
        raise ExportError("the chat template's turns do not depend on the role alone; write TEMPLATE by hand")
    return fmt


def _go(text: str) -> str:
    """A literal for the Go template: the text itself, with ``{{`` written as a Go string."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(fmt: TurnFormat) -> str:
    """The Ollama TEMPLATE (Go text/template over ``.Messages``) for ``fmt``, on one line and without
    ``{{-`` trim markers, which would also eat the newlines the turns end with."""
    system = (f'{{{{ if eq .Role "system" }}}}{_go(fmt.system_prefix)}{{{{ .Content }}}}{_go(fmt.system_suffix)}'
              '{{ $prev = "system" }}')
    user_prefix = (f'{{{{ if ne $prev "system" }}}}{_go(fmt.user_prefix)}{{{{ end }}}}' if fmt.system_in_user
                   else _go(fmt.user_prefix))
    return (
        '{{ $prev := "" }}{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
        + system
        + f'{{{{ else if eq .Role "user" }}}}{user_prefix}{{{{ .Content }}}}{_go(fmt.user_suffix)}'
        + f'{{{{ if $last }}}}{_go(fmt.generation_prompt)}{{{{ end }}}}{{{{ $prev = "user" }}}}'
        + f'{{{{ else if eq .Role "assistant" }}}}{_go(fmt.assistant_prefix)}{{{{ .Content }}}}'
        + f'{{{{ if not $last }}}}{_go(fmt.assistant_suffix)}{{{{ end }}}}{{{{ $prev = "assistant" }}}}'
        + '{{ end }}{{ end }}'
    )


def _quoted(text: str) -> str:
    """A Modelfile triple-quoted value (a value may not contain three quotes in a row)."""
    if '"""' in text:
        raise ExportError('a Modelfile value cannot contain """')
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer, stop_texts: list[str], system: str | None) -> str:
    """The Modelfile text: FROM ``./gguf_name``, TEMPLATE, one PARAMETER stop per end-of-turn text, SYSTEM."""
    lines = ["# Written by medtune export. Create and run it with:\n#   ollama create NAME -f Modelfile && ollama run NAME",
             f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(go_template(measure_turns(tokenizer)))}"]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in dict.fromkeys(stop_texts) if s]
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    return "\n".join(lines) + "\n"
