"""Alpha-beta divergence (ABKD): one family that interpolates between FKL- and RKL-like behaviour."""

from __future__ import annotations

from torch import Tensor

from adakd_ds.loss.divergences._common import tempered_log_probs


def alpha_beta(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, alpha: float = 0.2, beta: float = 0.7
) -> Tensor:
    """-1/(a b) * sum( p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b) ), computed through logs for stability."""
    if alpha == 0.0 or beta == 0.0 or alpha + beta == 0.0:
        raise ValueError(f"ab divergence needs alpha, beta and alpha+beta non-zero, got alpha={alpha}, beta={beta}")
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    s = alpha + beta
    cross = (alpha * log_p + beta * log_q).exp()
    own_p = (s * log_p).exp()
    own_q = (s * log_q).exp()
    return -(cross - (alpha / s) * own_p - (beta / s) * own_q).sum(-1) / (alpha * beta)
