"""Token difficulty: how far the student is from the teacher on each token (temperature 1, no grad).

Hellinger is the default because it is bounded in [0, 1] and symmetric, so one threshold and one median mean the
same thing across the run; the other indicators are the paper's ablation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from adakd_ds.config.schema import Indicator
from adakd_ds.loss.divergences._common import kl_from_logs, log_mixture, tempered_log_probs, work_dtype


def parse_indicator(name: Indicator | str) -> Indicator:
    if isinstance(name, Indicator):
        return name
    try:
        return Indicator(str(name).strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown indicator {name!r}; choose one of: {', '.join(i.value for i in Indicator)}"
        ) from None


def _sqrt_probs(logits: Tensor) -> Tensor:
    """sqrt(softmax(z)) = e / ||e||_2 with e = exp((z - max z) / 2): one exp per logit instead of two."""
    x = logits.to(work_dtype(logits))
    e = torch.add(x.amax(-1, keepdim=True).mul_(-0.5), x, alpha=0.5).exp_()  # exp((x - max) / 2), exactly
    return e.div_(torch.linalg.vector_norm(e, dim=-1, keepdim=True))


@torch.no_grad()
def hellinger(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """(1/sqrt 2) * ||sqrt p - sqrt q||_2, via the direct difference so identical inputs give exactly 0."""
    diff = _sqrt_probs(teacher_logits).sub_(_sqrt_probs(student_logits))
    return torch.linalg.vector_norm(diff, dim=-1) / math.sqrt(2.0)


@torch.no_grad()
def token_difficulty(
    indicator: Indicator | str, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor
) -> Tensor:
    """Per-token score [T]; `random` is drawn globally by AdaKDLoss, so it is not computed here."""
    kind = parse_indicator(indicator)
    if kind is Indicator.HELLINGER:
        return hellinger(student_logits, teacher_logits)
    if kind is Indicator.RANDOM:
        raise ValueError("the random indicator is drawn over the global batch by AdaKDLoss, not per token")
    log_q = tempered_log_probs(student_logits, 1.0)
    if kind is Indicator.CE:
        return -log_q.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    if kind is Indicator.ENTROPY:
        return -(log_q.exp() * log_q.masked_fill(torch.isneginf(log_q), 0.0)).sum(-1)  # 0 log 0 = 0
    log_p = tempered_log_probs(teacher_logits, 1.0)
    if kind is Indicator.FKL:
        return kl_from_logs(log_p, log_q)
    if kind is Indicator.RKL:
        return kl_from_logs(log_q, log_p)
    if kind is Indicator.JSD:
        log_m = log_mixture(log_p, log_q, 0.5)
        return 0.5 * kl_from_logs(log_p, log_m) + 0.5 * kl_from_logs(log_q, log_m)
    raise AssertionError(f"unhandled indicator {kind}")  # the Enum is exhaustive above
