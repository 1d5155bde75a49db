"""The import graph flows one way: no cycles (module-level or inside functions), no imports below
a module's first definition, the ground floor never imports a stage, and stages never import each other."""

import ast
import re
from pathlib import Path

import medtune

ROOT = Path(medtune.__file__).parent
DOCS = ROOT.parent / "docs" / "architecture.md"
README = ROOT.parent / "README.md"


def floors_table() -> dict[str, str]:
    """``{top-level name: floor}`` from the one list, the floors table in docs/architecture.md."""
    out = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| (top|stages|ground) \|(.*)\|$", line)
        for name in re.findall(r"`([^`]+)`", m.group(2)) if m else ():
            assert name not in out, f"{name} is listed twice in the floors table"
            out[name.removesuffix(".py").rstrip("/")] = {"stages": "stage"}.get(m.group(1), m.group(1))
    return out


FLOORS = floors_table()


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in ROOT.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtune"):
            out += [(node.module, node.lineno)] + [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("medtune")]
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t, _ in imports(p) if t in mods and t != m} for m, p in mods.items()}


def floor(module: str) -> str:
    part = module.split(".")[1] if "." in module else "__init__"
    return FLOORS.get(part, "unknown")


def top_level_names() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def test_every_module_has_a_floor_and_the_floors_table_matches_the_tree():
    assert sorted(top_level_names() - set(FLOORS)) == [], "add these to the floors table in docs/architecture.md"
    assert sorted(set(FLOORS) - top_level_names()) == [], "the floors table names modules that do not exist"


def test_readme_layout_names_the_same_modules_on_the_same_floors():
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    seen = {}
    for line in layout.splitlines():
        m = re.match(r"medtune/ (top|stages|ground):(.*)", line.strip())
        for name in m.group(2).split() if m else ():
            seen[name.removesuffix(".py").rstrip("/").rstrip(",")] = {"stages": "stage"}.get(m.group(1), m.group(1))
    assert seen == FLOORS


def test_names_say_the_role():
    """A ground-floor name never repeats a stage module's or package's name (same-role ``config`` aside)."""
    stage_names = {p.stem for f, fl in FLOORS.items() if fl == "stage" and (ROOT / f).is_dir()
                   for p in (ROOT / f).rglob("*.py")} | {f for f, fl in FLOORS.items() if fl == "stage"}
    ground = {f for f, fl in FLOORS.items() if fl == "ground"}
    assert sorted(ground & stage_names - {"config"}) == []


def test_no_import_cycles():
    g, state, cycles = graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(g[m]):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_ground_never_imports_a_stage_or_the_top():
    bad = [(m, t) for m, ts in graph().items() for t in ts if floor(m) == "ground" and floor(t) != "ground"]
    assert bad == []


def test_stages_import_only_the_ground_and_themselves():
    def stage(m):
        return m.split(".")[1]
    bad = [(m, t) for m, ts in graph().items() for t in ts
           if floor(m) == "stage" and floor(t) != "ground" and stage(t) != stage(m)
           and {stage(m), stage(t)} not in ({"serve", "engine"},)]
    assert bad == []


def test_no_module_level_import_after_the_first_definition():
    late = []
    for m, p in modules().items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        first_def = next((n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))), None)
        late += [(m, n.lineno) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                 and first_def is not None and n.lineno > first_def]
    assert late == []


def test_only_the_safety_package_reads_its_data_by_path():
    """``medtune/safety/data`` is reached through :mod:`medtune.safety.labelled`, never by a path built elsewhere."""
    bad = []
    for m, p in modules().items():
        if m.startswith("medtune.safety"):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                parts = [n.value for n in (node.left, node.right) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                bad += [(m, node.lineno) for s in parts if "safety" in s]
    assert bad == []
