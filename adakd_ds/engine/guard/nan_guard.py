"""The NaN guard: a non-finite step is skipped (no optimizer update), counted and logged; too many in a row abort.

Why: a diverging lr or a broken teacher used to give "non-finite logits on rank(s) [0, 1]" with no step and no
model named, and a checkpoint of blown-up weights could be marked complete. What is checked, at no extra sync:
- the loss: AdaKDLoss agrees on every rank (its health flags travel in its own collectives) and raises
  NonFiniteLogitsError everywhere at once. Then the guard asks which model produced them (one small all-reduce, on
  this rare path only, reached by every rank) and back-propagates NaN instead, so that DeepSpeed's own check of the
  global gradient norm (all-reduced in its step anyway) skips the optimizer update and clears the gradients;
- the gradient norm: a finite loss with a non-finite norm is skipped by DeepSpeed the same way and counted here;
- the weights, before every save: a checkpoint of non-finite weights is never written (one all-reduce per save).
`train.max_bad_steps` consecutive skipped steps abort the run with one line naming the step, the ranks and the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from adakd_ds.loss.adakd_loss import NonFiniteLogitsError
from adakd_ds.loss.fused_head import HeadInput, gathered

# Drills: "teacher|student:STEP[:RANK]" makes that model's logits NaN at that step; "weights:STEP[:RANK]" puts an
# inf into that rank's weight partition before the save of that step.
FAULT_ENV = "ADAKD_NAN_AT"


class NonFiniteAbort(RuntimeError):
    """The run cannot go on: too many non-finite steps in a row, or non-finite weights at a save."""


def _flags_by_rank(local: list[bool]) -> torch.Tensor:
    """[world, len(local)] table of every rank's flags (a collective: every rank must call it)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    table = torch.zeros(world, len(local), dtype=torch.long)
    table[rank] = torch.tensor([int(x) for x in local], dtype=torch.long)
    if world > 1:
        dist.all_reduce(table)
    return table


def _ranks(column: torch.Tensor) -> list[int]:
    return [r for r, flag in enumerate(column.tolist()) if flag]


def _drill(which: str, step: int) -> bool:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return False
    target, at_step, *at_rank = spec.split(":")
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return target == which and step == int(at_step) and (not at_rank or rank == int(at_rank[0]))


Output = torch.Tensor | HeadInput  # a model's logits, or its hidden states and head (loss.fused_head)


def _inject(which: str, step: int, out: Output | None) -> Output | None:
    if out is None or not _drill(which, step):
        return out
    if isinstance(out, HeadInput):  # NaN hidden states give NaN logits in every chunk
        return HeadInput(out.hidden + torch.full_like(out.hidden, float("nan")), out.weight, out.bias)
    return out + torch.full_like(out, float("nan"))


def _finite(out: Output) -> bool:
    """From a fused head: its hidden states and its whole weight (a ZeRO-3 gather: every rank gets here alike)."""
    if isinstance(out, HeadInput):
        with gathered([out.weight]):
            return bool(torch.isfinite(out.hidden).all()) and bool(torch.isfinite(out.weight).all())
    return bool(torch.isfinite(out).all())


def _nan_on_graph(out: Output) -> torch.Tensor:
    """A NaN loss that reaches every gradient the real loss would, so DeepSpeed's norm check skips the update."""
    if isinstance(out, HeadInput):
        return (out.hidden.float().sum() + out.weight.float().sum()) * float("nan")
    return out.float().sum() * float("nan")


class NanGuard:
    """Per-run state: consecutive and total skipped steps, and why the current step went bad."""

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.in_a_row = 0
        self.total = 0
        self._reason: str | None = None

    def guarded_loss(
        self,
        loss_fn: Callable[..., tuple[torch.Tensor, Any]],
        step: int,
        student_logits: Output,
        teacher_logits: Output | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """loss_fn(...), or (a NaN loss on the student's graph, None) when the logits are not finite."""
        student_logits = _inject("student", step, student_logits)
        teacher_logits = _inject("teacher", step, teacher_logits)
        try:
            return loss_fn(student_logits, teacher_logits, *args, **kwargs)
        except NonFiniteLogitsError:
            bad_teacher = teacher_logits is not None and not _finite(teacher_logits)
            table = _flags_by_rank([bad_teacher, not _finite(student_logits)])
            parts = [f"the {name} on rank(s) {_ranks(table[:, i])}" for i, name in enumerate(("teacher", "student"))]
            found = [p for p, col in zip(parts, table.T, strict=True) if int(col.sum())]
            self._reason = "non-finite logits from " + (" and ".join(found) or "an unknown source")
            return _nan_on_graph(student_logits), None

    def end_step(self, step: int, grad_norm: float | None, stats: list[Any]) -> str | None:
        """After the optimizer step: None if it was good, else the line to log (DeepSpeed skipped the update).

        Raises NonFiniteAbort after `max_bad_steps` consecutive bad steps. Every input is the same on every rank.
        """
        norm_ok = grad_norm is None or math.isfinite(float(grad_norm))  # None: this optimizer reports no norm
        if norm_ok and all(s is not None for s in stats):
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        self.total += 1
        reason = self._reason or f"non-finite gradient norm ({grad_norm})"
        self._reason = None
        if self.in_a_row >= self.max_bad_steps:
            raise NonFiniteAbort(
                f"step {step}: {reason}; {self.in_a_row} consecutive non-finite steps (train.max_bad_steps = "
                f"{self.max_bad_steps}): aborting, the last checkpoint is the last good state"
            )
        return f"step {step}: {reason}: skipped, no optimizer update ({self.in_a_row} in a row, {self.total} in all)"

    @staticmethod
    def check_weights(engine: Any, step: int) -> None:
        """Every rank checks its own ZeRO-3 partition; all agree before anything is written (a collective)."""
        local_bad = False
        for param in engine.module.parameters():
            shard = getattr(param, "ds_tensor", param)
            if _drill("weights", step) and shard.numel():
                shard.data.view(-1)[0] = float("inf")
            if shard.numel() and not bool(torch.isfinite(shard).all()):
                local_bad = True
                break
        bad = _ranks(_flags_by_rank([local_bad])[:, 0])
        if bad:
            raise NonFiniteAbort(
                f"step {step}: the student's weights are not finite on rank(s) {bad}: not saving a checkpoint "
                "(the last one written is the last good state)"
            )
