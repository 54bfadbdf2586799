"""The per-chunk functions that loss.kernel compiled traces (adakd_ds/loss/compiled.py): pure, rows first.

Each returns already-scaled gradients, so the sink writes them without another pass (GradSink.add_scaled).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from adakd_ds.config.schema import Indicator
from adakd_ds.loss.compiled import CompiledFn, shared
from adakd_ds.loss.difficulty import token_difficulty
from adakd_ds.loss.divergences import DivergenceFn, GradDivergenceFn
from adakd_ds.loss.divergences.ce import cross_entropy_with_grad


def _kd_grad(analytic: GradDivergenceFn, x: Tensor, t: Tensor, tau: Tensor, w: Tensor, scale: Tensor):
    """(sum_i w_i d_i, scale * w * f * g): one chunk's weighted divergence and its scaled student gradient."""
    vals, g, factor = analytic(x, t, tau, True)
    return torch.linalg.vecdot(w.squeeze(-1), vals), g * (w * factor * scale)


def _kd_grad_into(
    analytic: GradDivergenceFn, x: Tensor, t: Tensor, tau: Tensor, w: Tensor, out: Tensor, scale: Tensor
) -> Tensor:
    """_kd_grad with the gradient stored straight into `out` (the buffer's rows): no [c, V] copy pass after."""
    vals, g, factor = analytic(x, t, tau, True)
    out.copy_(g * (w * factor * scale))
    return torch.linalg.vecdot(w.squeeze(-1), vals)


def _kd_value(analytic: GradDivergenceFn, x: Tensor, t: Tensor, tau: Tensor, w: Tensor) -> Tensor:
    vals, _, _ = analytic(x, t, tau, False)
    return torch.linalg.vecdot(w.squeeze(-1), vals)


def _token_values(divergence: DivergenceFn, x: Tensor, t: Tensor, tau: Tensor, w: Tensor) -> Tensor:
    """w_i * d_i per token (differentiable: autograd goes through the compiled forward and its compiled backward)."""
    return w.squeeze(-1) * divergence(x, t, tau.squeeze(-1))


def _ce_grad(x: Tensor, labels: Tensor, scale: Tensor):
    vals, g = cross_entropy_with_grad(x, labels, True)
    return vals.sum(), g * scale


def _ce_value(x: Tensor, labels: Tensor) -> Tensor:
    return cross_entropy_with_grad(x, labels, False)[0].sum()


def _score(indicator: Indicator, s: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    return token_difficulty(indicator, s, t, labels)


def kd_grad_fn(name: str, analytic: GradDivergenceFn) -> CompiledFn:
    return shared(("kd_grad", name), functools.partial(_kd_grad, analytic), rows=4)


def kd_grad_into_fn(name: str, analytic: GradDivergenceFn) -> CompiledFn:
    return shared(("kd_grad_into", name), functools.partial(_kd_grad_into, analytic), rows=5)


def kd_value_fn(name: str, analytic: GradDivergenceFn) -> CompiledFn:
    return shared(("kd_value", name), functools.partial(_kd_value, analytic), rows=4)


def token_values_fn(key: tuple, divergence: DivergenceFn) -> CompiledFn:
    """key names the divergence and its bound parameters (jsd beta, ...), so equal losses share one graph."""
    return shared(("values", *key), functools.partial(_token_values, divergence), rows=4)


def ce_grad_fn() -> CompiledFn:
    return shared(("ce_grad",), _ce_grad, rows=2)


def ce_value_fn() -> CompiledFn:
    return shared(("ce_value",), _ce_value, rows=2)


def score_fn(indicator: Indicator) -> CompiledFn:
    return shared(("score", indicator.value), functools.partial(_score, indicator), rows=3)
