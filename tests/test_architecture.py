"""The package keeps its shape (docs/architecture.md): layers that import only downwards (the
import-linter contract in pyproject.toml), no import cycle at all, no module loaded by a name
string, and modules small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dagserve"
#: Where dagserve imports a module by name: only the user's own code (a MODULE:ATTR target, a node
#: class a replica loads), never a part of dagserve.
IMPORTS_BY_NAME = {"deploy_config.py", "backends/ray/replica.py"}


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_no_import_cycle_counting_imports_in_functions_and_for_type_checking() -> None:
    graph = grimp.build_graph("dagserve", cache_dir=None)
    edges = nx.DiGraph((m, d) for m in graph.modules for d in graph.find_modules_directly_imported_by(m))
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def test_nothing_of_dagserve_is_imported_by_a_name_string() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
                "import_module",
                "__import__",
            }:
                found.append(f"{rel}:{node.lineno}")
    assert {f.split(":")[0] for f in found} <= IMPORTS_BY_NAME, found


def test_modules_stay_small() -> None:
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def test_functions_stay_small() -> None:
    """At most 80 lines a function, its docstring not counted."""
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                doc = node.body[0] if node.body and isinstance(node.body[0], ast.Expr) else None
                if doc is not None and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                    lines -= doc.end_lineno - doc.lineno + 1  # type: ignore[operator]
                if lines > 80:
                    long[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = lines
    assert long == {}
