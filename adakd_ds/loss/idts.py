"""IDTS: inverse difficulty temperature scaling.

Hard tokens (above the median) get a temperature below tau_base for a sharp, targeted correction; easy tokens get
one above it, to learn the teacher's full, smooth distribution. The temperature is a constant of the loss (detached)
unless loss.idts_grad is `through` (idts_through.py), which needs its derivatives in the score and the median.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lower_median(values: Tensor) -> Tensor:
    """sorted(values)[(n - 1) // 2]: an element of the set, identical on every rank."""
    if values.numel() == 0:
        raise ValueError("median of an empty set of scores")
    return torch.sort(values).values[(values.numel() - 1) // 2]


def _tau_formula(scores: Tensor, median: Tensor, tau_base: float, c: float, inverse_sign: bool) -> Tensor:
    ratio = (scores / median.clamp_min(torch.finfo(scores.dtype).tiny)).clamp_min(1e-8)
    s_hat = torch.tanh(torch.log(ratio))
    sign = -1.0 if inverse_sign else 1.0
    return tau_base * torch.exp(sign * c * s_hat)


@torch.no_grad()
def idts_temperatures(
    scores: Tensor, median: Tensor | float, tau_base: float, c: float, inverse_sign: bool = True
) -> Tensor:
    """tau_i = tau_base * exp(-+c * tanh(log(s_i / median))), within [tau_base e^-c, tau_base e^c]."""
    median_t = torch.as_tensor(median, dtype=scores.dtype, device=scores.device)
    return _tau_formula(scores, median_t, tau_base, c, inverse_sign).detach()


def idts_tau_partials(
    scores: Tensor, median: Tensor | float, tau_base: float, c: float, inverse_sign: bool = True
) -> tuple[Tensor, Tensor]:
    """(d tau_i / d s_i, d tau_i / d median) per token, exactly as autograd sees the formula (its clamps included).

    Each tau_i depends on s_i and the median only, so one backward over per-token leaves gives both vectors.
    """
    with torch.enable_grad():
        s = scores.detach().clone().requires_grad_(True)
        m = torch.as_tensor(median, dtype=scores.dtype, device=scores.device).detach()
        m = m.expand(s.shape).clone().requires_grad_(True)
        tau = _tau_formula(s, m, tau_base, c, inverse_sign)
        d_s, d_m = torch.autograd.grad(tau.sum(), (s, m))
    return d_s, d_m
