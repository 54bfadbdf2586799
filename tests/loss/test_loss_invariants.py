"""Properties the method doc promises, each checked so that a wrong implementation fails."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adakd_ds.config.schema import Divergence, Indicator, LossConfig
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.difficulty import token_difficulty
from tests.loss import reference_loss as ref


def loss_and_grad(cfg: LossConfig, zs, zt, labels, mask=None, ratio: float = 1.0):
    fn = AdaKDLoss(cfg, total_steps=10)
    fn.controller.ratio = ratio
    x = zs.clone().requires_grad_(True)
    loss, stats = fn(x, zt, labels, mask)
    loss.backward()
    return loss.detach(), x.grad, stats


# ---------------------------------------------------------------- hellinger


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hellinger_bounds_and_zero_on_identical(dtype):
    zs, zt, labels, _ = ref.make_batch(4, 8, 50, seed=11, dtype=dtype, prompt_len=0, pad_tail=False)
    zs, zt, labels = zs.reshape(-1, 50), zt.reshape(-1, 50), labels.reshape(-1)
    h = token_difficulty(Indicator.HELLINGER, zs, zt, labels)
    assert h.min() >= 0 and h.max() <= 1
    assert torch.all(h > 0)  # different distributions: strictly positive
    same = token_difficulty(Indicator.HELLINGER, zt, zt.clone(), labels)
    assert torch.all(same == 0), same
    # nearly disjoint distributions approach 1 but never exceed it
    far_s = torch.full((3, 50), -60.0, dtype=dtype)
    far_t = far_s.clone()
    far_s[:, 0] = 60.0
    far_t[:, 1] = 60.0
    h_far = token_difficulty(Indicator.HELLINGER, far_s, far_t, labels[:3])
    assert torch.all(h_far <= 1) and torch.all(h_far > 0.999)


# ---------------------------------------------------------------- AdaKD reduces to the base divergence


@pytest.mark.parametrize("name", [d.value for d in Divergence])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ratio_one_and_c_zero_is_the_base_divergence(name, dtype):
    zs, zt, labels, mask = ref.make_batch(3, 5, 23, seed=12, dtype=dtype)
    base = LossConfig(divergence=Divergence(name), adakd=False, temperature=1.7, chunk_size=4)
    ada = LossConfig(divergence=Divergence(name), adakd=True, temperature=1.7, c=0.0, chunk_size=4)
    lb, gb, sb = loss_and_grad(base, zs, zt, labels, mask, ratio=1.0)
    la, ga, sa = loss_and_grad(ada, zs, zt, labels, mask, ratio=1.0)
    assert sa.k == sa.n == sb.n
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


# ---------------------------------------------------------------- IDTS temperatures


@settings(max_examples=15, deadline=None)
@given(
    c=st.floats(0.0, 2.0),
    tau_base=st.floats(0.3, 3.0),
    seed=st.integers(0, 1000),
    ratio=st.floats(0.1, 1.0),
    indicator=st.sampled_from([i for i in Indicator if i is not Indicator.RANDOM]),
)
def test_tau_within_bounds(c, tau_base, seed, ratio, indicator):
    zs, zt, labels, mask = ref.make_batch(2, 6, 13, seed=seed)
    cfg = LossConfig(temperature=tau_base, c=c, indicator=indicator)
    _, _, stats = loss_and_grad(cfg, zs, zt, labels, mask, ratio=ratio)
    taus = stats.taus.to(torch.float64)
    assert taus.numel() == stats.k
    lo, hi = tau_base * math.exp(-c), tau_base * math.exp(c)
    assert float(taus.min()) >= lo * (1 - 1e-12) and float(taus.max()) <= hi * (1 + 1e-12)


def test_inverse_sign_flips_which_tokens_get_low_tau():
    zs, zt, labels, mask = ref.make_batch(3, 8, 29, seed=13)
    runs = {}
    for inverse in (True, False):
        cfg = LossConfig(c=0.5, temperature=1.2, inverse_sign=inverse)
        runs[inverse] = loss_and_grad(cfg, zs, zt, labels, mask, ratio=0.75)[2]
    st_t, st_f = runs[True], runs[False]
    assert torch.equal(st_t.selected, st_f.selected)
    sel_scores = st_t.scores[st_t.selected].to(torch.float64)
    median = ref.lower_median(sel_scores.tolist())
    hard, easy = sel_scores > median, sel_scores < median
    assert hard.any() and easy.any()
    assert torch.all(st_t.taus[hard] < 1.2) and torch.all(st_t.taus[easy] > 1.2)
    assert torch.all(st_f.taus[hard] > 1.2) and torch.all(st_f.taus[easy] < 1.2)
    # exp(-c s) * exp(+c s) = 1: the two temperatures multiply to tau_base^2
    torch.testing.assert_close(st_t.taus * st_f.taus, torch.full_like(st_t.taus, 1.44), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the detach of tau


@pytest.mark.parametrize("name", ["rkl", "fkl"])
def test_gradient_holds_tau_constant(name):
    """The library gradient equals autograd with tau a constant, and differs from the released code's un-detached tau."""
    zs, zt, labels, mask = ref.make_batch(2, 6, 15, seed=14)
    cfg = LossConfig(divergence=Divergence(name), c=0.8, temperature=1.0)
    _, grad, _ = loss_and_grad(cfg, zs, zt, labels, mask, ratio=0.7)
    rc = ref.RefCfg.from_loss_config(cfg)
    grads = {}
    for detach in (True, False):
        x = zs.clone().requires_grad_(True)
        ref.adakd_reference(rc, x, zt, labels, mask, ratio=0.7, detach_tau=detach).loss.backward()
        grads[detach] = x.grad
    torch.testing.assert_close(grad, grads[True], rtol=1e-10, atol=1e-10)
    diff = (grads[False] - grads[True]).abs().max()
    assert diff > 1e-4, f"tau's own gradient is too small here ({diff}) for this test to tell detach apart"
    assert (grad - grads[False]).abs().max() > 1e-4


# ---------------------------------------------------------------- chunking and vocab slicing


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("kd_ratio", [1.0, 0.6])
def test_chunked_equals_unchunked(dtype, tol, kd_ratio):
    zs, zt, labels, mask = ref.make_batch(3, 9, 31, seed=15, dtype=dtype)
    results = []
    for chunk in (1, 7, 100_000):
        cfg = LossConfig(divergence=Divergence.RKL, chunk_size=chunk, kd_ratio=kd_ratio)
        results.append(loss_and_grad(cfg, zs, zt, labels, mask, ratio=0.6))
    for loss, grad, stats in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=tol, atol=tol)
        torch.testing.assert_close(grad, results[0][1], rtol=tol, atol=tol)
        assert torch.equal(stats.selected, results[0][2].selected)


@pytest.mark.parametrize("name", ["rkl", "ab"])
def test_teacher_vocab_padding_is_sliced(name):
    zs, zt_wide, labels, mask = ref.make_batch(2, 6, 20, seed=16, teacher_extra_vocab=7)
    assert zt_wide.shape[-1] == 27
    # make the padded columns dominate, so NOT slicing them would change everything
    zt_wide[..., 20:] = 50.0
    cfg = LossConfig(divergence=Divergence(name), chunk_size=5)
    wide = loss_and_grad(cfg, zs, zt_wide, labels, mask, ratio=0.8)
    narrow = loss_and_grad(cfg, zs, zt_wide[..., :20].contiguous(), labels, mask, ratio=0.8)
    torch.testing.assert_close(wide[0], narrow[0], rtol=0, atol=0)
    torch.testing.assert_close(wide[1], narrow[1], rtol=0, atol=0)


def test_mask_and_ignore_index_exclude_tokens():
    """Changing logits at masked / -100 positions changes neither loss nor the other rows' gradient."""
    zs, zt, labels, mask = ref.make_batch(3, 6, 11, seed=17)
    excluded = (labels == -100) | (mask == 0)
    assert excluded.any() and (mask == 0).any()
    cfg = LossConfig()
    a = loss_and_grad(cfg, zs, zt, labels, mask, ratio=0.5)
    zs2, zt2 = zs.clone(), zt.clone()
    zs2[excluded] += 5 * torch.randn_like(zs2[excluded])
    zt2[excluded] -= 3.0
    b = loss_and_grad(cfg, zs2, zt2, labels, mask, ratio=0.5)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert torch.all(a[1][excluded] == 0)
