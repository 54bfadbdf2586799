"""Which response a step trains on: the dataset's, fresh samples of the current student, or a replay-buffer batch.

The choice is made once per optimizer step from one uniform `u` drawn from a generator seeded by the run's seed and
advanced identically on every rank (no collective is needed, and none may be skipped: every rank takes the same
branch, so every rank runs the same generation forwards). Its state is part of the checkpoint.

- `dataset`: always the dataset (no draw).
- `gkd` (Agarwal et al., on-policy): `u < gkd_alpha` -> generated, else dataset.
- `distillm` (Ko et al., adaptive off-policy), as its authors' code does it, with phi the adaptive threshold:
  `u < phi * (1 - step / total)` or (`u < phi` and the buffer is not full) -> generated (and stored);
  otherwise `u < phi` -> replay; otherwise dataset. phi starts at `init_threshold` and rises by `threshold_step`
  (capped at 1) when the held-out validation loss has risen by `loss_eps` or more since the last rise (the first
  measurement is the first reference).
"""

from __future__ import annotations

import enum
from typing import Any

import torch

from adakd_ds.config.schema import DataPolicy, PolicyConfig


class Source(str, enum.Enum):
    DATASET = "dataset"
    GENERATED = "generated"  # fresh samples of the current student
    REPLAY = "replay"  # a batch of the replay buffer (distillm)


class Threshold:
    """DistiLLM's phi: rises by `step` (capped at 1) when the validation loss rose by `eps` since the last rise."""

    def __init__(self, init: float, step: float, eps: float) -> None:
        self.phi, self.step, self.eps = init, step, eps
        self.reference: float | None = None  # the validation loss at the last rise (first: the first measurement)
        self.last: float | None = None

    def observe(self, val_loss: float) -> bool:
        """Feed one validation loss; returns whether phi rose."""
        self.last = val_loss
        if self.reference is None:
            self.reference = val_loss
            return False
        if val_loss - self.reference >= self.eps:
            self.phi = min(1.0, round(self.phi + self.step, 12))
            self.reference = val_loss
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi, "reference": self.reference, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phi, self.reference, self.last = float(state["phi"]), state["reference"], state["last"]


class PolicyDraw:
    """The per-step global draw of the response source, with counters for the logs."""

    def __init__(self, cfg: PolicyConfig, seed: int, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = max(total_steps, 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.threshold = Threshold(cfg.init_threshold, cfg.threshold_step, cfg.loss_eps)
        self.counts = {s.value: 0 for s in Source}

    @property
    def active(self) -> bool:
        return self.cfg.data_policy is not DataPolicy.DATASET

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def choose(self, step: int, buffer_full: bool) -> Source:
        """The source of optimizer step `step` (0-based: the steps done before it); identical on every rank."""
        source = self.decide(step, buffer_full, self._uniform()) if self.active else Source.DATASET
        self.counts[source.value] += 1
        return source

    def decide(self, step: int, buffer_full: bool, u: float) -> Source:
        """The rule for one uniform u (a pure function, tested on its own)."""
        policy = self.cfg.data_policy
        if policy is DataPolicy.GKD:
            return Source.GENERATED if u < self.cfg.gkd_alpha else Source.DATASET
        if policy is DataPolicy.DISTILLM:
            phi = self.threshold.phi
            if u < phi * (1.0 - step / self.total_steps) or (u < phi and not buffer_full):
                return Source.GENERATED
            return Source.REPLAY if u < phi else Source.DATASET
        return Source.DATASET

    @property
    def generated_share(self) -> float:
        """Share of the steps so far (this run and the ones it resumed) that trained on student-generated text."""
        total = sum(self.counts.values())
        return (self.counts[Source.GENERATED.value] + self.counts[Source.REPLAY.value]) / max(total, 1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "threshold": self.threshold.state_dict(),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.threshold.load_state_dict(state["threshold"])
        self.counts.update({k: int(v) for k, v in state["counts"].items()})
