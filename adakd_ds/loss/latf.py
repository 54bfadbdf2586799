"""LATF: loss-driven adaptive token focusing.

Selection keeps the hardest fraction r of the GLOBAL micro-batch; the controller moves r once per optimizer step from
an EMA of the step loss: widen the focus when the student struggles, narrow it when learning is stable.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from adakd_ds.config.schema import LossConfig


def top_count(n: int, ratio: float) -> int:
    """k = max(1, floor(N * r)), in python float math so every rank gets the same k."""
    return max(1, math.floor(n * ratio))


def select_top_ratio(scores: Tensor, ratio: float) -> Tensor:
    """Boolean mask of the k highest scores; ties go to the lower global index (a stable descending sort)."""
    n = scores.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if n == 0:
        return mask
    order = torch.sort(scores, descending=True, stable=True).indices
    mask[order[: top_count(n, ratio)]] = True
    return mask


class LATFController:
    """The ratio r and the loss EMA that drives it; part of the training state (checkpointed)."""

    def __init__(self, cfg: LossConfig, total_steps: int) -> None:
        self.beta = cfg.ema_beta
        self.eps = cfg.eps
        self.delta = cfg.delta
        self.r_min = cfg.r_min
        self.warmup_steps = int(cfg.warmup_frac * max(total_steps, 0))
        self.ratio = float(cfg.ratio_init)
        self.ema: float | None = None
        self.ref: float | None = None
        self.step = 0

    def update(self, step_loss: float) -> float:
        """Advance one optimizer step with the rank-averaged step loss; returns the new ratio."""
        loss = float(step_loss)
        if not math.isfinite(loss):
            raise ValueError(f"LATF got a non-finite step loss ({loss}) at step {self.step + 1}")
        self.step += 1
        self.ema = loss if self.ema is None else self.beta * self.ema + (1.0 - self.beta) * loss
        if self.step <= self.warmup_steps:
            self.ratio = 1.0
            if self.step == self.warmup_steps:
                self.ref = self.ema
            return self.ratio
        if self.ref is None:  # no warm-up: the first step only sets the reference
            self.ref = self.ema
            return self.ratio
        if self.ema > self.ref * (1.0 + self.eps):
            self.ratio = min(1.0, self.ratio * (1.0 + self.delta))
            self.ref = self.ema
        elif self.ema < self.ref * (1.0 - self.eps):
            self.ratio = max(self.r_min, self.ratio * (1.0 - self.delta))
            self.ref = self.ema
        return self.ratio

    def state_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "ema": self.ema,
            "ref": self.ref,
            "step": self.step,
            "warmup_steps": self.warmup_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratio = float(state["ratio"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.ref = None if state["ref"] is None else float(state["ref"])
        self.step = int(state["step"])
        self.warmup_steps = int(state["warmup_steps"])
