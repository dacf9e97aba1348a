"""The package's layers: no module imports another that (directly or not) imports it back, and every
module imports in a fresh interpreter whatever was imported before it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gated_lpi_exp

PACKAGE = Path(gated_lpi_exp.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _imported_at_load(path: Path) -> set[str]:
    """The project modules ``path`` imports when it is loaded: module-level imports, not those inside
    functions (deferred on purpose) or under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def _edges(name: str) -> set[str]:
    """What loading ``name`` loads first: its imports and their enclosing packages (except the packages
    that enclose ``name`` itself, which are already being loaded)."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    out = set()
    for target in _imported_at_load(MODULES[name]):
        parts = target.split(".")
        out.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p not in own)
    return out - {name}


def test_no_module_imports_itself_back_through_other_modules():
    graph = {name: _edges(name) for name in MODULES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name) :] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_cycle_check_sees_a_cycle_through_a_package():
    # attribution/__init__ imports attribution.engine, which may import attribution itself (it is being
    # loaded); a stage that imports the attribution package is an edge to it.
    assert "gated_lpi_exp.attribution" not in _edges("gated_lpi_exp.attribution.engine")
    assert "gated_lpi_exp.attribution" in _edges("gated_lpi_exp.stages.attribution")


@pytest.mark.slow
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    names = [n for n in MODULES if not n.endswith("__main__")]
    names = names if order == "forward" else names[::-1]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    out = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
