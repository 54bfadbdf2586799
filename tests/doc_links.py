"""The links and file paths of README.md and docs/*.md: a relative link must name a file (and a heading) that exists,
and a repository path in backticks must exist, so that moving a file cannot leave the docs pointing at nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATH_ROOTS = ("adakd_ds", "tests", "launch", "bench", "slurm", "configs", "ds_configs", "docs")  # prose paths checked


def _outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line that is not inside a fenced code block."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield n, line


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text (lower case, punctuation dropped, spaces to -)."""
    anchors = set()
    for _, line in _outside_fences(text):
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return anchors


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def check_links(text: str, where: Path) -> list[str]:
    """Every relative link (and image) of a markdown file at `where` must name a file, and a heading, that exist."""
    problems = []
    for n, line in _outside_fences(text):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (where.parent / path).resolve() if path else where
            if not dest.exists():
                problems.append(f"{line_name(where)}:{n}: link {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
                problems.append(f"{line_name(where)}:{n}: link {target}: no heading #{anchor} in {dest.name}")
    return problems


def check_prose_paths(text: str, where: Path) -> list[str]:
    """Every repository path named in backticks outside code blocks (`adakd_ds/loss/latf.py`) must exist."""
    problems = []
    pattern = re.compile(r"`((?:" + "|".join(PATH_ROOTS) + r")/[\w./-]*)`")
    for n, line in _outside_fences(text):
        for path in pattern.findall(line):
            if not (REPO / path).exists():
                problems.append(f"{line_name(where)}:{n}: `{path}`: no such file in the repository")
    return problems


def line_name(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
