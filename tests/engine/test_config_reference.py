"""docs/configuration.md is what adakd_ds.config.reference prints: every key, its default, range and comment.

The committed file must equal the generated text, so a new key (or a changed default, range or comment) without a
regenerated reference fails here. The key list is checked against an independent walk of the dataclass tree, and the
comment reader is checked on a small source of its own, so a generator that dropped keys or comments fails too.
"""

from __future__ import annotations

import dataclasses
import enum

from adakd_ds.config.ranges import NUMERIC_RANGES
from adakd_ds.config.reference import field_notes, render
from adakd_ds.config.schema import RunConfig
from tests.readme_commands import REPO

DOC = REPO / "docs" / "configuration.md"
REGENERATE = "python -m adakd_ds.config.reference > docs/configuration.md"


def _leaves(obj: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _shown(value: object) -> str:
    """A default as the reference shows it, written out again here."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return '""' if value == "" else str(value)


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == render(), f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_every_key_has_a_row_with_its_default_range_and_a_meaning():
    rows, leaves = _rows(), _leaves(RunConfig())
    assert set(rows) == set(leaves), set(rows) ^ set(leaves)
    for key, value in leaves.items():
        _, kind, default, rng, meaning = rows[key]
        assert default.startswith(f"`{_shown(value)}`"), (key, default)
        assert rng == (NUMERIC_RANGES[key].describe() if key in NUMERIC_RANGES else ""), key
        if isinstance(value, enum.Enum):
            assert all(f"`{m.value}`" in kind for m in type(value)), (key, kind)
        assert meaning, f"{key} has no `# comment` on its field in adakd_ds/config/schema.py"


def test_the_comment_reader_finds_trailing_and_section_comments():
    source = (
        "class A:\n"
        "    x: int = 1  # the x\n"
        "    # a section\n"
        "    y: int = 2\n"
        "    z: str = '# not a comment'\n"
        "class E:\n"
        "    ONE = 'one'  # the first\n"
    )
    notes = field_notes(source)
    assert notes[("A", "x")] == ("the x", "")
    assert notes[("A", "y")] == ("", "a section")
    assert notes[("A", "z")] == ("", "a section")
    assert notes[("E", "ONE")] == ("the first", "")
