"""The files an experiment grid writes: results.md, results.csv, results_aggregate.csv and results.png.

Apart from report.py (tables and aggregation) and chart.py (the figure), which it joins, so that neither of those
imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adakd_ds.experiments.grid import chart
from adakd_ds.experiments.grid.cell_stats import aggregate_traces
from adakd_ds.experiments.grid.report import (
    BASE_VARIANT,
    CellResult,
    ReferenceRow,
    Status,
    aggregate,
    results_markdown,
    write_aggregate_csv,
    write_cells_csv,
)


def write_reports(
    out: Path,
    rows: Sequence[CellResult],
    losses: Sequence[str],
    variants: Sequence[tuple[str, str]],
    eval_note: str,
    references: Sequence[ReferenceRow] = (),
    title: str | None = None,
) -> str:
    """results.md, results.csv (per cell), results_aggregate.csv and results.png in ``out``; returns the markdown.
    The r/tau table reads the history.jsonl in each finished non-base cell's ``cell_dir``; ``title``: the chart's
    (default chart.DEFAULT_TITLE), best saying what was measured on what."""
    out.mkdir(parents=True, exist_ok=True)
    order = {key: i for i, key in enumerate((loss, v) for loss in losses for v, _ in variants)}
    done = [r for r in rows if r.status is Status.DONE and r.variant != BASE_VARIANT and r.cell_dir]
    done.sort(key=lambda r: (order.get((r.loss, r.variant), len(order)), r.seed))
    traces = aggregate_traces((r.loss, r.variant, Path(r.cell_dir)) for r in done)
    markdown = results_markdown(rows, losses, variants, eval_note, references, traces)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    agg = aggregate(rows)
    write_cells_csv(rows, out / "results.csv")
    write_aggregate_csv(agg, out / "results_aggregate.csv")
    chart.write_png(agg, losses, variants, out / "results.png", references, title or chart.DEFAULT_TITLE)
    return markdown
