"""Forward KL, KL(p || q): the classic KD loss; mass-covering for the student."""

from __future__ import annotations

from torch import Tensor

from adakd_ds.losses._common import kl_from_logs, tempered_log_probs


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    log_q = tempered_log_probs(student_logits, tau)
    log_p = tempered_log_probs(teacher_logits, tau)
    return kl_from_logs(log_p, log_q)
