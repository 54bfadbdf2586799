"""The per-chunk functions that loss.kernel compiled traces (adakd_ds/loss/compiled.py): pure, rows first.

Each returns already-scaled gradients, so the sink writes them without another pass (GradSink.add_scaled).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from adakd_ds.config.schema import Indicator
from adakd_ds.loss.chunked_grad import ChunkKernel, GradSink, RowChunk, autograd_kernel
from adakd_ds.loss.compiled import CompiledFn, shared
from adakd_ds.loss.difficulty import token_difficulty
from adakd_ds.loss.divergences import DivergenceFn, GradDivergenceFn
from adakd_ds.loss.divergences._common import tau_column
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


def compiled_kd_kernel(
    teacher, analytic: GradDivergenceFn | None, divergence_key, divergence: DivergenceFn, tau_of, weight_of
) -> ChunkKernel:
    """loss.kernel compiled: the same sum w(tau) * d(tau) and gradient as the eager kernel, each chunk a few fused
    passes. `weight_of(tau)` is loss.idts_weight's w(tau) for a [c, 1] column."""
    name = divergence_key[0]
    if analytic is None:
        values_fn = token_values_fn(divergence_key, divergence)

        def values(x: Tensor, chunk: RowChunk) -> Tensor:
            tau = tau_column(tau_of(chunk), x)
            return values_fn(x, teacher.take(chunk).to(x.dtype), tau, weight_of(tau))

        return autograd_kernel(values)

    def kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
        tau = tau_column(tau_of(chunk), x)
        t = teacher.take(chunk).to(x.dtype)
        w = weight_of(tau)
        if sink is None:
            return kd_value_fn(name, analytic)(x, t, tau, w)
        scale = torch.tensor(sink.scale, dtype=x.dtype, device=x.device)
        out = sink.direct_out(x) if isinstance(sink, GradSink) else None
        if out is not None:
            return kd_grad_into_fn(name, analytic)(x, t, tau, w, out, scale)
        value, g = kd_grad_fn(name, analytic)(x, t, tau, w, scale)
        sink.add_scaled(g)
        return value

    return kernel
