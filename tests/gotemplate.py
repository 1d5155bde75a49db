"""A tiny renderer for the subset of Go's text/template that medtune's Ollama TEMPLATE uses.

Supported: text, ``{{ .Field }}``, ``{{ "string" }}``, variables (``$x := v``, ``$x = v``, ``$.Messages``),
``if`` / ``else if`` / ``else`` / ``end``, ``range $i, $_ := .List``, and the functions ``eq``, ``ne``,
``not``, ``and``, ``len``, ``slice`` with parenthesised sub-expressions; ``{{-`` / ``-}}`` trimming.
Enough to render a Modelfile TEMPLATE the way Ollama would and compare it with the Jinja template.
"""

from __future__ import annotations

import re

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lex(src: str) -> list:
    out, pos = [], 0
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim_next":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        if m.group(3):
            out.append(("trim_next", None))
        pos = m.end()
    tail = src[pos:]
    if out and out[-1][0] == "trim_next":
        out.pop()
        tail = tail.lstrip()
    out.append(("text", tail))
    return out


def _parse(tokens: list, i: int = 0, stop=("end",)):
    """Nodes until an action starting with one of ``stop``; returns (nodes, index, stopping action)."""
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        head = value.split(" ", 1)[0]
        if head in stop or value.startswith("else"):
            return nodes, i, value
        if head == "if":
            branches, cond = [], value[3:]
            while True:
                body, i, ender = _parse(tokens, i)
                branches.append((cond, body))
                if ender.startswith("else if "):
                    cond = ender[8:]
                elif ender == "else":
                    cond = "true"
                else:
                    break
            nodes.append(("if", branches))
        elif head == "range":
            m = re.fullmatch(r"range \$(\w+), \$(\w+) := (.+)", value)
            body, i, _ = _parse(tokens, i)
            nodes.append(("range", m.group(1), m.group(2), m.group(3), body))
        elif re.fullmatch(r"\$\w+ :?= .+", value):
            name, _, expr = value.partition(" ")
            nodes.append(("set", name[1:], expr.split(" ", 1)[1]))
        else:
            nodes.append(("out", value))
    return nodes, i, None


def _split(expr: str) -> list[str]:
    """Top-level words of ``expr``, keeping parenthesised groups and strings whole."""
    words, depth, cur = [], 0, ""
    for part in re.findall(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+', expr):
        depth += part.count("(") - part.count(")")
        cur = f"{cur} {part}".strip() if cur else part
        if depth == 0:
            words.append(cur)
            cur = ""
    return words


FUNCS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
         "and": lambda *a: all(a), "len": len, "slice": lambda x, i: x[i:]}


def _eval(expr: str, dot, env: dict):
    words = _split(expr)
    if len(words) > 1:
        return FUNCS[words[0]](*[_eval(w, dot, env) for w in words[1:]])
    w = words[0]
    if w.startswith("("):
        return _eval(w[1:-1].strip(), dot, env)
    if w.startswith('"'):
        return w[1:-1].encode().decode("unicode_escape")
    if w == "true":
        return True
    if w.isdigit():
        return int(w)
    if w.startswith("$."):
        return env["$"][w[2:]]
    if w.startswith("$"):
        return env[w[1:]]
    if w.startswith("."):
        return dot[w[1:]]
    raise ValueError(f"unsupported expression {expr!r}")


def _run(nodes: list, dot, env: dict, out: list) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_eval(node[1], dot, env)))
        elif node[0] == "set":
            env[node[1]] = _eval(node[2], dot, env)
        elif node[0] == "if":
            for cond, body in node[1]:
                if _eval(cond, dot, env):
                    _run(body, dot, env, out)
                    break
        elif node[0] == "range":
            for i, item in enumerate(_eval(node[3], dot, env)):
                env[node[1]], env[node[2]] = i, item
                _run(node[4], item, env, out)


def render(template: str, data: dict) -> str:
    """Render ``template`` with ``data`` as dot (e.g. ``{"Messages": [{"Role", "Content"}], "System": ...}``)."""
    nodes, _, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)
