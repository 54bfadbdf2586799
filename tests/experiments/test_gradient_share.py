"""gradient_share against a plain float64 loop: per-token |dL/dz_i|^2 of the trainer's loss, and the decile shares."""

from __future__ import annotations

import math

import pytest
import torch

from adakd_ds.config.schema import LossConfig
from adakd_ds.experiments.grid.gradient_share import BatchGrad, average, batch_shares, deciles, token_grad_sq

IGNORE = -100


def _hellinger(zs: torch.Tensor, zt: torch.Tensor) -> float:
    p, q = torch.softmax(zt, -1), torch.softmax(zs, -1)
    return float(torch.sqrt(((p.sqrt() - q.sqrt()) ** 2).sum()) / math.sqrt(2.0))


def _reference(zs: torch.Tensor, zt: torch.Tensor, targets: torch.Tensor, ratio: float, c: float, latf: bool,
               idts: bool) -> tuple[list[float], list[float]]:  # fmt: skip
    """The method of docs/adakd-method.md, token by token in float64: RKL, top-k by Hellinger, lower median of the
    selected, tau = exp(-c tanh(log(s / median))) detached, L = sum_selected tau^2 KL_tau(q || p) / k."""
    z = zs.clone().requires_grad_(True)
    pos = [(b, t) for b in range(targets.shape[0]) for t in range(targets.shape[1]) if targets[b, t] != IGNORE]
    s = [_hellinger(zs[b, t], zt[b, t]) for b, t in pos]
    n = len(pos)
    k = max(1, math.floor(n * ratio)) if latf else n
    chosen = sorted(range(n), key=lambda i: (-s[i], i))[:k]
    med = sorted(s[i] for i in chosen)[(k - 1) // 2]
    loss = torch.zeros((), dtype=torch.float64)
    for i in chosen:
        tau = math.exp(-c * math.tanh(math.log(max(s[i] / med, 1e-8)))) if idts else 1.0
        b, t = pos[i]
        lq = torch.log_softmax(z[b, t] / tau, -1)
        lp = torch.log_softmax(zt[b, t] / tau, -1)
        loss = loss + tau * tau * (lq.exp() * (lq - lp)).sum()
    (loss / k).backward()
    return [float((z.grad[b, t] ** 2).sum()) for b, t in pos], s


@pytest.mark.parametrize("latf,idts", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["base", "latf", "idts", "adakd"])  # fmt: skip
def test_token_grad_sq_matches_float64_loop(latf: bool, idts: bool) -> None:
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(2, 6, 11, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(2, 6, 11, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, 11, (2, 6), generator=g)
    targets[0, :2] = IGNORE  # a prompt
    targets[1, 5] = IGNORE  # padding
    cfg = LossConfig(divergence="rkl", adakd=latf or idts, latf=latf, idts=idts, c=0.5)
    got, scores = token_grad_sq(cfg, 0.6, zs, zt, targets)
    want, want_s = _reference(zs, zt, targets, 0.6, 0.5, latf, idts)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-15)
    assert torch.allclose(scores, torch.tensor(want_s, dtype=torch.float64), rtol=1e-9)
    if latf:  # the 40 % easiest tokens get no gradient at all
        assert int((got == 0).sum()) == 9 - math.floor(9 * 0.6)


def test_decile_shares_match_a_loop() -> None:
    g = torch.Generator().manual_seed(5)
    n = 37
    grad_sq = torch.rand(n, generator=g, dtype=torch.float64)
    diff = torch.rand(n, generator=g, dtype=torch.float64)
    diff[4] = diff[9]  # a tie: broken by token order
    fam = ["a" if i % 3 else "b" for i in range(n)]
    out = batch_shares(BatchGrad(grad_sq, diff, fam), ["a", "b"])
    order = sorted(range(n), key=lambda i: (float(diff[i]), i))
    dec = [0] * n
    for rank, i in enumerate(order):
        dec[i] = (10 * rank) // n
    assert deciles(diff).tolist() == dec
    total = float(grad_sq.sum())
    for d in range(10):
        want = sum(float(grad_sq[i]) for i in range(n) if dec[i] == d) / total
        assert out["decile"][d] == pytest.approx(want, rel=1e-12)
        want_b = sum(float(grad_sq[i]) for i in range(n) if dec[i] == d and fam[i] == "b") / total
        assert out["family_decile"]["b"][d] == pytest.approx(want_b, rel=1e-12, abs=1e-15)
    assert sum(out["decile"]) == pytest.approx(1.0)
    assert out["family"]["a"] + out["family"]["b"] == pytest.approx(1.0)
    both = average([out, batch_shares(BatchGrad(grad_sq * 0 + 1, diff, fam), ["a", "b"])])
    assert both["decile"][0] == pytest.approx((out["decile"][0] + sum(1 for x in dec if x == 0) / n) / 2)
