"""Reverse KL, KL(q || p): mode-seeking; the paper's strongest base loss (MiniLLM)."""

from __future__ import annotations

import torch
from torch import Tensor

from adakd_ds.loss.divergences._common import (
    kl_from_logs,
    row_dot,
    tau_column,
    tempered_log_probs,
    tempered_probs_and_logs,
)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    return kl_from_logs(log_q, log_p)


@torch.no_grad()
def reverse_kl_with_grad(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float, want_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(KL(q||p) per row, g, f) with d KL / d student_logits = f * g; g = q * ((log q - log p) - KL), f = 1 / tau."""
    tau_col = tau_column(tau, student_logits)
    q, log_q = tempered_probs_and_logs(student_logits, tau_col)  # 2 exps per logit in all (1 here, 1 for log p)
    log_p = tempered_log_probs(teacher_logits, tau_col)
    diff = log_q.sub_(log_p)  # log q - log p
    if torch.compiler.is_compiling():  # loss.kernel compiled: no host sync; the eager NaN branch's result
        diff = torch.where(q == 0, 0.0, diff)
    values = row_dot(q, diff)
    # -inf masks on both sides: q = 0 contributes 0
    if not torch.compiler.is_compiling() and bool(torch.isnan(values).any()):
        values = row_dot(q, diff.masked_fill_(q == 0, 0.0))
    if not want_grad:
        return values, None, tau_col
    g = diff.sub_(values.unsqueeze(-1)).mul_(q)
    return values, g, tau_col.reciprocal()
