"""The package's folders are its architecture: every module imports, imports only point down the layers, no cycles.

Layers, top to bottom: experiments.grid -> experiments.testbed -> experiments -> engine -> engine.policy /
engine.guard -> engine's plumbing -> slurm / eval -> loss / data / checkpoint -> config. A module may import its own
part and any part that its table entry names, and nothing else of adakd_ds. A part is a top-level subpackage, or one
of the rooms named in SUBPARTS; engine's plumbing (models, ds_config, ...) is every engine module but the recipe's flow.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "adakd_ds"
LAYOUT_DOC = PKG.parent / "docs" / "development.md"

# Rooms inside a top-level part that have a place of their own in the layering.
SUBPARTS = ("engine.policy", "engine.guard", "engine.teacher_cache", "experiments.testbed", "experiments.grid")
# The engine modules that ARE the recipe's flow: the only ones that may import policy/ and guard/.
ENGINE_TOP = {"adakd_ds.engine.recipe", "adakd_ds.engine.cli", "adakd_ds.engine.run_summary"}
LOW = {"config", "loss", "data", "checkpoint", "eval"}

ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "loss": {"config"},
    "data": {"config"},
    "checkpoint": {"config"},
    "eval": {"config", "data", "loss"},
    "engine.plumbing": LOW,
    "engine.policy": LOW | {"engine.plumbing"},
    "engine.guard": LOW | {"engine.plumbing"},
    "engine.teacher_cache": LOW | {"engine.plumbing", "engine.guard"},
    "engine": LOW | {"engine.plumbing", "engine.policy", "engine.guard", "engine.teacher_cache"},
    "slurm": {"config"},
    "experiments": set(),  # experiments/seed_stats.py and the package docstring: plain statistics
    "experiments.testbed": LOW | {"engine", "engine.plumbing", "engine.policy", "engine.guard", "slurm", "experiments"},
    "experiments.grid": LOW
    | {"engine", "engine.plumbing", "engine.policy", "engine.guard", "slurm", "experiments", "experiments.testbed"},
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
    """The part of adakd_ds that `module` belongs to (see SUBPARTS and ENGINE_TOP)."""
    parts = module.split(".")
    if len(parts) < 2:
        return ""
    for sub in SUBPARTS:
        if ".".join(parts[1:3]) == sub:
            return sub
    if parts[1] == "engine" and len(parts) > 2 and module not in ENGINE_TOP:
        return "engine.plumbing"
    return parts[1]


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
    assert set(entries) <= {k for k in ALLOWED if "." not in k}, entries
    assert len(entries) <= 8, entries


def test_every_folder_says_what_lives_there_and_what_it_may_import():
    for init in sorted(PKG.rglob("__init__.py")):
        if init.parent.name == "teacher":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(PKG.parent)} has no docstring"


def test_rooms_stay_small():
    """No hall again: at most about 12 modules a folder, no module over about 400 lines."""
    for folder in [PKG, *sorted(p for p in PKG.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"{folder.relative_to(PKG.parent)}: {len(modules)} modules"
    long = [f"{p.relative_to(PKG.parent)}: {n}" for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 410]
    assert not long, long


def _doc_table() -> dict[str, set[str]]:
    """part -> what it may import, as docs/development.md's layout table says."""
    text = LAYOUT_DOC.read_text()
    start, end = text.index("<!-- layout-table"), text.index("<!-- /layout-table -->")
    table = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            part, folder, may = cells
            assert (PKG.parent / folder.strip("`")).is_dir(), f"docs/development.md: {folder} is no folder"
            table[part.strip("`")] = set() if may == "nothing" else {m.strip(" `") for m in may.split(",")}
    return table


def test_the_documented_layout_is_the_enforced_one():
    """docs/development.md's table of what each part may import is ALLOWED, row for row."""
    documented = _doc_table()
    assert set(documented) == set(ALLOWED), set(documented) ^ set(ALLOWED)
    wrong = {part: (documented[part], ALLOWED[part]) for part in ALLOWED if documented[part] != ALLOWED[part]}
    assert not wrong, f"docs/development.md differs from ALLOWED (documented, enforced): {wrong}"


def test_the_layering_refuses_an_import_back_up():
    """The rule itself can fail: policy importing the recipe, or testbed importing the grid, is against it."""
    assert "engine" not in ALLOWED[_part("adakd_ds.engine.policy.responses")]
    assert _part("adakd_ds.engine.recipe") == "engine" and _part("adakd_ds.engine.models") == "engine.plumbing"
    assert "experiments.grid" not in ALLOWED[_part("adakd_ds.experiments.testbed.quickstart")]


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
