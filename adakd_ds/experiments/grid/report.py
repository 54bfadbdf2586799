"""Tables, CSVs and the bar chart of an experiment grid (``adakd_ds.experiments.grid.runner``), from per-cell results.

Kept apart from the runner so that the numbers can be rebuilt from disk and unit-tested without training anything.
Aggregation is over TRAINING seeds: each cell's score is already the mean over its evaluation seeds (or one greedy
pass); the std is the population std (ddof 0), the same convention as ``eval_metrics.mean_std``. A delta is marked
when it exceeds 2 std (``exceeds_2std``); reference models (teacher, SFT student, ...) get their own table and lines
on the chart (``chart.py``), and the variants' r and tau over training their own table (``cell_stats.py``).
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from adakd_ds.experiments.grid.cell_stats import TraceRow, traces_markdown
from adakd_ds.experiments.seed_stats import exceeds_2std, mean_std

METRICS = ("rougeL", "exact_match")
METRIC_TITLES = {"rougeL": "ROUGE-L", "exact_match": "exact match"}
BASE_VARIANT = "base"  # the variant every delta is measured against (grid.Variant.BASE)


class Status(str, enum.Enum):
    DONE = "done"  # results.json on disk
    FAILED = "failed"  # training or evaluation raised in this invocation
    STALE = "stale"  # results on disk that do not match this grid's settings; left out of the aggregates
    PENDING = "pending"  # not run (a --fail-fast stop came first)


@dataclass
class CellResult:
    """One row of results.csv: a (loss, variant, seed) cell."""

    loss: str
    variant: str
    seed: int
    status: Status
    rougeL: float | None = None  # mean over evaluation seeds, x100
    rougeL_eval_std: float | None = None  # std over evaluation seeds (0 for greedy)
    exact_match: float | None = None
    exact_match_strict: float | None = None
    seconds: float = 0.0  # wall time spent on this cell in this invocation (0 when it was already done)
    cell_dir: str = ""
    error: str = ""


@dataclass
class AggregateRow:
    """One (loss, variant): mean and std over the cell's DONE training seeds, and the delta of the mean vs base."""

    loss: str
    variant: str
    n_cells: int  # cells of this (loss, variant) in the grid, whatever their status
    n_seeds: int
    n_failed: int
    seeds: list[int]
    rougeL_mean: float | None
    rougeL_std: float | None
    rougeL_delta: float | None  # variant mean - base mean of the same loss; None for base or when one side is empty
    rougeL_exceeds_2std: bool | None  # exceeds_2std of the delta; None without a delta or with < 2 seeds a side
    exact_match_mean: float | None
    exact_match_std: float | None
    exact_match_delta: float | None
    exact_match_exceeds_2std: bool | None


@dataclass(frozen=True)
class ReferenceRow:
    """A fixed model to compare the grid against (the teacher, the SFT student, the untrained student): its own
    table in results.md and a dashed line on the chart. ``n``: how many scores the mean and std are over."""

    name: str
    rougeL_mean: float | None
    rougeL_std: float | None
    exact_match_mean: float | None
    exact_match_std: float | None
    n: int

    @classmethod
    def from_results(cls, name: str, results: dict[str, Any]) -> ReferenceRow:
        """From a launch/evaluate.py results.json: the mean and std over its evaluation seeds."""
        rouge, em = results.get("rougeL") or {}, results.get("exact_match") or {}
        n = len(rouge.get("per_seed") or [])
        return cls(name, rouge.get("mean"), rouge.get("std"), em.get("mean"), em.get("std"), n)


def aggregate(rows: Sequence[CellResult], base_variant: str = BASE_VARIANT) -> list[AggregateRow]:
    """Rows in first-seen (loss, variant) order; only DONE cells enter the means."""
    keys: list[tuple[str, str]] = []
    for r in rows:
        if (r.loss, r.variant) not in keys:
            keys.append((r.loss, r.variant))
    scores: dict[tuple[str, str], dict[str, list[float]]] = {}
    out = []
    for key in keys:
        group = [r for r in rows if (r.loss, r.variant) == key]
        done = sorted((r for r in group if r.status is Status.DONE), key=lambda r: r.seed)
        scores[key] = {m: [getattr(r, m) for r in done if getattr(r, m) is not None] for m in METRICS}
        out.append(
            {
                "loss": key[0],
                "variant": key[1],
                "n_cells": len(group),
                "n_seeds": len(done),
                "n_failed": sum(r.status is Status.FAILED for r in group),
                "seeds": [r.seed for r in done],
            }
        )
    result = []
    for key, row in zip(keys, out, strict=True):
        base = scores.get((key[0], base_variant))
        for m in METRICS:
            mean, std = mean_std(scores[key][m])
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
            base_mean = mean_std(base[m])[0] if base is not None else None
            is_base = key[1] == base_variant
            delta = None if (is_base or mean is None or base_mean is None) else mean - base_mean
            row[f"{m}_delta"] = delta
            row[f"{m}_exceeds_2std"] = None if delta is None or base is None else exceeds_2std(base[m], scores[key][m])
        result.append(AggregateRow(**row))
    return result


def _fmt(
    mean: float | None, std: float | None, delta: float | None = None, n: int = 0, n_cells: int = 0, mark: bool = False
) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
    if delta is not None:
        text += f" ({delta:+.2f})" + ("*" if mark else "")
    if n < n_cells:
        text += f" [n={n}]"
    return text


def markdown_table(
    agg: Sequence[AggregateRow], losses: Sequence[str], variants: Sequence[tuple[str, str]], metric: str
) -> str:
    """Table 1 layout: one row per loss, one column per variant (value, label); the delta is vs the base column."""
    by_key = {(a.loss, a.variant): a for a in agg}
    lines = [
        "| loss | " + " | ".join(label for _, label in variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for loss in losses:
        cells = []
        for value, _ in variants:
            a = by_key.get((loss, value))
            if a is None:
                cells.append("")
                continue
            cells.append(
                _fmt(
                    getattr(a, f"{metric}_mean"),
                    getattr(a, f"{metric}_std"),
                    getattr(a, f"{metric}_delta"),
                    a.n_seeds,
                    a.n_cells,
                    bool(getattr(a, f"{metric}_exceeds_2std")),
                )
            )
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_note(eval_kwargs: dict[str, Any]) -> str:
    """How one cell's score was made (from pipeline.evaluate's settings), for the table caption."""
    if eval_kwargs["greedy"]:
        return "one greedy pass"
    return f"the mean over evaluation seeds {list(eval_kwargs['seeds'])} (sampling, top-p 1.0, temperature 1.0)"


def references_table(references: Sequence[ReferenceRow]) -> str:
    """The reference models' scores, one row each, in the metric tables' number format."""
    lines = [
        "| model | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | n |",
        "|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for ref in references:
        cells = [_fmt(getattr(ref, f"{m}_mean"), getattr(ref, f"{m}_std")) for m in METRICS]
        lines.append(f"| {ref.name} | " + " | ".join(cells) + f" | {ref.n} |")
    return "\n".join(lines)


def results_markdown(
    rows: Sequence[CellResult],
    losses: Sequence[str],
    variants: Sequence[tuple[str, str]],
    eval_note: str,
    references: Sequence[ReferenceRow] = (),
    traces: Sequence[TraceRow] = (),
) -> str:
    """The whole results.md: the reference models, both metric tables, the conventions, the AdaKD variants' r and
    tau over training (``traces``, from cell_stats.aggregate_traces), and every cell that did not finish."""
    agg = aggregate(rows)
    seeds = sorted({r.seed for r in rows})
    parts = []
    if references:
        parts.append(
            "### Reference models (x100)\n\n" + references_table(references) + "\n\nMean ± std (population) over "
            "each model's n scores (its evaluation seeds, or one greedy pass); the same evaluation as the grid's cells."
        )
    for metric in METRICS:
        parts.append(f"### {METRIC_TITLES[metric]} (x100)\n\n" + markdown_table(agg, losses, variants, metric))
    parts.append(
        f"Mean ± std (population, ddof 0) over training seeds {seeds}; each seed's score is {eval_note}. "
        "(+x.xx) is the variant's mean minus the base mean of the same loss; (+x.xx)* marks a delta that exceeds "
        "2 std, i.e. |delta| > 2 x the larger of the two stds (only with >= 2 seeds on both sides); [n=k] marks an "
        "entry where only k of its seeds finished."
    )
    if traces:
        parts.append("### r and τ over training\n\n" + traces_markdown(traces, dict(variants)))
    bad = [r for r in rows if r.status is not Status.DONE]
    if bad:
        parts.append(
            "Cells not in the table:\n\n"
            + "\n".join(f"- {r.loss}-{r.variant}-s{r.seed}: {r.status.value} {r.error}".rstrip() for r in bad)
        )
    return "\n\n".join(parts) + "\n"


def expected_eval(eval_kwargs: dict[str, Any], eval_data: Path) -> dict[str, Any]:
    """What a results.json made with pipeline.evaluate(**eval_kwargs) on ``eval_data`` says about its decoding."""
    seeds = ["greedy"] if eval_kwargs["greedy"] else list(eval_kwargs["seeds"])
    return {"seeds": seeds, "max_new_tokens": eval_kwargs["max_new_tokens"], "data": str(eval_data)}


def check_results(results: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """Why an existing results.json does not answer the grid's question (None when it does). ``expected`` holds
    the decoding 'seeds' (["greedy"] for greedy), 'max_new_tokens', and the eval 'data' path."""
    decoding = results.get("decoding", {})
    got = {
        "seeds": decoding.get("seeds"),
        "max_new_tokens": decoding.get("max_new_tokens"),
        "data": results.get("data"),
    }
    for key, want in expected.items():
        if got.get(key) != want:
            return f"evaluated with {key} {got.get(key)!r}, this grid asks for {want!r}"
    return None


def cell_result(
    loss: str,
    variant: str,
    seed: int,
    cell_dir: Path,
    results: dict[str, Any],
    expected: dict[str, Any],
    seconds: float,
    eval_dir: Path,
) -> CellResult:
    """The CSV row of a cell from its results.json: DONE, or STALE when it was evaluated differently."""
    row = CellResult(loss, variant, seed, Status.DONE, seconds=seconds, cell_dir=str(cell_dir))
    problem = check_results(results, expected)
    if problem:
        row.status, row.error = Status.STALE, f"{problem}; delete {eval_dir} to redo it"
        return row
    row.rougeL, row.rougeL_eval_std = results["rougeL"]["mean"], results["rougeL"]["std"]
    row.exact_match = results["exact_match"]["mean"]
    row.exact_match_strict = results.get("exact_match_strict", {}).get("mean")
    return row


def write_cells_csv(rows: Sequence[CellResult], path: Path) -> None:
    names = [f.name for f in fields(CellResult)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in rows:
            d = asdict(r)
            d["status"] = r.status.value
            writer.writerow(d)


def write_aggregate_csv(agg: Sequence[AggregateRow], path: Path) -> None:
    names = [f.name for f in fields(AggregateRow)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for a in agg:
            d = asdict(a)
            d["seeds"] = " ".join(map(str, a.seeds))
            writer.writerow(d)
