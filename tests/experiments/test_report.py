"""The grid report's significance marks, reference rows, chart layout and r/tau summaries, against hand-computed
numbers (no training: every input is written here)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from adakd_ds.experiments.grid.cell_stats import Trace, aggregate_traces, cell_trace, read_history, summarize_history
from adakd_ds.experiments.grid.chart import build_figure, write_png
from adakd_ds.experiments.grid.report import (
    CellResult,
    ReferenceRow,
    Status,
    aggregate,
    results_markdown,
)
from adakd_ds.experiments.grid.reports import write_reports
from adakd_ds.experiments.seed_stats import exceeds_2std

VARIANTS = [("base", "base"), ("adakd", "+AdaKD"), ("latf", "+LATF only")]
REFS = [ReferenceRow("teacher", 30.0, 0.5, 9.0, 0.25, 3), ReferenceRow("untrained student", 1.0, 0.0, 0.0, 0.0, 1)]


def _row(loss: str, variant: str, seed: int, rouge: float, em: float, cell_dir: str = "") -> CellResult:
    return CellResult(loss, variant, seed, Status.DONE, rougeL=rouge, exact_match=em, cell_dir=cell_dir)


def _rows() -> list[CellResult]:
    return [
        _row("rkl", "base", 1, 10.0, 1.0),
        _row("rkl", "base", 2, 12.0, 3.0),  # ROUGE-L 11 ± 1, EM 2 ± 1
        _row("rkl", "adakd", 1, 14.0, 2.0),
        _row("rkl", "adakd", 2, 16.0, 4.0),  # ROUGE-L 15 ± 1: +4 > 2*1 -> marked; EM 3 ± 1: +1 <= 2 -> not
        _row("rkl", "latf", 1, 20.0, 9.0),  # one seed: no mark whatever the delta
    ]


# ------------------------------------------------------------------------------------------------ the 2-std rule


def test_exceeds_2std_rule_and_boundary() -> None:
    base = [10.0, 12.0]  # mean 11, population std 1
    assert exceeds_2std(base, [13.0, 15.0]) is True  # delta 3 > 2 * 1
    assert exceeds_2std(base, [12.0, 14.0]) is False  # delta 2 == 2 * 1: not strictly more
    assert exceeds_2std(base, [7.0, 9.0]) is True  # delta -3: the size counts, not the sign
    assert exceeds_2std(base, [12.0, 18.0]) is False  # delta 4, but the variant's std 3 sets the bar at 6
    assert exceeds_2std([12.0, 18.0], [19.5, 20.5]) is False  # delta 5 vs base std 3: the larger std counts
    assert exceeds_2std([5.0, 5.0], [5.5, 5.5]) is True  # no spread at all: any delta exceeds 0
    assert exceeds_2std(base, [20.0]) is None and exceeds_2std([11.0], [20.0, 21.0]) is None
    assert exceeds_2std([], []) is None


def test_aggregate_fields_and_csv(tmp_path: Path) -> None:
    agg = {(a.loss, a.variant): a for a in aggregate(_rows())}
    assert agg["rkl", "adakd"].rougeL_delta == pytest.approx(4.0) and agg["rkl", "adakd"].rougeL_exceeds_2std is True
    assert agg["rkl", "adakd"].exact_match_delta == pytest.approx(1.0)
    assert agg["rkl", "adakd"].exact_match_exceeds_2std is False
    assert agg["rkl", "latf"].rougeL_delta == pytest.approx(9.0) and agg["rkl", "latf"].rougeL_exceeds_2std is None
    assert agg["rkl", "base"].rougeL_exceeds_2std is None
    write_reports(tmp_path, _rows(), ["rkl"], VARIANTS, "note")
    with open(tmp_path / "results_aggregate.csv", newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert rows["adakd"]["rougeL_exceeds_2std"] == "True" and rows["adakd"]["exact_match_exceeds_2std"] == "False"
    assert rows["latf"]["rougeL_exceeds_2std"] == "" and rows["base"]["exact_match_exceeds_2std"] == ""


def test_markdown_marks_and_references() -> None:
    md = results_markdown(_rows(), ["rkl"], VARIANTS, "one greedy pass", references=REFS)
    lines = md.splitlines()
    rouge = lines[lines.index("### ROUGE-L (x100)") + 4]
    assert rouge == "| rkl | 11.00 ± 1.00 | 15.00 ± 1.00 (+4.00)* | 20.00 ± 0.00 (+9.00) |"
    em = lines[lines.index("### exact match (x100)") + 4]
    assert em == "| rkl | 2.00 ± 1.00 | 3.00 ± 1.00 (+1.00) | 9.00 ± 0.00 (+7.00) |"
    assert "(+x.xx)* marks a delta that exceeds 2 std" in md
    start = lines.index("### Reference models (x100)")
    assert start < lines.index("### ROUGE-L (x100)"), "the references come before the loss tables"
    assert lines[start + 2 : start + 6] == [
        "| model | ROUGE-L | exact match | n |",
        "|---|---:|---:|---:|",
        "| teacher | 30.00 ± 0.50 | 9.00 ± 0.25 | 3 |",
        "| untrained student | 1.00 ± 0.00 | 0.00 ± 0.00 | 1 |",
    ]
    assert "Reference models" not in results_markdown(_rows(), ["rkl"], VARIANTS, "note")


def test_reference_row_from_results_json() -> None:
    results = {"rougeL": {"mean": 31.5, "std": 0.5, "per_seed": [31.0, 32.0]},
               "exact_match": {"mean": 8.0, "std": 1.0, "per_seed": [7.0, 9.0]}}  # fmt: skip
    assert ReferenceRow.from_results("teacher", results) == ReferenceRow("teacher", 31.5, 0.5, 8.0, 1.0, 2)


# ------------------------------------------------------------------------------------------------ r and tau


def _write_history(path: Path, records: list[dict], tail: str = "") -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    lines.insert(1, "   ")  # a blank line is skipped
    (path / "history.jsonl").write_text("\n".join(lines) + "\n" + tail)


def _pstats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


RATIOS = [0.5, 0.6, 0.8, 0.7]
TAUS = [1.0, 1.2, None, 0.9]  # step 3 logged no tau (an eval-only record, say)


def _records(ratios: list[float], taus: list[float | None]) -> list[dict]:
    out = []
    for step, (r, t) in enumerate(zip(ratios, taus, strict=True), 1):
        rec = {"step": step, "loss": 2.0, "ratio": r, "lr": 1e-3}
        if t is not None:
            rec.update({"idts/tau_mean": t, "idts/tau_min": t - 0.25 * step, "idts/tau_max": t + 0.5 * step})
        out.append(rec)
    return out


def test_read_history_blank_and_torn_lines(tmp_path: Path) -> None:
    _write_history(tmp_path / "c", _records(RATIOS, TAUS), tail='{"step": 5, "lo')
    records = read_history(tmp_path / "c" / "history.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n{not json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_history(tmp_path / "bad.jsonl")


def test_cell_summary_against_plain_python(tmp_path: Path) -> None:
    _write_history(tmp_path / "c", _records(RATIOS, TAUS), tail='{"torn')
    trace = cell_trace(tmp_path / "c")
    assert trace is not None and trace.steps == 4
    ratio, tau = trace.series[Trace.RATIO], trace.series[Trace.TAU_MEAN]
    assert ratio is not None and tau is not None
    # ratio 0.5 0.6 0.8 0.7: mean 0.65, std sqrt((0.0225 + 0.0025 + 0.0225 + 0.0025) / 4) = sqrt(0.0125)
    assert (ratio.mean, ratio.step_std, ratio.min, ratio.max) == pytest.approx((0.65, math.sqrt(0.0125), 0.5, 0.8))
    assert (tau.mean, tau.step_std) == pytest.approx(_pstats([1.0, 1.2, 0.9]))
    assert (tau.min, tau.max) == pytest.approx((0.9, 1.2))
    # tau_min per step 1-0.25, 1.2-0.5, 0.9-1.0 -> lowest -0.1; tau_max 1.5, 2.2, 2.9 -> highest 2.9
    assert trace.series[Trace.TAU_MIN].min == pytest.approx(-0.1)  # type: ignore[union-attr]
    assert trace.series[Trace.TAU_MAX].max == pytest.approx(2.9)  # type: ignore[union-attr]
    no_tau = summarize_history(_records([0.5, 0.5], [None, None]))
    assert no_tau.series[Trace.TAU_MEAN] is None and no_tau.series[Trace.RATIO].mean == 0.5  # type: ignore[union-attr]
    assert cell_trace(tmp_path / "missing") is None


def test_aggregate_over_seeds(tmp_path: Path) -> None:
    other = [0.3, 0.3, 0.4, 0.2]
    _write_history(tmp_path / "s1", _records(RATIOS, TAUS))
    _write_history(tmp_path / "s2", _records(other, [2.0, 2.0, 2.0, 2.0]))
    (row,) = aggregate_traces([("rkl", "adakd", tmp_path / "s1"), ("rkl", "adakd", tmp_path / "s2"),
                               ("rkl", "adakd", tmp_path / "none")])  # fmt: skip
    assert row.n_seeds == 2, "the cell without a history is not a seed of the summary"
    ratio = row.series[Trace.RATIO]
    (m1, s1), (m2, s2) = _pstats(RATIOS), _pstats(other)
    assert ratio is not None
    assert (ratio.mean, ratio.seed_std) == pytest.approx(_pstats([m1, m2]))
    assert ratio.step_std == pytest.approx((s1 + s2) / 2)
    assert (ratio.min, ratio.max) == pytest.approx((0.2, 0.8))
    tau = row.series[Trace.TAU_MEAN]
    assert tau is not None and (tau.mean, tau.seed_std) == pytest.approx(_pstats([_pstats([1.0, 1.2, 0.9])[0], 2.0]))


def test_write_reports_trace_table(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    _write_history(cells / "rkl-adakd-s1", _records(RATIOS, TAUS))
    _write_history(cells / "rkl-latf-s1", _records([0.4, 0.6], [None, None]))
    rows = [
        _row("rkl", "base", 1, 10.0, 1.0, str(cells / "rkl-base-s1")),
        _row("rkl", "adakd", 1, 12.0, 1.0, str(cells / "rkl-adakd-s1")),
        _row("rkl", "latf", 1, 12.0, 1.0, str(cells / "rkl-latf-s1")),
        _row("fkl", "adakd", 1, 12.0, 1.0, str(cells / "fkl-adakd-s1")),  # no history at all
    ]
    md = write_reports(tmp_path / "out", rows, ["rkl", "fkl"], VARIANTS, "note", references=REFS, title="T")
    lines = md.splitlines()
    table = lines[lines.index("### r and τ over training") + 4 :][:3]
    tau_mean, tau_std = _pstats([1.0, 1.2, 0.9])
    assert table[0] == (
        f"| rkl | +AdaKD | 1 | 0.650 ± 0.000 | {math.sqrt(0.0125):.3f} | 0.500 – 0.800 | {tau_mean:.3f} ± 0.000 | {tau_std:.3f} "
        "| 0.900 – 1.200 | -0.100 – 2.900 |"
    )
    assert table[1] == "| rkl | +LATF only | 1 | 0.500 ± 0.000 | 0.100 | 0.400 – 0.600 | – | – | – | – |"
    assert table[2] == "| fkl | +AdaKD | 0 | – | – | – | – | – | – | – |"
    assert "| base |" not in "\n".join(table)


# ------------------------------------------------------------------------------------------------ the chart


def _chart_rows() -> list[CellResult]:
    rows = []
    for loss, base in (("fkl", 20.0), ("rkl", 22.0), ("gkd", 25.0)):
        for variant, gain in (("base", 0.0), ("adakd", 3.0), ("latf", 0.5)):
            if variant == "latf" and loss != "rkl":
                continue
            rows += [_row(loss, variant, s, base + gain + 0.3 * s, 5.0 + gain / 3 + 0.2 * s) for s in (1, 2, 3)]
    return rows


def test_png_written_and_not_blank(tmp_path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    fig = write_png(aggregate(_chart_rows()), ["fkl", "rkl", "gkd"], VARIANTS, tmp_path / "r.png", REFS, "Title")
    assert isinstance(fig, Figure)
    pixels = imread(str(tmp_path / "r.png"))
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert float(pixels[..., :3].std()) > 0.01, "the chart must not be blank"


def test_chart_marks_references_and_layout() -> None:
    agg = aggregate(_chart_rows())
    fig = build_figure(agg, ["fkl", "rkl", "gkd"], VARIANTS, REFS, title="Scores on X")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    assert fig.get_suptitle() == "Scores on X"
    for ax, metric in zip(fig.axes, ("rougeL", "exact_match"), strict=True):
        bars = ax.patches
        assert len(bars) == 7  # fkl 2, rkl 3, gkd 2
        assert ax.get_ylim()[0] == 0
        stars = [t for t in ax.texts if t.get_text() == "*"]
        assert len(stars) == sum(bool(getattr(a, f"{metric}_exceeds_2std")) for a in agg) > 0
        names = {t.get_text().rsplit(" ", 1)[0] for t in ax.texts if t.get_text() != "*"}
        assert names == {"teacher", "untrained student"}
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert sorted(line.get_ydata()[0] for line in dashed) == [getattr(r, f"{metric}_mean") for r in REFS[::-1]]
        # the rkl group (3 bars) is centred on x = 1, the fkl group (2 bars) on x = 0
        centres = sorted(b.get_x() + b.get_width() / 2 for b in bars)
        assert sum(centres[2:5]) / 3 == pytest.approx(1.0) and sum(centres[:2]) / 2 == pytest.approx(0.0)
    legend = fig.legends[0]
    box = legend.get_window_extent(renderer)
    fig_box = fig.bbox
    assert box.x0 >= fig_box.x0 and box.y0 >= fig_box.y0 and box.x1 <= fig_box.x1 and box.y1 <= fig_box.y1
    for ax in fig.axes:
        for bar in ax.patches:
            assert not box.overlaps(bar.get_window_extent(renderer)), "the legend covers a bar"
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend sits inside a panel"
