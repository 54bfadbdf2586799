"""Reverse KL, KL(q || p): mode-seeking; the paper's strongest base loss (MiniLLM)."""

from __future__ import annotations

from torch import Tensor

from adakd_ds.losses._common import kl_from_logs, tempered_log_probs


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    return kl_from_logs(log_q, log_p)
