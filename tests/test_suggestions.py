"""Every command, option and recipe key that medtune's messages tell a user to try is accepted by the CLI.

Issue 24 found a warning that suggested ``--set calibrate=true``, which the CLI refused. The suggestions
are collected from the source, so a new one cannot be added without being checked: every string literal
(f-strings too; docstrings aside) of ``medtune/**/*.py`` -- error messages, warnings, ``help=`` and
``description=`` texts, and the helpers that build them -- is searched for

- commands: ``medtune SUBCOMMAND [ARGS]`` (``eval mcq/fact/judge`` is each of the three);
- options after a suggestion verb (try, use, set, run, rerun, pass, give, add, override): ``--name``,
  checked on the command(s) whose messages the module writes (:data:`MODULE_COMMANDS`);
- recipe keys after a suggestion verb (``set data.teacher.max_tokens=1024``) and every ``--set KEY=VALUE``.

A command or option is run in its ``--help``-safe form (the arguments as suggested, then ``--help``:
click parses every option before it prints the help, so an unknown one fails with "No such option"); a
recipe key goes through :func:`medtune.recipe.load_recipe` (an unknown key fails with "unknown key"; a
concrete value must also validate). Docs count too: every ``medtune ...`` command of README.md, docs/
and examples/ (inline code, fenced or indented blocks) is run the same way.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medtune.cli import app
from medtune.errors import ConfigError
from medtune.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
VERB = re.compile(r"\b(?:try|use|set|run|rerun|re-run|pass|give|add|override)\b", re.I)
CLAUSE_END = re.compile(r";|\n|(?<!e\.g)(?<!i\.e)\.\s|\.$|\bor run\b")
COMMAND = re.compile(r"\bmedtune ((?:[a-z][a-z-]*)(?:/[a-z][a-z-]*)*)(?: ((?:[a-z][a-z-]*)(?:/[a-z][a-z-]*)*))?")
COMMAND_END = re.compile(r"`|\n|;|\)|\(|: |, | or | and |\. |\.$")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SET_VALUE = re.compile(r"--set[ =](\S+?=\S*)")
KEY = re.compile(r"(?<![\w/.-])(" + "|".join(sorted(Recipe.model_fields, key=len, reverse=True)) +
                 r")\.([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?:=([^\s,;)]+))?(?![\w/-])")
FILE_SUFFIX = re.compile(r"^(?:jsonl?|csv|tsv|xlsx?|ya?ml|txt|md|py|html|sqlite|npz|npy|gguf|pdf)\b")

# The command(s) whose messages each module writes: an option it suggests must be an option of every one.
# A new module with an option suggestion fails test_every_module_with_option_advice_is_mapped until added here.
EVAL_FILES = ["eval mcq", "eval fact"]
MODULE_COMMANDS: dict[str, dict[str, list[str]] | list[str]] = {
    "medtune/cli.py": {"--source": ["index build"], "--set": ["train", "data build", "eval mcq"],
                       "--no-classifier": ["eval safety"], "--config-file": ["train"]},
    "medtune/data/generators.py": ["data build"],
    "medtune/engine.py": ["serve"],
    "medtune/gateway.py": ["serve"],
    "medtune/eval/backends.py": ["eval mcq"],
    "medtune/eval/fact.py": ["eval fact"],
    "medtune/eval/guarded.py": ["eval safety"],
    "medtune/eval/harness.py": ["eval lm-eval"],
    "medtune/eval/rubric.py": ["eval rubric"],
    "medtune/eval/mcq.py": ["eval mcq"],
    "medtune/eval/mcq_data.py": ["eval mcq"],
    "medtune/eval/rag.py": ["eval rag"],
    "medtune/eval/results.py": ["eval mcq", "eval fact", "eval judge"],
    "medtune/export/gguf.py": ["export"],
    "medtune/export/stage.py": ["export"],
    "medtune/io.py": EVAL_FILES,
    "medtune/llm.py": ["data build"],
    "medtune/models.py": ["chat", "serve", "web"],
    "medtune/run.py": ["index build"],
    "medtune/train/harness.py": ["train"],
    "medtune/studio/access.py": ["studio"],
}


# ----------------------------------------------------------------------------- collecting


def _text(node: ast.AST) -> str:
    """A string literal's text; an f-string's replacement fields become ``{}``."""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return node.value


def message_strings(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of the string literals of ``path`` that can reach a user: every one but docstrings
    (a message is often built in a helper and raised elsewhere, so no call is required around it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out, skip = [], set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)
                                               and id(node) not in skip):
            out.append((node.lineno, _text(node)))
    return sorted(set(out))


def _commands(text: str) -> list[tuple[list[str], list[str], tuple[int, int]]]:
    """``(command words, arguments, span)`` of every ``medtune ...`` command in ``text``."""
    groups = {g.name for g in app.registered_groups}
    found = []
    for m in COMMAND.finditer(text):
        if not _command_start(text, m.start()):
            continue  # "medtune serve: models ...", "not a medtune index": a label, not a command line
        first, second = m.group(1), m.group(2)
        words, end = [first], m.end(1)
        if second and all(w in groups for w in first.split("/")):
            words, end = [first, second], m.end(2)
        rest = text[end:]
        cut = COMMAND_END.search(rest)
        rest = rest[:cut.start()] if cut else rest
        if first in groups and not second:  # `medtune eval {command}`: built at run time, see
            found.append((None, [], (m.start(), end + len(rest))))  # test_eval_commands_without_their_input_...
            continue
        args = shlex.split(rest.replace("{}", "X"), posix=True) if rest.count('"') % 2 == 0 else rest.split()
        for combo in _expand(words):
            found.append((combo, args, (m.start(), end + len(rest))))
    return found


def _command_start(text: str, i: int) -> bool:
    """A command line starts at ``i``: after a backtick or "(", indented (at the start of a line, or after
    a run of spaces), or after a suggestion verb; not at the start of a message ("medtune serve needs ...")."""
    before = text[:i]
    return (before.endswith(("`", "(", "  ", "\t")) or before.rstrip(" ").endswith("\n")
            or bool(re.search(VERB.pattern + r"\s$", before, re.I)))


def _expand(words: list[str]) -> list[list[str]]:
    """``["eval", "mcq/fact"]`` -> ``[["eval", "mcq"], ["eval", "fact"]]``."""
    combos = [[]]
    for w in words:
        combos = [c + [alt] for c in combos for alt in w.split("/")]
    return combos


def suggestions() -> list[tuple[str, int, str, str, tuple]]:
    """``(file, line, text, kind, payload)``: kind ``command`` (words, args), ``option`` (option,) or
    ``key`` (key, value or None), for every suggestion in every module's messages."""
    found = []
    for path in sorted((ROOT / "medtune").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for line, text in message_strings(path):
            commands = _commands(text)
            found += [(rel, line, text, "command", (words, args)) for words, args, _ in commands if words]
            bare = text
            for _, _, (s, e) in commands:  # options inside a command are checked with that command
                bare = bare[:s] + " " * (e - s) + bare[e:]
            for m in SET_VALUE.finditer(bare):
                key, _, value = m.group(1).partition("=")
                found.append((rel, line, text, "key", (key, value.rstrip(".,;)") or None)))
            for v in VERB.finditer(bare):
                clause = bare[v.end():]
                cut = CLAUSE_END.search(clause)
                clause = clause[:cut.start()] if cut else clause
                found += [(rel, line, text, "option", (o,)) for o in OPTION.findall(clause)]
                for k in KEY.finditer(clause):
                    if not FILE_SUFFIX.match(k.group(2)):
                        found.append((rel, line, text, "key", (f"{k.group(1)}.{k.group(2)}", k.group(3))))
    unique = {(f, line, kind, str(p)): (f, line, text, kind, p) for f, line, text, kind, p in found}
    return sorted(unique.values(), key=lambda x: (x[0], x[1], x[3], str(x[4])))


def _doc_form(cmd: str) -> str:
    """A command as docs write it, made typeable: ``[--adapter A]`` -> ``--adapter A``, ``list / prepare``
    -> ``list/prepare`` (each is run), ``...`` dropped, a trailing ``\\`` or ``# comment`` cut."""
    cmd = cmd.split(" #")[0].rstrip("\\").strip()
    return re.sub(r"\s+/\s+", "/", cmd.replace("[", "").replace("]", "").replace(" ...", ""))


def doc_commands() -> list[tuple[str, int, str, list[str], list[str]]]:
    """``(file, line, text, words, args)`` of every ``medtune ...`` command in the docs: inline code spans,
    and lines of fenced or indented code blocks, in README.md, docs/ and examples/."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]
    out = []
    for path in files:
        fenced = False
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            block = fenced or line.startswith("    ")
            found = [line.strip()] if block and line.strip().startswith("medtune ") else \
                [] if block else re.findall(r"`(medtune [^`]+)`", line)
            for cmd in found:
                for words, args, _ in _commands("  " + _doc_form(cmd)):
                    if words:
                        out.append((str(path.relative_to(ROOT)), n, cmd, words, args))
    return out


SUGGESTIONS = suggestions()


# ----------------------------------------------------------------------------- running


def _click_command(words: list[str]):
    """The click command object of ``medtune WORDS``."""
    cmd = typer.main.get_command(app)
    for w in words:
        cmd = cmd.commands[w] if w in getattr(cmd, "commands", {}) else None
        assert cmd is not None, f"`medtune {' '.join(words)}` is not a command"
    return cmd


def _runs(words: list[str], args: list[str]) -> None:
    """The suggested command line parses: every option exists (run with --help appended; an option named
    without its value, as in "`medtune chat --model`", gets a stand-in value)."""
    params = {o: p for p in _click_command(words).params for o in (*p.opts, *p.secondary_opts)}
    full = []
    for a, nxt in zip(args, [*args[1:], None]):
        full.append(a)
        p = params.get(a)
        if p is not None and not getattr(p, "is_flag", False) and a not in p.secondary_opts and \
                (nxt is None or nxt.startswith("--")):
            full.append("X")
    result = CliRunner().invoke(app, [*words, *full, "--help"])
    assert result.exit_code == 0 and "No such option" not in result.output, \
        f"`medtune {' '.join([*words, *args])}` is refused:\n{result.output}"


def _option_args(words: list[str], option: str) -> list[str]:
    """``[option]`` or ``[option, "X"]`` when it takes a value; fails when ``words`` has no such option."""
    for p in _click_command(words).params:
        if option in (*p.opts, *p.secondary_opts):
            return [option] if getattr(p, "is_flag", False) or option in p.secondary_opts else [option, "X"]
    raise AssertionError(f"`medtune {' '.join(words)}` has no option {option}")


def _placeholder(value: str | None) -> bool:
    """A value written as a stand-in (``{}``, ``<path>``, ``VALUE``, ``...``) rather than one to type."""
    return value is None or any(x in value for x in ("{}", "<", "...", "X")) or value.isupper()


def _accepts_key(key: str, value: str | None) -> None:
    """``--set key=value`` is accepted: the key exists; a concrete value validates too."""
    if "{}" in key:
        return  # `--set {section}.FIELD=VALUE`: the help's pattern, not a key
    try:
        load_recipe(None, [f"{key}={'null' if _placeholder(value) else value}"])
    except ConfigError as e:  # a required field elsewhere in the section may be missing: only errors on this key count
        if "unknown key" in str(e) or "is not a section" in str(e) or (not _placeholder(value) and f"{key}:" in str(e)):
            raise AssertionError(f"--set {key}={value}: {e}") from None


def _ids(items) -> list[str]:
    return [f"{f}:{line}:{kind}:{' '.join(map(str, p[0] if kind == 'command' else p))}"[:120]
            for f, line, _t, kind, p in items]


@pytest.mark.parametrize("file,line,text,kind,payload", SUGGESTIONS, ids=_ids(SUGGESTIONS))
def test_every_suggestion_in_a_message_is_accepted(file, line, text, kind, payload):
    if kind == "command":
        words, args = payload
        _runs(words, args)
    elif kind == "key":
        _accepts_key(*payload)
    else:
        spec = MODULE_COMMANDS.get(file)
        assert spec is not None, f"{file}:{line} suggests {payload[0]}; add the module's command(s) to MODULE_COMMANDS"
        commands = spec.get(payload[0], []) if isinstance(spec, dict) else spec
        assert commands, f"{file}:{line} suggests {payload[0]}; add it to MODULE_COMMANDS[{file!r}]"
        for words in commands:
            _runs(words.split(), _option_args(words.split(), payload[0]))


def test_the_collector_finds_the_suggestions_it_is_meant_to_find():
    """The collector itself: it sees the suggestions of issue 24 and a spread of the rest (it cannot pass by
    finding nothing), and it would have caught `try --set calibrate=true`."""
    kinds = {(f, kind, p[0] if kind != "command" else " ".join(p[0])) for f, _l, _t, kind, p in SUGGESTIONS}
    assert ("medtune/eval/mcq.py", "option", "--calibrate") in kinds
    assert ("medtune/eval/fact.py", "option", "--max-new-tokens") in kinds
    assert ("medtune/data/generators.py", "key", "data.dialogue.language") in kinds
    assert ("medtune/train/harness.py", "key", "train.method") in kinds and ("medtune/eval/results.py", "option", "--overwrite") in kinds
    assert ("medtune/run.py", "option", "--source") in kinds
    assert ("medtune/export/stage.py", "command", "chat") in kinds
    assert len(SUGGESTIONS) >= 40 and len({f for f, *_ in SUGGESTIONS}) >= 15
    with pytest.raises(AssertionError, match="unknown key"):
        _accepts_key("calibrate", "true")


DOCS = doc_commands()


@pytest.mark.parametrize("file,line,text,words,args", DOCS, ids=[f"{f}:{n}" for f, n, *_ in DOCS])
def test_every_command_in_the_docs_is_accepted(file, line, text, words, args):
    _runs(words, args)
    for value in [a.split("=", 1)[1] for a in args if a.startswith("--set=")] + \
            [b for a, b in zip(args, args[1:]) if a == "--set"]:
        key, _, v = value.partition("=")
        _accepts_key(key, v)


def test_eval_commands_without_their_input_suggest_options_they_have(tmp_path):
    """The one message built per command at run time (`_eval_runner`): each eval command, given a file
    and nothing else, names options that command accepts."""
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "q", "A": "a", "B": "b", "answer": "A"}\n', encoding="utf-8")
    for name in ("mcq", "fact", "judge", "answers", "rag"):
        r = CliRunner().invoke(app, ["eval", name, str(data)])
        assert r.exit_code == 2, r.output
        options = OPTION.findall(r.output.split("section;", 1)[-1].split("(see")[0])
        assert options, r.output
        for option in options:
            _runs(["eval", name], _option_args(["eval", name], option))


@pytest.mark.parametrize("command", [["run"], ["train"], ["eval", "mcq"], ["serve"]])
def test_every_key_a_help_page_lists_is_accepted_by_set(command):
    # `medtune run --help` listed `recipe.output_dir = ...`, which --set refused ("unknown key 'recipe'")
    out = CliRunner().invoke(app, [*command, "--help"], terminal_width=300).output
    keys = re.findall(r"^\s+([a-z_]+(?:\.[a-z_]+)*) = ", out.split("Fields (use with --set):", 1)[1], re.M)
    assert len(keys) >= 3, out
    for key in keys:
        try:
            load_recipe(None, [f"{key}=null"])
        except ConfigError as e:
            assert "unknown key" not in str(e), (command, key, str(e))
        except Exception:  # a value error for null is fine: the key itself was accepted
            pass
