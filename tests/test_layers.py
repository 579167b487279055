"""The package's layers, read from its imports: no circles, and nothing imports a layer above its own.

    boxes / atomic / jsonl / plain / flags / no_finding / change_action / cpu / processes  <-  rewards  <-  data / evaluation / export  <-  training  <-  slurm / cli / bench

Every import counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Module (or package) -> layer. The longest matching name decides; a module with none fails the test.
LAYERS = {
    "medrl": 0, "medrl.atomic": 0, "medrl.boxes": 0, "medrl.no_finding": 0, "medrl.change_action": 0,
    "medrl.cpu": 0, "medrl.jsonl": 0, "medrl.plain": 0, "medrl.flags": 0, "medrl.processes": 0,
    "medrl.rewards": 1,
    "medrl.data": 2, "medrl.evaluation": 2, "medrl.export": 2,
    "medrl.training": 3,
    "medrl.slurm": 4, "medrl.cli": 4, "medrl.bench": 4,
}
LAYER_NAMES = ["boxes/atomic/cpu", "rewards", "data/evaluation/export", "training", "slurm/cli/bench"]


def module_name(path: Path, src: Path) -> str:
    """`medrl.data.convert` for src/medrl/data/convert.py, `medrl.data` for its __init__.py."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path) -> dict[str, set[str]]:
    """module -> the medrl modules it imports (anywhere in the file), resolved to existing modules."""
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from medrl.data import rejects` imports the module medrl.data.rejects.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # `import medrl.data.x` also imports its packages; keep the module
                    t = t.rpartition(".")[0]
                if t.startswith("medrl") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def layer_of(module: str) -> int | None:
    """The layer of a module: the entry of the longest name it equals or sits under."""
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or (module.startswith(prefix + ".") and prefix != "medrl"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a module to one in a higher layer, said in words."""
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = layer_of(mod), layer_of(dep)
            if a is not None and b is not None and b > a:
                out.append(f"{mod} ({LAYER_NAMES[a]}) imports {dep} ({LAYER_NAMES[b]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer(graph):
    assert upward_imports(graph) == []


def test_no_import_circles(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The rules themselves: an upward import, a circle (lazy imports too) and an unplaced module are found."""
    pkg = tmp_path / "medrl"
    for rel, text in {
        "__init__.py": "",
        "boxes.py": "def f():\n    from medrl.rewards import iou\n",
        "rewards/__init__.py": "",
        "rewards/iou.py": "from medrl import boxes\n",
        "data/__init__.py": "",
        "data/a.py": "from . import b\n",
        "data/b.py": "from medrl.data.a import x\nimport medrl.training.recipes\n",
        "training/recipes.py": "",
        "newthing.py": "",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = import_graph(tmp_path)
    assert g["medrl.data.a"] == {"medrl.data.b"} and "medrl.training.recipes" in g["medrl.data.b"]
    assert upward_imports(g) == ["medrl.boxes (boxes/atomic/cpu) imports medrl.rewards.iou (rewards)",
                                 "medrl.data.b (data/evaluation/export) imports medrl.training.recipes (training)"]
    assert cycles(g) == [["medrl.boxes", "medrl.rewards.iou"], ["medrl.data.a", "medrl.data.b"]]
    assert layer_of("medrl.newthing") is None and layer_of("medrl.data.a") == 2


def test_the_cli_is_in_the_graph(graph):
    """cli.py imports its command modules (not by name string), so the checks above cover the CLI too."""
    assert {"medrl.data.commands", "medrl.rewards.commands", "medrl.training.commands", "medrl.slurm",
            "medrl.export.commands", "medrl.evaluation.commands"} <= graph["medrl.cli"]
    assert not any(dep == "medrl.cli" for deps in graph.values() for dep in deps)  # nothing imports it back
