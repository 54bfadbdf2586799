"""What one loss forward saw, globally: the numbers behind the progress bar, TensorBoard and the LATF controller."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LossStats:
    """What one forward saw, globally: for the progress bar, TensorBoard and the LATF controller."""

    loss: float  # the global objective L
    kd_loss: float
    ce_loss: float
    ratio: float
    k: int  # selected tokens (global)
    n: int  # valid tokens (global)
    tau_min: float = 1.0
    tau_mean: float = 1.0
    tau_max: float = 1.0
    diff_mean: float = 0.0
    diff_q10: float = 0.0
    diff_q50: float = 0.0
    diff_q90: float = 0.0
    median: float = 0.0  # the global lower median of the selected scores (IDTS only; else 0.0)
    step_part: float = 0.0  # this micro-batch's share of the optimizer-step objective (= loss without accumulation)
    rank_share: list[float] = field(default_factory=list)  # fraction of the selected tokens held by each rank
    taus: Tensor | None = None  # per selected token, global order
    scores: Tensor | None = None  # per valid token, global order
    selected: Tensor | None = None  # bool per valid token, global order


def fill_plain_stats(stats: LossStats, n: int, counts: list[int], tau: float, dev: torch.device) -> None:
    """Plain KD: every valid token is selected at the fixed temperature; no scores were computed."""
    stats.k = n
    stats.tau_min = stats.tau_mean = stats.tau_max = float(tau)
    stats.rank_share = [c / n for c in counts]
    stats.taus = torch.full((n,), float(tau), dtype=torch.float64, device=dev)
    stats.selected = torch.ones(n, dtype=torch.bool, device=dev)


def fill_selection_stats(
    stats: LossStats, scores: Tensor, selected: Tensor, taus: Tensor, counts: list[int], ratio: float
) -> None:
    sel_taus = taus[selected]
    q = torch.quantile(scores.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=scores.device))
    stats.ratio = ratio
    stats.tau_min, stats.tau_mean, stats.tau_max = (
        float(sel_taus.min()),
        float(sel_taus.mean()),
        float(sel_taus.max()),
    )
    stats.diff_mean = float(scores.double().mean())
    stats.diff_q10, stats.diff_q50, stats.diff_q90 = (float(v) for v in q)
    k = max(int(selected.sum()), 1)
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    stats.rank_share = [int(selected[bounds[r] : bounds[r + 1]].sum()) / k for r in range(len(counts))]
    stats.taus, stats.scores, stats.selected = sel_taus.detach(), scores.detach(), selected
