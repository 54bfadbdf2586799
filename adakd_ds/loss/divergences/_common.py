"""Shared helpers for the divergences: tempered log-probabilities in a safe working precision."""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG_INF = float("-inf")


def work_dtype(t: Tensor | torch.dtype) -> torch.dtype:
    """float64 stays float64 (the reference tests); everything else is computed in float32."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def tempered_log_probs(logits: Tensor, tau: Tensor | float) -> Tensor:
    """log_softmax(logits / tau) row-wise, tau per row ([T] or [T, 1]) or scalar."""
    x = logits.to(work_dtype(logits))
    if isinstance(tau, Tensor):
        tau = tau.to(x.dtype)
        x = x / (tau if tau.dim() == x.dim() else tau.unsqueeze(-1))
    elif tau != 1.0:
        x = x / tau
    return torch.log_softmax(x, dim=-1)


def tempered_probs_and_logs(logits: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
    """(softmax, log_softmax) of logits / tau (tau a [T, 1] column) with ONE exp per logit, not two.

    Why: the loss is bound by exp arithmetic on CPU; log_softmax followed by exp(log p) takes two exps per logit,
    while e = exp(x - max) gives both p = e / sum(e) and log p = (x - max) - log sum(e). A -inf logit (a mask) stays
    p = 0, log p = -inf, as with log_softmax.
    """
    x = logits.to(work_dtype(logits)) / tau.to(work_dtype(logits))
    x.sub_(x.amax(-1, keepdim=True))
    e = x.exp()
    total = e.sum(-1, keepdim=True)
    return e.div_(total), x.sub_(total.log_())


def tau_column(tau: Tensor | float, like: Tensor) -> Tensor:
    """tau as a [T, 1] column in like's dtype, whether given per row or as one float (the same arithmetic for both)."""
    if isinstance(tau, Tensor):
        return tau.to(like.dtype).reshape(-1, 1).expand(like.shape[0], 1)
    return torch.full((like.shape[0], 1), float(tau), dtype=like.dtype, device=like.device)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row dot product sum_v a * b as a batched BLAS dot: no [T, V] temporary, unlike (a * b).sum(-1).

    Compiled (loss.kernel), the product and the sum fuse into the pass that makes a and b, so no temporary either.
    """
    if torch.compiler.is_compiling():
        return (a * b).sum(-1)
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(a.shape[0])


def log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w * a + (1 - w) * b) without leaving log space; w must lie strictly in (0, 1)."""
    if not 0.0 < weight_a < 1.0:
        raise ValueError(f"mixture weight must lie in (0, 1), got {weight_a}")
    # a -inf (masked) entry on both sides would make logaddexp's gradient NaN: the float's lowest value is exp-equal
    low = torch.finfo(log_a.dtype).min
    return torch.logaddexp(log_a.clamp_min(low) + math.log(weight_a), log_b.clamp_min(low) + math.log1p(-weight_a))


def kl_from_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) = sum p (log p - log q), from log-probabilities; 0 log 0 = 0 (a -inf logit is a mask)."""
    if torch.compiler.is_compiling():  # no host sync in a graph: mask where p = 0 (the eager fallback's result)
        return (log_p.exp() * torch.where(torch.isneginf(log_p), 0.0, log_p - log_q)).sum(-1)
    value = (log_p.exp() * (log_p - log_q)).sum(-1)
    if bool(torch.isnan(value).any()):  # masked entries: -inf - -inf is NaN, but p = 0 there, so they add 0
        diff = (log_p - log_q).masked_fill(torch.isneginf(log_p), 0.0)
        value = (log_p.exp() * diff).sum(-1)
    return value
