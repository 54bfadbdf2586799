"""Mean, std and the 2-std bar over training seeds: the one convention that every table of the testbed and the grid uses."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population std (ddof 0): the convention of every mean ± std in the grid's reports."""
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def exceeds_2std(base: Sequence[float], variant: Sequence[float]) -> bool | None:
    """Whether a variant's mean differs from its base's by more than 2 std: |mean(variant) - mean(base)| >
    2 * max(std(base), std(variant)), population stds over training seeds. This is the bar the tables mark with *,
    a rough guard against reading seed noise as an effect; None when either side has fewer than 2 seeds, since one
    seed has no spread to compare against."""
    if len(base) < 2 or len(variant) < 2:
        return None
    (base_mean, base_std), (mean, std) = mean_std(base), mean_std(variant)
    assert base_mean is not None and base_std is not None and mean is not None and std is not None
    return abs(mean - base_mean) > 2 * max(base_std, std)
