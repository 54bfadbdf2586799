"""loss.idts_grad = through: the gradient that flows through the IDTS temperatures, as in the authors' released code.

With L = A * sum_{i in S} w(tau_i) d_i(z_i, tau_i) and tau_i = f(s_i, m), s_i the Hellinger score of token i and m
the median score (the score of ONE token, j*), the gradient on the student's logits has, besides the detached part
A * w_i dd_i/dz_i, two more terms:

    row i in S:  A * g_i * (d tau_i / d s_i) * (d s_i / d z_i)
    row j*:      A * (sum_{i in S, all ranks} g_i * d tau_i / d m) * (d s_j* / d z_j*)

with g_i = d(w_i d_i) / d tau_i. For the `normalized` weight w_i = tau_i^2 / M, M = mean_S tau^2, the mean is in the
graph too: g_i gains -(2 tau_i / (k M)) * D, D = sum_S w d over all ranks. The KD pass records g_i (autograd per
chunk, tau a leaf); after one all-reduce a second pass over S and j* adds the score terms, with the same kernels for
materialised logits and the fused head (the sink interface is the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adakd_ds.loss.chunked_grad import ChunkKernel, GradSink, RowChunk
from adakd_ds.loss.difficulty import _sqrt_probs
from adakd_ds.loss.divergences._common import tau_column


@dataclass
class ThroughPlan:
    """What the through pass needs, for this rank's selected tokens (in the order of the KD pass's rows)."""

    taus: Tensor  # [k_local]
    dtau_ds: Tensor  # [k_local]
    dtau_dm: Tensor  # [k_local]
    median_row: int | None  # the flat row of the median token when this rank holds it, else None
    k: int  # selected tokens, global
    norm: Tensor | None  # M = mean_S tau^2 for the `normalized` weight, else None
    gtau: Tensor | None = None  # [k_local] d(w_i d_i)/d tau_i at fixed M, filled by the KD pass


@torch.no_grad()
def hellinger_with_grad(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """(s [c], ds/dz_s [c, V]): s = ||sqrt p - sqrt q|| / sqrt 2, ds/dz_u = (q_u * BC - sqrt(p_u q_u)) / (4 s).

    BC = sum sqrt(p q) (the Bhattacharyya coefficient). A token with s = 0 (p == q) gets a zero gradient.
    """
    a, b = _sqrt_probs(teacher), _sqrt_probs(student)
    s = torch.linalg.vector_norm(a - b, dim=-1) / math.sqrt(2.0)
    ab = a.mul_(b)  # sqrt(p q)
    bc = ab.sum(-1, keepdim=True)
    g = b.square_().mul_(bc).sub_(ab)
    return s, g.div_(4.0 * s.clamp_min(torch.finfo(s.dtype).tiny).unsqueeze(-1))


def through_kd_kernel(
    values: Callable[[Tensor, Tensor, RowChunk], Tensor], taus: Tensor, plan: ThroughPlan
) -> ChunkKernel:
    """The KD kernel with tau as a leaf too: the logit gradient goes to the sink, d/d tau into plan.gtau."""
    plan.gtau = torch.zeros_like(taus)

    def kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
        tau = taus[chunk.pos]
        if sink is None:
            with torch.no_grad():
                return values(x, tau_column(tau, x), chunk).sum()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            leaf = tau.detach().to(x.dtype).requires_grad_(True)
            value = values(x, leaf.reshape(-1, 1), chunk).sum()
            g, g_tau = torch.autograd.grad(value, (x, leaf))
        sink.add(g, torch.ones((), dtype=g.dtype, device=g.device))
        plan.gtau[chunk.pos] = g_tau.to(plan.gtau.dtype)
        return value.detach()

    return kernel


def score_coefficients(plan: ThroughPlan, sums: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(rows of the score pass, their coefficients c_r) from the all-reduced [sum g dtau/dm, sum tau dtau/dm, D]."""
    g = plan.gtau
    g_median = sums[0]
    if plan.norm is not None:  # d M / d tau_i = 2 tau_i / k
        shift = 2.0 * sums[2] / (plan.k * plan.norm)
        g = g - shift * plan.taus
        g_median = g_median - shift * sums[1]
    coef = g * plan.dtau_ds
    if plan.median_row is None:
        return rows, coef
    at = int(torch.searchsorted(rows, torch.tensor(plan.median_row, device=rows.device)))
    if at < rows.numel() and int(rows[at]) == plan.median_row:
        coef = coef.clone()
        coef[at] += g_median
        return rows, coef
    med = torch.tensor([plan.median_row], dtype=rows.dtype, device=rows.device)
    return torch.cat([rows[:at], med, rows[at:]]), torch.cat([coef[:at], g_median.reshape(1).to(coef.dtype), coef[at:]])


def local_sums(plan: ThroughPlan, kd_sum: Tensor) -> Tensor:
    """This rank's [sum g_i dtau_i/dm, sum tau_i dtau_i/dm, sum w d]: one all-reduce makes them global."""
    return torch.stack(
        [
            torch.linalg.vecdot(plan.gtau, plan.dtau_dm),
            torch.linalg.vecdot(plan.taus, plan.dtau_dm),
            kd_sum.to(plan.gtau.dtype),
        ]
    ).to(torch.float64)


def score_grad_kernel(teacher, coef: Tensor) -> ChunkKernel:
    """Adds coef_r * ds_r/dz_r for each row; contributes 0 to the loss value."""

    def kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
        if sink is not None:
            _, g = hellinger_with_grad(x, teacher.take(chunk).to(x.dtype))
            sink.add(g, coef[chunk.pos].to(g.dtype).unsqueeze(-1))
        return torch.zeros((), dtype=x.dtype, device=x.device)

    return kernel
