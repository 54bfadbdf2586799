"""The loss on a cached teacher (top-k + one tail bin) against the live teacher and an independent float64 loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adakd_ds.config.schema import Divergence, Indicator, LossConfig
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.cached_target import CachedTarget
from adakd_ds.loss.fused_head import HeadInput
from tests.loss import reference_loss as ref

TOL = {"rtol": 1e-10, "atol": 1e-12}


def cache_of(zt: torch.Tensor, k: int) -> CachedTarget:
    """What the cache writer stores, in float64: top-k log-probs at T = 1 and the log of the rest."""
    logp = torch.log_softmax(zt, -1)
    top, ids = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, ids, float("-inf"))
    return CachedTarget(ids, top, torch.logsumexp(rest, -1), has_tail=k < zt.shape[-1])


def bins_reference(zs: torch.Tensor, zt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' k + 1 bins, written out token by token (no code shared with the library)."""
    v = zs.shape[-1]
    s_out, t_out = [], []
    for zs_i, zt_i in zip(zs.reshape(-1, v), zt.reshape(-1, v), strict=True):
        p, q = torch.softmax(zt_i, -1), torch.softmax(zs_i, -1)
        order = sorted(range(v), key=lambda j: -float(p[j]))[:k]
        t_out.append(torch.log(torch.stack([*(p[j] for j in order), 1 - sum(p[j] for j in order)])))
        rest = [j for j in range(v) if j not in order]
        s_out.append(torch.log(torch.stack([*(q[j] for j in order), sum(q[j] for j in rest)])))
    shape = (*zs.shape[:-1], k + 1)
    return torch.stack(s_out).reshape(shape), torch.stack(t_out).reshape(shape)


def _run(cfg: LossConfig, zs: torch.Tensor, teacher, labels, mask, ratio: float):
    fn = AdaKDLoss(cfg)
    fn.controller.ratio = ratio
    x = zs.clone().requires_grad_(True)
    loss, stats = fn(x, teacher, labels, mask)
    loss.backward()
    return loss, stats, x.grad


@pytest.mark.parametrize("div", [Divergence.RKL, Divergence.FKL, Divergence.JSD, Divergence.AB])
@pytest.mark.parametrize("ind", [Indicator.HELLINGER, Indicator.FKL, Indicator.CE])
def test_k_equal_vocab_is_the_live_teacher(div, ind):
    """k = V: loss, scores, selection, temperatures and gradient equal the live path to float64 round-off."""
    zs, zt, labels, mask = ref.make_batch(3, 7, 23, seed=5)
    cfg = LossConfig(divergence=div, indicator=ind, ratio_init=0.6, chunk_size=4)
    live = _run(cfg, zs, zt, labels, mask, 0.6)
    cached = _run(cfg, zs, cache_of(zt, 23), labels, mask, 0.6)
    torch.testing.assert_close(cached[0], live[0], **TOL)
    torch.testing.assert_close(cached[1].scores, live[1].scores, **TOL)
    assert torch.equal(cached[1].selected, live[1].selected) and 0 < cached[1].k < cached[1].n
    torch.testing.assert_close(cached[1].taus, live[1].taus, **TOL)
    assert float(cached[1].taus.std()) > 0.01  # IDTS did temper
    torch.testing.assert_close(cached[2], live[2], **TOL)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("fused", [False, True])
def test_top_k_bins_match_a_float64_loop(k, fused):
    """k < V: the library on the cache equals the reference AdaKD loss run on hand-made k + 1 bins (grad included),
    through the fused head as well (the gradient then reaches the hidden states)."""
    zs, zt, labels, mask = ref.make_batch(2, 6, 17, seed=9)
    cfg = LossConfig(ratio_init=0.7, chunk_size=3, fused_head="true" if fused else "false")
    g = torch.Generator().manual_seed(1)
    w = torch.randn(17, 8, generator=g, dtype=torch.float64)
    h = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    hr = h.clone().requires_grad_(True)
    zr = hr @ w.T if fused else zs.clone().requires_grad_(True)
    sb, tb = bins_reference(zr, zt, k)
    want = ref.adakd_reference(ref.RefCfg.from_loss_config(cfg), sb, tb, labels, mask, ratio=0.7)
    want.loss.backward()

    fn = AdaKDLoss(cfg)
    fn.controller.ratio = 0.7
    x = h.clone().requires_grad_(True) if fused else zs.clone().requires_grad_(True)
    student = HeadInput(x, w) if fused else x
    loss, stats = fn(student, cache_of(zt, k), labels, mask)
    loss.backward()
    torch.testing.assert_close(loss, want.loss, **TOL)
    assert stats.selected.tolist() == want.selected and stats.median == pytest.approx(want.median, rel=1e-12)
    torch.testing.assert_close(stats.taus, want.taus, **TOL)
    torch.testing.assert_close(x.grad, hr.grad if fused else zr.grad, **TOL)


def test_a_tail_that_matters_changes_the_loss():
    """The tail bin is not dropped: with k = 1 the cached loss differs from the live one (it can fail)."""
    zs, zt, labels, mask = ref.make_batch(2, 5, 11, seed=3)
    cfg = dataclasses.replace(LossConfig(), adakd=False)
    live = _run(cfg, zs, zt, labels, mask, 1.0)[0]
    cached = _run(cfg, zs, cache_of(zt, 1), labels, mask, 1.0)[0]
    assert abs(float(cached.detach()) - float(live.detach())) > 1e-3


def test_ids_outside_the_vocab_are_refused():
    zs, zt, labels, mask = ref.make_batch(1, 4, 9, seed=1)
    bad = cache_of(zt, 3)
    bad.ids[0, 2, 0] = 40
    with pytest.raises(ValueError, match=r"outside \[0, 9\)"):
        AdaKDLoss(LossConfig())(zs, bad, labels, mask)
