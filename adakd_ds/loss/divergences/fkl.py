"""Forward KL, KL(p || q): the classic KD loss; mass-covering for the student."""

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


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    return kl_from_logs(log_p, log_q)


@torch.no_grad()
def forward_kl_with_grad(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float, want_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(KL(p||q) per row, g, f) with d KL / d student_logits = f * g; here g = q - p and f = 1 / tau.

    The gradient is analytic, so no autograd graph (and its [c, V] saved tensors) is built.
    """
    tau_col = tau_column(tau, student_logits)
    q, log_q = tempered_probs_and_logs(student_logits, tau_col)  # 2 exps per logit in all, not 4
    p, log_p = tempered_probs_and_logs(teacher_logits, tau_col)
    diff = log_p.sub_(log_q)  # log p - log q
    if torch.compiler.is_compiling():  # loss.kernel compiled: no host sync; the eager NaN branch's result
        diff = torch.where(p == 0, 0.0, diff)
    values = row_dot(p, diff)
    # -inf masks on both sides: 0 * (-inf - -inf); p = 0 contributes 0
    if not torch.compiler.is_compiling() and bool(torch.isnan(values).any()):
        values = row_dot(p, diff.masked_fill_(p == 0, 0.0))
    if not want_grad:
        return values, None, tau_col
    g = q.sub_(p)
    return values, g, tau_col.reciprocal()
