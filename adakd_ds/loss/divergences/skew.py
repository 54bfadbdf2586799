"""Skew KL divergences (DistiLLM): KL against a mixture, which stays finite where one side is tiny."""

from __future__ import annotations

from torch import Tensor

from adakd_ds.loss.divergences._common import kl_from_logs, log_mixture, tempered_log_probs


def skew_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, lam: float = 0.1
) -> Tensor:
    """KL(p || lam * p + (1 - lam) * q)."""
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    return kl_from_logs(log_p, log_mixture(log_p, log_q, lam))


def skew_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, lam: float = 0.1
) -> Tensor:
    """KL(q || lam * q + (1 - lam) * p)."""
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    return kl_from_logs(log_q, log_mixture(log_q, log_p, lam))
