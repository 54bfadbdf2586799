"""Total variation distance: bounded in [0, 1] and symmetric."""

from __future__ import annotations

from torch import Tensor

from adakd_ds.loss.divergences._common import tempered_log_probs


def total_variation(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    q = tempered_log_probs(student_logits, tau).exp()
    p = tempered_log_probs(teacher_logits, tau).exp()
    return 0.5 * (p - q).abs().sum(-1)
