"""LATF's ratio r and IDTS's temperature tau over training, per grid cell and per (loss, variant), from history.jsonl.

The score tables say whether AdaKD helped; these say what its controllers actually did while it trained (how many
tokens LATF kept, which temperatures IDTS chose), so a surprising score can be checked against the run's behaviour.
A cell without a history, or a run that logged no tau (a variant without IDTS), gives "–", never an error: the
report must be writable for any grid, half-finished ones included. Also home of the grid's one mean/std convention.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adakd_ds.experiments.seed_stats import mean_std

HISTORY_FILE = "history.jsonl"  # what the trainer appends to <output.dir>, one JSON object per step


class Trace(str, enum.Enum):
    """The per-step keys of history.jsonl that are summarised."""

    RATIO = "ratio"  # LATF's r: the fraction of tokens that get the KD loss
    TAU_MEAN = "idts/tau_mean"  # IDTS: the step's mean temperature over tokens
    TAU_MIN = "idts/tau_min"
    TAU_MAX = "idts/tau_max"


def read_history(path: Path) -> list[dict[str, Any]]:
    """The step records of a history.jsonl. Blank lines are skipped; a torn last line (a run killed mid-write) is
    dropped; a bad line anywhere else is a ValueError naming it, because that file is damaged, not just cut short."""
    lines = [(i, line) for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    records = []
    for k, (i, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i}: not a JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{i}: a step record must be a JSON object")
        records.append(record)
    return records


@dataclass(frozen=True)
class SeriesStats:
    """One per-step series. For one cell: over its steps. Aggregated over seeds: ``mean`` and ``seed_std`` are the
    mean and std of the cells' means, ``step_std`` the mean of the cells' stds, min/max the extremes of all cells."""

    mean: float
    step_std: float
    min: float
    max: float
    seed_std: float | None = None  # aggregates only


def series_stats(values: Sequence[float]) -> SeriesStats | None:
    mean, std = mean_std(values)
    if mean is None or std is None:
        return None
    return SeriesStats(mean, std, min(values), max(values))


def _number(value: Any) -> float | None:
    """A finite logged number, else None (a null, a string or a NaN step does not enter the summary)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class CellTrace:
    """One cell's summary: its steps and each Trace's statistics over them (None when the run never logged it)."""

    steps: int
    series: dict[Trace, SeriesStats | None]


def summarize_history(records: Sequence[dict[str, Any]]) -> CellTrace:
    series = {}
    for trace in Trace:
        values = [v for v in (_number(r.get(trace.value)) for r in records) if v is not None]
        series[trace] = series_stats(values)
    return CellTrace(len(records), series)


def cell_trace(cell_dir: Path) -> CellTrace | None:
    """The summary of <cell_dir>/history.jsonl; None when there is none or it cannot be read (shown as "–")."""
    try:
        return summarize_history(read_history(Path(cell_dir) / HISTORY_FILE))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class TraceRow:
    """One (loss, variant): its cells' summaries pooled over training seeds."""

    loss: str
    variant: str
    n_seeds: int  # cells with a readable history
    series: dict[Trace, SeriesStats | None]


def pool(cells: Sequence[SeriesStats]) -> SeriesStats | None:
    """The over-seeds summary of some cells' series (see SeriesStats)."""
    mean, seed_std = mean_std([c.mean for c in cells])
    step_std = mean_std([c.step_std for c in cells])[0]
    if mean is None or step_std is None:
        return None
    return SeriesStats(mean, step_std, min(c.min for c in cells), max(c.max for c in cells), seed_std)


def aggregate_traces(cells: Iterable[tuple[str, str, Path]]) -> list[TraceRow]:
    """(loss, variant, cell_dir) per finished cell -> one row per (loss, variant), in first-seen order."""
    groups: dict[tuple[str, str], list[CellTrace]] = {}
    for loss, variant, cell_dir in cells:
        trace = cell_trace(cell_dir)
        groups.setdefault((loss, variant), []).extend([trace] if trace is not None else [])
    rows = []
    for (loss, variant), traces in groups.items():
        series = {t: pool([s for c in traces if (s := c.series[t]) is not None]) for t in Trace}
        rows.append(TraceRow(loss, variant, len(traces), series))
    return rows


def _cell(s: SeriesStats | None, part: str) -> str:
    if s is None:
        return "–"
    if part == "mean":
        return f"{s.mean:.3f}" + (f" ± {s.seed_std:.3f}" if s.seed_std is not None else "")
    if part == "step_std":
        return f"{s.step_std:.3f}"
    return f"{s.min:.3f} – {s.max:.3f}"


def _range(lo: SeriesStats | None, hi: SeriesStats | None) -> str:
    return "–" if lo is None or hi is None else f"{lo.min:.3f} – {hi.max:.3f}"


def traces_markdown(rows: Sequence[TraceRow], labels: dict[str, str]) -> str:
    """The table of r and tau over training, one row per (loss, variant); ``labels``: variant value -> column name."""
    lines = [
        "| loss | variant | seeds | r | r: std over steps | r: min – max | τ mean | τ mean: std over steps "
        "| τ mean: min – max | τ: min – max over tokens |",
        "|---|---|---:|" + "---:|" * 7,
    ]
    for row in rows:
        ratio, tau = row.series[Trace.RATIO], row.series[Trace.TAU_MEAN]
        cells = [_cell(ratio, p) for p in ("mean", "step_std", "range")]
        cells += [_cell(tau, p) for p in ("mean", "step_std", "range")]
        cells.append(_range(row.series[Trace.TAU_MIN], row.series[Trace.TAU_MAX]))
        lines.append(
            f"| {row.loss} | {labels.get(row.variant, row.variant)} | {row.n_seeds} | " + " | ".join(cells) + " |"
        )
    caption = (
        "LATF's r (the fraction of tokens given the KD loss) and IDTS's mean temperature τ per step, from each cell's "
        f"{HISTORY_FILE}: each cell's mean over its training steps, then mean ± std (population) over seeds; 'std "
        "over steps' is the mean over seeds of each cell's std over its steps; min – max are over all steps of all "
        "seeds; the last column is the lowest and highest single-token τ. '–': not logged by that run."
    )
    return "\n".join(lines) + "\n\n" + caption
