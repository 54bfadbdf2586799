"""The allowed values of every numeric config key, so a bad value fails in validate() naming the key, not 100 s later
in torch. A numeric key without a range is a bug (tests/engine/test_config.py)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """The allowed values of one numeric key: lo / hi bounds (None = unbounded), each open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        left = "-inf" if self.lo is None else f"{self.lo:g}"
        right = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open or self.lo is None else '['}{left}, {right}{')' if self.hi_open or self.hi is None else ']'}"


POSITIVE = Range(0.0, None, lo_open=True)
NON_NEGATIVE = Range(0.0)
UNIT = Range(0.0, 1.0)
AT_LEAST_1 = Range(1)
# The range of every numeric key, so a bad value fails in validate() naming the key, not 100 s later in torch.
NUMERIC_RANGES: dict[str, Range] = {
    "data.max_prompt_len": AT_LEAST_1,
    "data.max_len": Range(2),
    "loss.temperature": POSITIVE,
    "loss.ratio_init": Range(0.0, 1.0, lo_open=True),
    "loss.r_min": Range(0.0, 1.0, lo_open=True),
    "loss.ema_beta": Range(0.0, 1.0, hi_open=True),
    "loss.eps": NON_NEGATIVE,
    "loss.delta": Range(0.0, 1.0, hi_open=True),
    "loss.warmup_frac": UNIT,
    "loss.c": NON_NEGATIVE,
    "loss.jsd_beta": Range(0.0, 1.0, lo_open=True, hi_open=True),
    "loss.skew_lambda": Range(0.0, 1.0, lo_open=True, hi_open=True),
    "loss.ab_alpha": Range(),
    "loss.ab_beta": Range(),
    "loss.kd_ratio": UNIT,
    "loss.chunk_size": NON_NEGATIVE,
    "train.lr": POSITIVE,
    "train.warmup_ratio": UNIT,
    "train.min_lr_ratio": UNIT,
    "train.weight_decay": NON_NEGATIVE,
    "train.grad_clip": NON_NEGATIVE,
    "train.epochs": AT_LEAST_1,
    "train.max_steps": Range(-1),  # -1 (or 0): use epochs
    "train.micro_batch": AT_LEAST_1,
    "train.grad_accum": AT_LEAST_1,
    "train.seed": NON_NEGATIVE,
    "train.max_bad_steps": AT_LEAST_1,
    "train.eval_interval": NON_NEGATIVE,  # 0: only at the end
    "policy.gkd_alpha": UNIT,
    "policy.capacity": AT_LEAST_1,
    "policy.init_threshold": UNIT,
    "policy.threshold_step": UNIT,
    "policy.loss_eps": Range(),  # any finite rise; a negative one raises phi at every eval (the tests use it)
    "output.log_interval": AT_LEAST_1,
    "output.save_interval": NON_NEGATIVE,
    "output.keep_last": AT_LEAST_1,
}


def numeric_keys(cfg: Any, prefix: str = "") -> dict[str, float]:
    """Every int / float leaf of the config tree by its dotted name (bools are not numbers here)."""
    out: dict[str, float] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(numeric_keys(value, f"{prefix}{f.name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{f.name}"] = value
    return out


def range_problems(cfg: Any) -> list[str]:
    """One message per numeric key outside its range; a numeric key without a range is a bug (test_config)."""
    problems = []
    for key, value in numeric_keys(cfg).items():
        rng = NUMERIC_RANGES.get(key)
        if rng is not None and not rng.admits(value):
            problems.append(f"{key} must be in {rng.describe()}, got {value}")
    return problems


_KEY = re.compile(r"(?<![\w.])([a-z_]+\.[a-z_0-9]+)")


def keys_named(message: str) -> set[str]:
    """The dotted config keys a problem message names (the words 'section.key')."""
    return set(_KEY.findall(message))


def ranges_first(cfg: Any, checks: list[str]) -> list[str]:
    """Each key's own range before any relation between keys (issue 25), so a bad value is named with its value.

    A key out of its range gets one message: its own check from `checks` (one that names that key alone) or else the
    generic range line. A check that names an out-of-range key beside others is a relation judged on a bad value
    ('max_prompt_len must be smaller than max_len' for max_len = -1), and is dropped. The other checks follow.
    """
    generic = {p.split()[0]: p for p in range_problems(cfg)}
    own: dict[str, str] = {}
    rest = []
    for check in checks:
        named = keys_named(check)
        if len(named) == 1 and named <= generic.keys():
            own.setdefault(next(iter(named)), check)
        elif not named & generic.keys():
            rest.append(check)
    return [own.get(key, line) for key, line in generic.items()] + rest
