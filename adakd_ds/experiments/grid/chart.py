"""results.png of an experiment grid: one panel per metric, a group of bars per loss, a bar per variant.

Figure + FigureCanvasAgg (no pyplot): the Agg backend without touching pyplot's global backend, so it works headless
and inside any caller. ``build_figure`` is apart from saving so that tests can measure the layout (the legend must
never hide a bar). Error bars are the std over training seeds; a * above a bar marks a delta vs base that exceeds
2 std (report.exceeds_2std); reference models are labelled dashed lines across each panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adakd_ds.experiments.grid.report import METRIC_TITLES, METRICS, AggregateRow, ReferenceRow

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_TITLE = "Distilled students: score of each base loss and AdaKD variant on the evaluation set"
GROUP_WIDTH = 0.8  # of the 1.0 between two losses' group centres
LABEL_MARGIN = 1.2  # x units right of the last group where the reference lines' names go (clear of every bar)
HEADROOM = 1.15  # the y axis top over the highest bar + error bar or reference line, room for the * marks


def _value(a: AggregateRow | ReferenceRow | None, metric: str, stat: str) -> float | None:
    return getattr(a, f"{metric}_{stat}") if a is not None else None


def _bars(ax: Axes, agg: Sequence[AggregateRow], losses: Sequence[str], variants: Sequence[tuple[str, str]],
          metric: str, colors: dict[str, str]) -> float:  # fmt: skip
    """One group per loss, its present variants centred on the loss's integer x; returns the highest top drawn."""
    by_key = {(a.loss, a.variant): a for a in agg}
    present = [[(v, by_key[loss, v]) for v, _ in variants if _value(by_key.get((loss, v)), metric, "mean") is not None]
               for loss in losses]  # fmt: skip
    width = GROUP_WIDTH / max([1, *map(len, present)])
    top = 0.0
    for i, group in enumerate(present):
        for k, (value, a) in enumerate(group):
            x = i + (k - (len(group) - 1) / 2) * width
            mean, std = _value(a, metric, "mean") or 0.0, _value(a, metric, "std") or 0.0
            ax.bar(x, mean, width, yerr=std, capsize=3, color=colors[value], edgecolor="white", linewidth=0.5)
            top = max(top, mean + std)
            if _value(a, metric, "exceeds_2std"):
                ax.annotate("*", (x, mean + std), xytext=(0, 1), textcoords="offset points", ha="center",
                            va="bottom", fontsize=12, fontweight="bold")  # fmt: skip
    return top


def _references(ax: Axes, references: Sequence[ReferenceRow], metric: str, x_end: float, y_top: float) -> None:
    """Dashed lines over the whole panel, each named in the right margin; names closer than ~4% of the axis
    height are pushed apart so they stay readable."""
    lines = sorted((y, r.name) for r in references if (y := _value(r, metric, "mean")) is not None)
    gap = 0.045 * y_top
    last = gap / 2 - gap  # the lowest name sits at least half a gap above the x axis
    for y, name in lines:
        ax.axhline(y, color="0.35", linestyle="--", linewidth=1.0, zorder=0.5)
        last = max(y, last + gap)
        ax.text(x_end - 0.05, last, f"{name} {y:.1f}", ha="right", va="center", fontsize=7.5, color="0.2",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0, "alpha": 0.85})  # fmt: skip


def build_figure(
    agg: Sequence[AggregateRow],
    losses: Sequence[str],
    variants: Sequence[tuple[str, str]],
    references: Sequence[ReferenceRow] = (),
    title: str = DEFAULT_TITLE,
) -> Figure:
    """The chart as a Figure (laid out by constrained layout, legend below the panels, outside every axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    palette = [f"C{i}" for i in range(10)]
    colors = {value: palette[j % len(palette)] for j, (value, _) in enumerate(variants)}
    fig = Figure(figsize=(2 * (2.2 + 1.1 * max(1, len(losses))), 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    x_end = len(losses) - 0.5 + (LABEL_MARGIN if references else 0.0)
    for k, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), k + 1)
        top = _bars(ax, agg, losses, variants, metric, colors)
        refs = [y for r in references if (y := _value(r, metric, "mean")) is not None]
        y_top = HEADROOM * max([top, *refs]) or 1.0
        ax.set_ylim(0, y_top)
        _references(ax, references, metric, x_end, y_top)
        ax.set_xlim(-0.5, x_end)
        ax.set_xticks(range(len(losses)))
        ax.set_xticklabels(losses)
        ax.set_xlabel("base loss")
        ax.set_ylabel(f"{METRIC_TITLES[metric]} (x100)")
        ax.set_title(METRIC_TITLES[metric])
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(color=colors[value], label=label) for value, label in variants]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize="small",
               frameon=False, title="mean ± std over training seeds;  * |Δ vs base| > 2 std;  dashed: reference models",
               title_fontsize="small")  # fmt: skip
    fig.suptitle(title)
    return fig


def write_png(
    agg: Sequence[AggregateRow],
    losses: Sequence[str],
    variants: Sequence[tuple[str, str]],
    path: Path,
    references: Sequence[ReferenceRow] = (),
    title: str = DEFAULT_TITLE,
) -> Figure:
    """Save build_figure's chart as a PNG at ``path``; returns the Figure (for inspection)."""
    fig = build_figure(agg, losses, variants, references, title)
    fig.savefig(path, format="png", dpi=110)
    return fig
