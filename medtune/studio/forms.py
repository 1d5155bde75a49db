"""The recipe form: fields generated from the recipe's pydantic configs, edits applied as ``--set`` would,
validation by :func:`medtune.recipe.validate_recipe`, and the work-dir rule for every path.

The form edits the recipe as a plain mapping (what the YAML file holds), so a saved recipe keeps only
what was written in it or typed in the form; defaults stay defaults. Each field of a section becomes
one widget (:class:`FormField`): a check box for ``bool``, a list for a ``Literal``, a number for
``int``/``float`` and a text box for the rest, whose text is read exactly like ``--set KEY=VALUE``
(:func:`medtune.recipe.apply_overrides`); nested settings (``train.generation``, ``data.teacher``) are
flattened to dotted keys, and lists of sub-configs (``data.sources``) are edited as a YAML block.
"""

from __future__ import annotations

import copy
import json
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel

from medtune.errors import AccessError, ConfigError
from medtune.recipe import Recipe, apply_overrides, resolve, validate_recipe
from medtune.studio.access import confine, inside, plain_name

SHARED = "shared"  # the pseudo-section of the recipe's top-level fields (model, output_dir, seed)
OUTPUT_FIELDS = ("output_dir", "index_dir", "output")  # where stages write: must be inside the work dir
RECIPES = "recipes"  # <workdir>/recipes: recipes saved by the studio


@dataclass(frozen=True)
class FormField:
    """One widget of the form.

    Attributes:
        path: dotted key in the recipe, e.g. ``train.learning_rate``.
        widget: ``check`` | ``choice`` | ``number`` | ``text`` | ``yaml``.
        help: the field's description (shown as the widget's info line).
        default: the config's default value.
        choices: the allowed values of a ``choice``.
        integer: a ``number`` that takes whole numbers.
    """

    path: str
    widget: str
    help: str
    default: Any
    choices: tuple = ()
    integer: bool = False

    @property
    def label(self) -> str:
        return self.path.split(".", 1)[1] if "." in self.path else self.path


def _model_of(ann) -> type[BaseModel] | None:
    return next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def sections() -> list[str]:
    """``shared`` followed by every section of :class:`medtune.recipe.Recipe` (data, train, merge, eval ...)."""
    return [SHARED] + [n for n, f in Recipe.model_fields.items() if _model_of(f.annotation) is not None]


def form_fields(section: str) -> list[FormField]:
    """The widgets of one section, nested settings flattened (``generation.temperature``)."""
    if section == SHARED:
        return [_leaf(n, f) for n, f in Recipe.model_fields.items() if _model_of(f.annotation) is None]
    return list(_walk(_model_of(Recipe.model_fields[section].annotation), section + "."))


def _walk(model: type[BaseModel], prefix: str) -> Iterator[FormField]:
    for name, f in model.model_fields.items():
        sub = _model_of(f.annotation)
        if sub is not None and f.annotation is sub:  # a nested settings block, always present
            yield from _walk(sub, f"{prefix}{name}.")
        elif sub is not None:  # a list of sub-configs or an optional block: edited as YAML
            yield FormField(prefix + name, "yaml", f.description or f"{sub.__name__} (YAML)", _default(f))
        else:
            yield _leaf(prefix + name, f)


def _default(f) -> Any:
    return f.default_factory() if f.default_factory is not None else (None if f.is_required() else f.default)


def _leaf(path: str, f) -> FormField:
    ann, help_, default = f.annotation, f.description or "", _default(f)
    if ann is bool:
        return FormField(path, "check", help_, default)
    if typing.get_origin(ann) is typing.Literal:
        return FormField(path, "choice", help_, default, tuple(typing.get_args(ann)))
    if ann in (int, float):
        return FormField(path, "number", help_, default, integer=ann is int)
    return FormField(path, "text", help_, default)


def get_value(data: dict, path: str, default: Any = None) -> Any:
    """The value at dotted ``path`` of a recipe mapping, or ``default`` when it is not written there."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_UNSET = object()


def _text(field: FormField, value: Any) -> str:
    if value is None:
        return ""
    if field.widget == "yaml":
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def shown(field: FormField, data: dict) -> Any:
    """What the widget holds: the value written in the recipe; a check box or a list shows the default when
    nothing is written, a number or text box stays empty (its placeholder shows what will be used)."""
    value = get_value(data, field.path, _UNSET)
    if field.widget in ("check", "choice"):
        return field.default if value is _UNSET else value
    if value is _UNSET:
        return None if field.widget == "number" else ""
    return value if field.widget == "number" else _text(field, value)


def placeholders(data: dict, section: str) -> dict[str, str]:
    """``{dotted key: text}``: what each field of ``section`` will be when left empty, from the resolved recipe
    (``train.train_file`` -> the data stage's ``train.jsonl``, ``train.output_dir`` -> ``<output_dir>/adapter``);
    the config's default when the recipe does not validate yet."""
    fields = form_fields(section)
    try:
        recipe = validate_recipe(data)
        absent = section != SHARED and getattr(recipe, section) is None
        resolved = resolve(recipe, create=(section,) if absent else ()).model_dump(mode="json")
    except (ConfigError, TypeError, ValueError):
        resolved = None
    out = {}
    for f in fields:
        value = get_value(resolved, f.path, f.default) if resolved is not None else f.default
        out[f.path] = _text(f, value.as_posix() if isinstance(value, Path) else value)
    return out


def _drop(data: dict, path: str) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return data
    node.pop(last, None)
    return data


def apply_edit(data: dict, field: FormField, value: Any) -> dict:
    """A copy of ``data`` with one widget's value written at ``field.path`` (an empty box: back to the default).

    Text is read as ``--set path=text`` reads it; a YAML block with :func:`yaml.safe_load`. A value equal
    to what the widget already shows changes nothing (a field passed through is not written as its default).

    Raises:
        ConfigError: a YAML block that does not parse (names the key).
    """
    before = shown(field, data)
    if value == before or (field.widget == "number" and None not in (value, before) and float(value) == float(before)):
        return data
    if value is None or (isinstance(value, str) and not value.strip()):
        return _drop(data, field.path)
    if field.widget == "yaml":
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{field.path}: invalid YAML: {e}") from None
        return _drop(data, field.path) if value is None else apply_overrides(data, [f"{field.path}={json.dumps(value)}"])
    if field.widget == "number" and field.integer and float(value).is_integer():
        value = int(value)
    text = value if field.widget in ("text", "choice") else json.dumps(value)
    return apply_overrides(data, [f"{field.path}={text}"])


def set_section(data: dict, section: str, present: bool) -> dict:
    """Add an (empty: all defaults) section to the recipe, or remove it."""
    data = dict(data)
    if present:
        data.setdefault(section, {})
    else:
        data.pop(section, None)
    return data


def path_problems(recipe: Recipe, workdir: Path, read_roots: list[Path]) -> list[str]:
    """Every path of the resolved recipe that leaves the work dir: outputs (``output_dir``, ``index_dir``,
    ``output``) must be inside ``workdir``; inputs inside it or a read root; a ``model`` that names an
    existing folder or file counts as an input."""
    problems, bad = [], []
    for key, value, output in _paths(resolve(recipe), ""):
        if any(value.resolve().is_relative_to(b) for b in bad):
            continue  # a default under a path already reported (train.output_dir under output_dir)
        try:
            confine(value, workdir, () if output else read_roots, what=key)
        except AccessError as e:
            problems.append(str(e))
            bad.append(value.resolve())
    return problems


def _paths(model: BaseModel, prefix: str) -> Iterator[tuple[str, Path, bool]]:
    """``(dotted key, path, is_output)`` for every path value under ``model``."""
    for name, f in type(model).model_fields.items():
        value, key = getattr(model, name), prefix + name
        if isinstance(value, BaseModel):
            yield from _paths(value, key + ".")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            for k, item in enumerate(value):
                yield from _paths(item, f"{key}[{k}].")
        elif name == "model" and isinstance(value, str) and Path(value).expanduser().exists():
            yield key, Path(value), False
        else:
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            yield from ((key, v, name in OUTPUT_FIELDS) for v in items if isinstance(v, Path))


def problems(data: dict, workdir: Path, read_roots: list[Path]) -> list[str]:
    """Everything wrong with a recipe mapping: validation errors (one per line), then paths outside the work dir."""
    try:
        recipe = validate_recipe(data, "recipe")
    except ConfigError as e:
        return str(e).splitlines()
    return path_problems(recipe, workdir, read_roots)


def open_recipe(path: Path, workdir: Path, move_output: bool = True) -> tuple[dict, str]:
    """Read a recipe file as a mapping for the form; with ``move_output``, an ``output_dir`` outside ``workdir``
    (a shipped recipe's ``runs/quickstart``) is moved to ``<workdir>/<recipe name>``.

    Returns:
        ``(mapping, note)``; the note says what was moved (or is "").

    Raises:
        ConfigError: not YAML, or not a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{Path(path).name}: not a YAML recipe: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{Path(path).name}: a recipe must be a YAML mapping, got {type(data).__name__}")
    out = Path(str(data.get("output_dir", "")) or ".")
    if move_output and ("output_dir" not in data or not inside(out, workdir)):
        data["output_dir"] = str(Path(workdir) / Path(path).stem)
        return data, f"output_dir set to {data['output_dir']} (inside the work dir)"
    return data, ""


def save_recipe(data: dict, name: str, workdir: Path, read_roots: list[Path], origin: str = "") -> Path:
    """Validate ``data`` and write it to ``<workdir>/recipes/<name>.yaml`` with a header comment.

    Raises:
        ConfigError: the recipe is invalid or a path leaves the work dir (one problem per line).
        AccessError: ``name`` is not a usable file name.
    """
    found = problems(data, workdir, read_roots)
    if found:
        raise ConfigError("\n".join(found))
    stem = plain_name(name or "recipe").removesuffix(".yaml").removesuffix(".yml")
    path = Path(workdir) / RECIPES / f"{stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by medtune studio on {time.strftime('%Y-%m-%d %H:%M')}" + (f" from {origin}" if origin else "")
              + f".\n# Run it from the same folder as the studio:  medtune run {path}\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
