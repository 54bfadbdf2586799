"""The package's folders are its architecture: every module imports, imports only point down the layers, no cycles.

Layers, top to bottom: experiments -> engine / slurm -> eval -> loss / data / checkpoint -> config. A module may import
its own subpackage and any subpackage that its table entry names, and nothing else of adakd_ds.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "adakd_ds"

ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "loss": {"config"},
    "data": {"config"},
    "checkpoint": {"config"},
    "eval": {"config", "data", "loss"},
    "engine": {"config", "loss", "data", "checkpoint", "eval"},
    "slurm": {"config"},
    "experiments": {"config", "loss", "data", "checkpoint", "eval", "engine", "slurm"},
}


def _modules() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _part(module: str) -> str:
    """The subpackage (or top-level module) of adakd_ds that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module: str) -> set[str]:
    """Every adakd_ds module named by an import anywhere in the file, function-level imports included."""
    rel = Path(*module.split("."))
    path = PKG.parent / rel.with_suffix(".py")
    if not path.is_file():
        path = PKG.parent / rel / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("adakd_ds"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adakd_ds"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    known = set(_modules())
    return {m for m in found if m in known}


def test_top_level_is_the_architecture():
    entries = sorted(p.name for p in PKG.iterdir() if p.name not in ("__init__.py", "__pycache__"))
    assert set(entries) <= {f"{k}.py" if k == "config" else k for k in ALLOWED}, entries
    assert len(entries) <= 8, entries


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports(module):
    importlib.import_module(module)


def test_imports_point_down_the_layers():
    bad = []
    for module in _modules():
        src = _part(module)
        for target in _imports(module):
            dst = _part(target)
            if dst and dst != src and dst not in ALLOWED[src]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = {m: _imports(m) - {m} for m in _modules()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == m or m.startswith(d + "."):
                continue  # importing one's own package (its __init__) is fine
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
