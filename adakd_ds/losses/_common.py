"""Shared helpers for the divergences: tempered log-probabilities in a safe working precision."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64 (the reference tests); everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def tempered_log_probs(logits: Tensor, tau: Tensor | float) -> Tensor:
    """log_softmax(logits / tau) row-wise, tau per row ([T]) or scalar."""
    x = logits.to(work_dtype(logits))
    if isinstance(tau, Tensor):
        x = x / tau.to(x.dtype).unsqueeze(-1)
    elif tau != 1.0:
        x = x / tau
    return torch.log_softmax(x, dim=-1)


def log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w * a + (1 - w) * b) without leaving log space; w must lie strictly in (0, 1)."""
    if not 0.0 < weight_a < 1.0:
        raise ValueError(f"mixture weight must lie in (0, 1), got {weight_a}")
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def kl_from_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) = sum p (log p - log q), from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)
