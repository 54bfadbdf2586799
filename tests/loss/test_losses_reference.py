"""The loss library against the independent float64 loop in reference_loss.py, to 1e-10."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adakd_ds.config.schema import Divergence, Indicator, LossConfig
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.difficulty import token_difficulty
from adakd_ds.loss.divergences import get_divergence
from adakd_ds.loss.idts import idts_temperatures, lower_median
from adakd_ds.loss.latf import select_top_ratio
from tests.loss import reference_loss as ref

TOL = {"rtol": 1e-10, "atol": 1e-10}
DIVS = [d.value for d in Divergence]
INDS = [i.value for i in Indicator if i is not Indicator.RANDOM]
MODES = {  # (adakd, latf, idts)
    "base": (False, True, True),
    "full": (True, True, True),
    "latf_only": (True, True, False),
    "idts_only": (True, False, True),
}


def _flat(zs, zt, labels):
    v = zs.shape[-1]
    valid = labels.reshape(-1) != -100
    return zs.reshape(-1, v)[valid], zt.reshape(-1, zt.shape[-1])[valid], labels.reshape(-1)[valid]


def selected_taus(stats, k: int) -> torch.Tensor:
    """stats.taus over the selected tokens in global order (the API leaves [k] vs [N] open; both are handled)."""
    taus = torch.as_tensor(stats.taus, dtype=torch.float64).reshape(-1)
    if taus.numel() == k:
        return taus
    raise AssertionError(f"stats.taus has {taus.numel()} entries, expected k={k}")


# ---------------------------------------------------------------- divergences and indicators


@pytest.mark.parametrize("name", DIVS)
@pytest.mark.parametrize("params", [{}, {"jsd_beta": 0.3, "skew_lambda": 0.25, "ab_alpha": 0.6, "ab_beta": 0.3}])
def test_divergence_matches_reference(name, params):
    zs, zt, labels, _ = ref.make_batch(2, 5, 11, seed=1, pad_tail=False)
    zs, zt, _ = _flat(zs, zt, labels)
    cfg = LossConfig(**params)
    fn = get_divergence(Divergence(name), cfg)
    for tau in (1.0, 0.7, 2.5):
        got = fn(zs, zt, tau)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, ref.divergence_per_token(name, zs, zt, tau, params), **TOL)
    tau_vec = torch.linspace(0.5, 2.0, zs.shape[0], dtype=torch.float64)
    torch.testing.assert_close(fn(zs, zt, tau_vec), ref.divergence_per_token(name, zs, zt, tau_vec, params), **TOL)
    # the string name resolves to the same function
    torch.testing.assert_close(get_divergence(name, cfg)(zs, zt, tau_vec), fn(zs, zt, tau_vec), **TOL)


@pytest.mark.parametrize("name", INDS)
def test_indicator_matches_reference(name):
    zs, zt, labels, _ = ref.make_batch(3, 4, 13, seed=2, pad_tail=False)
    zs, zt, lab = _flat(zs, zt, labels)
    got = token_difficulty(Indicator(name), zs, zt, lab)
    assert not got.requires_grad
    torch.testing.assert_close(got.to(torch.float64), ref.indicator_per_token(name, zs, zt, lab), **TOL)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5), min_size=1, max_size=40),  # small integers: many ties
    ratio=st.floats(0.0, 1.0),
)
def test_select_top_ratio_matches_reference(scores, ratio):
    s = torch.tensor(scores, dtype=torch.float64)
    got = select_top_ratio(s, ratio)
    assert got.dtype == torch.bool
    assert got.tolist() == ref.select_top(scores, ratio)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_lower_median_and_idts_match_reference(values):
    v = torch.tensor(values, dtype=torch.float64)
    med = lower_median(v)
    assert float(med) == ref.lower_median(values)
    for inverse in (True, False):
        got = idts_temperatures(v, med, 1.3, 0.4, inverse_sign=inverse)
        want = [ref.idts_tau_one(x, float(med), 1.3, 0.4, inverse) for x in values]
        torch.testing.assert_close(got.to(torch.float64), torch.tensor(want, dtype=torch.float64), **TOL)


# ---------------------------------------------------------------- the whole objective


def run_both(cfg: LossConfig, zs, zt, labels, mask, ratio: float, seed: int = 0, random_scores=None):
    """Library loss + stats + grad, and the reference loss + grad, on the same float64 inputs."""
    loss_fn = AdaKDLoss(cfg, total_steps=10, seed=seed)
    loss_fn.controller.ratio = ratio
    x = zs.clone().requires_grad_(True)
    loss, stats = loss_fn(x, zt, labels, mask)
    loss.backward()
    xr = zs.clone().requires_grad_(True)
    want = ref.adakd_reference(
        ref.RefCfg.from_loss_config(cfg), xr, zt, labels, mask, ratio=ratio, random_scores=random_scores
    )
    want.loss.backward()
    return loss, stats, x.grad, want, xr.grad


def check(cfg, zs, zt, labels, mask, ratio, **kw):
    loss, stats, grad, want, want_grad = run_both(cfg, zs, zt, labels, mask, ratio, **kw)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want.loss, **TOL)
    assert stats.loss == pytest.approx(float(want.loss.detach()), rel=1e-10, abs=1e-10)
    if want.ce is not None:
        assert stats.ce_loss == pytest.approx(float(want.ce.detach()), rel=1e-10, abs=1e-10)
    torch.testing.assert_close(grad, want_grad, **TOL)
    if cfg.kd_ratio == 0:  # pure CE: the library skips the KD part (k = 0, no taus); nothing more to compare
        assert stats.n == want.n
        return stats, want
    assert stats.kd_loss == pytest.approx(float(want.kd.detach()), rel=1e-10, abs=1e-10)
    assert (stats.n, stats.k) == (want.n, want.k)
    if cfg.adakd and (cfg.latf or cfg.idts):  # plain KD skips the difficulty pass: no scores to compare
        torch.testing.assert_close(torch.as_tensor(stats.scores, dtype=torch.float64).reshape(-1), want.scores, **TOL)
    else:
        assert stats.scores is None
    assert torch.as_tensor(stats.selected).reshape(-1).tolist() == want.selected
    taus = selected_taus(stats, want.k)
    torch.testing.assert_close(taus, want.taus, **TOL)
    assert stats.tau_min == pytest.approx(float(want.taus.min()), abs=1e-10)
    assert stats.tau_max == pytest.approx(float(want.taus.max()), abs=1e-10)
    assert stats.tau_mean == pytest.approx(float(want.taus.mean()), abs=1e-10)
    return stats, want


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", DIVS)
def test_adakd_loss_matches_reference(name, mode):
    adakd, latf, idts = MODES[mode]
    cfg = LossConfig(divergence=Divergence(name), adakd=adakd, latf=latf, idts=idts, temperature=1.5, c=0.5)
    zs, zt, labels, mask = ref.make_batch(3, 7, 17, seed=3)
    want = check(cfg, zs, zt, labels, mask, ratio=0.5)[1]
    assert want.n == 16 and want.k in (8, 16)  # even k: the lower median differs from the upper one


@pytest.mark.parametrize("name", INDS)
def test_adakd_loss_each_indicator(name):
    cfg = LossConfig(divergence=Divergence.RKL, indicator=Indicator(name), c=0.7, chunk_size=5)
    zs, zt, labels, mask = ref.make_batch(2, 7, 19, seed=4)
    check(cfg, zs, zt, labels, mask, ratio=0.5)


def test_adakd_loss_random_indicator_uses_the_seeded_draw():
    cfg = LossConfig(indicator=Indicator.RANDOM)
    zs, zt, labels, mask = ref.make_batch(2, 7, 19, seed=5)
    n = ref.adakd_reference(ref.RefCfg(), zs, zt, labels, mask).n
    draw = torch.rand(n, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    stats, want = check(cfg, zs, zt, labels, mask, ratio=0.4, seed=123, random_scores=draw)
    torch.testing.assert_close(torch.as_tensor(stats.scores, dtype=torch.float64), draw, rtol=0, atol=0)


@pytest.mark.parametrize("kd_ratio", [0.0, 0.3, 0.75])
def test_kd_ratio_mixes_in_cross_entropy(kd_ratio):
    cfg = LossConfig(divergence=Divergence.SRKL, kd_ratio=kd_ratio, chunk_size=4)
    zs, zt, labels, mask = ref.make_batch(2, 6, 9, seed=6)
    check(cfg, zs, zt, labels, mask, ratio=0.7)


def test_flat_token_inputs_match_batched():
    """[T, V] logits with [T] labels give the same loss as [B, L, V]."""
    cfg = LossConfig(divergence=Divergence.JSD)
    zs, zt, labels, mask = ref.make_batch(2, 5, 8, seed=7, pad_tail=False)
    a, _ = AdaKDLoss(cfg)(zs, zt, labels)
    b, _ = AdaKDLoss(cfg)(zs.reshape(-1, 8), zt.reshape(-1, 8), labels.reshape(-1))
    torch.testing.assert_close(a, b, **TOL)


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 3),
    length=st.integers(2, 6),
    v=st.integers(2, 12),
    seed=st.integers(0, 10_000),
    ratio=st.floats(0.05, 1.0),
    name=st.sampled_from(DIVS),
    mode=st.sampled_from(list(MODES)),
    chunk=st.integers(1, 9),
    kd_ratio=st.sampled_from([1.0, 0.5]),
)
def test_adakd_loss_random_shapes(b, length, v, seed, ratio, name, mode, chunk, kd_ratio):
    adakd, latf, idts = MODES[mode]
    cfg = LossConfig(
        divergence=Divergence(name), adakd=adakd, latf=latf, idts=idts, chunk_size=chunk, kd_ratio=kd_ratio, c=0.5
    )
    zs, zt, labels, mask = ref.make_batch(b, length, v, seed=seed)
    check(cfg, zs, zt, labels, mask, ratio=ratio)


def test_reference_is_sensitive():
    """Guard against a vacuous comparison: the reference must tell modes and ratios apart on this data."""
    zs, zt, labels, mask = ref.make_batch(3, 6, 17, seed=3)
    base = ref.adakd_reference(ref.RefCfg(adakd=False), zs, zt, labels, mask).loss
    full = ref.adakd_reference(ref.RefCfg(), zs, zt, labels, mask, ratio=0.6).loss
    latf = ref.adakd_reference(dataclasses.replace(ref.RefCfg(), idts=False), zs, zt, labels, mask, ratio=0.6).loss
    assert len({round(float(x), 6) for x in (base, full, latf)}) == 3


def test_random_indicator_draws_anew_each_forward():
    """One draw per forward call from ONE generator seeded with `seed`: the second call sees the second draw."""
    cfg = LossConfig(indicator=Indicator.RANDOM)
    zs, zt, labels, mask = ref.make_batch(2, 5, 7, seed=8)
    loss_fn = AdaKDLoss(cfg, seed=5)
    loss_fn.controller.ratio = 0.5
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        _, stats = loss_fn(zs, zt, labels, mask)
        want = torch.rand(stats.n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(stats.scores.to(torch.float64), want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-4)])
@pytest.mark.parametrize("name", ["rkl", "jsd", "ab"])
def test_low_precision_inputs_are_computed_in_float32(dtype, tol, name):
    """float32 / bf16 logits: the value matches the float64 reference on the same (rounded) logits, and the
    gradient comes back in the input dtype."""
    zs, zt, labels, mask = ref.make_batch(2, 6, 40, seed=9)
    zs, zt = zs.to(dtype), zt.to(dtype)
    cfg = LossConfig(divergence=Divergence(name), chunk_size=5)
    loss_fn = AdaKDLoss(cfg)
    loss_fn.controller.ratio = 0.75
    x = zs.clone().requires_grad_(True)
    loss, _ = loss_fn(x, zt, labels, mask)
    loss.backward()
    assert x.grad.dtype == dtype
    xr = zs.double().requires_grad_(True)
    want = ref.adakd_reference(ref.RefCfg.from_loss_config(cfg), xr, zt.double(), labels, mask, ratio=0.75)
    want.loss.backward()
    assert float(loss.detach()) == pytest.approx(float(want.loss.detach()), rel=tol, abs=tol)
    grad_tol = tol if dtype is torch.float32 else 1e-2  # bf16 rounds the gradient itself
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=grad_tol, atol=grad_tol)
