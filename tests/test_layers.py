"""The package's layers, as docs/architecture.md draws them, checked against its imports.

Every ``import`` of ``include/tilescope`` is read (also the ones inside functions): no module
may import a higher layer, no modules may import each other in a circle, and only the Airflow
layer (plus the one door, :mod:`tilescope.airflow.connections`) imports Airflow itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "tilescope"
#: each layer imports only its own and lower layers
LAYERS = {"core": 0, "outputs": 1, "intake": 2, "faces": 3, "airflow": 4, "viewer": 4, "stack": 4}
#: the one module below the Airflow layer may import: clients from Airflow connections
DOOR = "tilescope.airflow.connections"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) > 1 and parts[1] in ("tasks", "cli"):
        return "faces"
    return "core"


def imports(path: Path) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in the file, also inside functions.

    ``from package import submodule`` names the submodule (a package's ``__init__`` runs
    first whatever is imported from it: that is no arrow of the code's own).
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names
                          if is_module(f"{node.module}.{alias.name}")]
            found += [(name, node.lineno) for name in submodules]
            if len(submodules) < len(node.names):
                found.append((node.module, node.lineno))
    return found


def is_module(dotted: str) -> bool:
    if not dotted.startswith("tilescope."):
        return False
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, dict[str, int]]:
    """module → {tilescope module it imports: line}, and third-party top-level names."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges[name] = {}
        for target, line in imports(path):
            if target in modules and target != name:
                edges[name].setdefault(target, line)
            elif not target.startswith("tilescope"):
                edges[name].setdefault(target.split(".")[0], line)
    return edges


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_higher_layer():
    edges = graph()
    wrong = [f"{source} ({layer(source)}) -> {target} ({layer(target)}), line {line}"
             for source, targets in edges.items() for target, line in targets.items()
             if target.startswith("tilescope") and target != DOOR
             and LAYERS[layer(target)] > LAYERS[layer(source)]]
    assert wrong == []


def test_only_the_airflow_layer_imports_airflow():
    edges = graph()
    wrong = [f"{source} imports Airflow, line {targets['airflow']}"
             for source, targets in edges.items()
             if "airflow" in targets and LAYERS[layer(source)] < LAYERS["airflow"]]
    assert wrong == []


def test_no_import_circles():
    assert circles(graph()) == []


def test_the_checks_see_a_wrong_import(tmp_path, monkeypatch):
    """The checks above can fail: a core module importing a task body, and two modules
    importing each other, are both reported."""
    package = tmp_path / "tilescope"
    (package / "tasks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks" / "__init__.py").write_text("")
    (package / "tasks" / "image.py").write_text("from tilescope.slicing import Box\n")
    (package / "slicing.py").write_text("def f():\n    from tilescope.tasks.image import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError, match=r"tilescope\.slicing"):
        test_no_module_imports_a_higher_layer()
    assert circles(graph()) == [["tilescope.slicing", "tilescope.tasks.image"]]


def test_importing_everything_below_the_airflow_layer_loads_no_airflow():
    """At run time too: the CLI and every task body import without loading Airflow."""
    names = sorted(name for name in graph() if LAYERS[layer(name)] < LAYERS["airflow"]
                   and not name.endswith("__main__"))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
