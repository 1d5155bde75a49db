"""The import graph flows one way: no cycles (module-level or inside functions), no imports below
a module's first definition, the ground floor never imports a stage, and stages never import each other."""

import ast
from pathlib import Path

import medtune

ROOT = Path(medtune.__file__).parent
GROUND = {"errors", "text", "io", "config", "llm", "models", "generation", "manifest", "chat_tokens", "safety", "preference", "rewards",
          "safety_model", "embed", "retrieval", "llamacpp", "card", "judging"}
STAGES = {"data", "train", "merge", "chat", "engine", "serve", "web", "eval", "rag", "export"}
TOP = {"recipe", "run", "cli", "__main__", "__init__"}


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
    return "ground" if part in GROUND else "stage" if part in STAGES else "top" if part in TOP else "unknown"


def test_every_module_has_a_floor():
    assert [m for m in modules() if floor(m) == "unknown"] == []


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
