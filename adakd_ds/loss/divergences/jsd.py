"""Generalised Jensen-Shannon divergence with mixture weight beta (GKD)."""

from __future__ import annotations

from torch import Tensor

from adakd_ds.loss.divergences._common import kl_from_logs, log_mixture, tempered_log_probs


def jensen_shannon(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, beta: float = 0.5
) -> Tensor:
    """beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta * p + (1 - beta) * q."""
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl_from_logs(log_p, log_m) + (1.0 - beta) * kl_from_logs(log_q, log_m)
