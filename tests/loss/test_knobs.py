"""Issue 21's loss knobs (idts_grad, idts_weight, median_pool; c and a fast LATF schedule) against the float64 loop.

`through` is compared with autograd on reference_loss.py's loop with the score, the median and tau kept in the graph;
the defaults are compared bit for bit with values stored from the code before the knobs (golden_default.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from adakd_ds.config.load import ConfigError, load_config
from adakd_ds.config.schema import Divergence, IdtsGrad, IdtsWeight, LossConfig, MedianPool
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.fused_head import HeadInput
from adakd_ds.loss.latf import LATFController
from tests.loss import reference_loss as ref
from tests.loss.golden_default import CASES, GOLDEN, compute
from tests.loss.test_losses_reference import TOL, check

BASE_ARGS = ["--model.teacher", "t", "--model.student", "s", "--data.source", "d.jsonl"]


@pytest.mark.parametrize("name", list(CASES))
def test_default_loss_is_bit_identical_to_before_the_knobs(name):
    """torch.equal, not allclose: the defaults must not move a single bit (values from commit d4631f7)."""
    want = torch.load(GOLDEN)[name]
    got = compute(name)
    assert set(got) == set(want)
    for key in got:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), (name, key)


def test_golden_file_tells_cases_apart():
    """Guard against a vacuous golden: the stored cases differ from each other."""
    golden = torch.load(GOLDEN)
    assert len({round(float(golden[n]["loss"]), 5) for n in CASES}) == len(CASES)


@pytest.mark.parametrize("grad", list(IdtsGrad))
@pytest.mark.parametrize("weight", list(IdtsWeight))
@pytest.mark.parametrize("pool", list(MedianPool))
@pytest.mark.parametrize("name", ["rkl", "jsd"])  # analytic and autograd kernels
def test_knobs_match_reference(name, pool, weight, grad):
    cfg = LossConfig(
        divergence=Divergence(name), idts_grad=grad, idts_weight=weight, median_pool=pool, chunk_size=3, c=0.5
    )
    zs, zt, labels, mask = ref.make_batch(3, 7, 17, seed=3)
    stats, want = check(cfg, zs, zt, labels, mask, ratio=0.5)
    assert stats.median == pytest.approx(want.median, abs=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        {"divergence": Divergence.FKL, "c": 0.1},
        {"divergence": Divergence.SRKL, "c": 0.25, "inverse_sign": False, "idts_weight": IdtsWeight.NORMALIZED},
        {"divergence": Divergence.AB, "latf": False, "idts_weight": IdtsWeight.NONE},  # IDTS only: pool = all
        {"divergence": Divergence.RKL, "kd_ratio": 0.6, "temperature": 1.7, "median_pool": MedianPool.VALID},
    ],
)
def test_through_more_settings_match_reference(kw):
    cfg = LossConfig(idts_grad=IdtsGrad.THROUGH, chunk_size=4, **kw)
    zs, zt, labels, mask = ref.make_batch(2, 9, 23, seed=11)
    check(cfg, zs, zt, labels, mask, ratio=0.6)


def test_knobs_change_the_gradient():
    """Each non-default knob must move the gradient on this batch (so the reference comparisons are not vacuous)."""
    zs, zt, labels, mask = ref.make_batch(3, 7, 17, seed=3)
    grads = {}
    for key, value in [
        ("default", None),
        ("idts_grad", IdtsGrad.THROUGH),
        ("idts_weight", IdtsWeight.NONE),
        ("idts_weight", IdtsWeight.NORMALIZED),
        ("median_pool", MedianPool.VALID),
    ]:
        cfg = LossConfig() if value is None else LossConfig(**{key: value})
        loss_fn = AdaKDLoss(cfg)
        loss_fn.controller.ratio = 0.5
        x = zs.clone().requires_grad_(True)
        loss_fn(x, zt, labels, mask)[0].backward()
        grads[f"{key}={value}"] = x.grad
    base = grads.pop("default=None")
    for name, g in grads.items():
        assert (g - base).abs().max() > 1e-3, name


def test_normalized_weights_have_mean_one_over_the_selected():
    """With `none` divergences equal, normalized = tau2 rescaled: kd(normalized) * mean(tau^2) == kd(tau2)."""
    zs, zt, labels, mask = ref.make_batch(2, 8, 13, seed=4)
    out = {}
    for weight in (IdtsWeight.TAU2, IdtsWeight.NORMALIZED):
        loss_fn = AdaKDLoss(LossConfig(idts_weight=weight))
        loss_fn.controller.ratio = 0.5
        out[weight] = loss_fn(zs, zt, labels, mask)[1]
    mean_sq = float(out[IdtsWeight.TAU2].taus.double().square().mean())
    assert mean_sq != pytest.approx(1.0, abs=1e-3)
    assert out[IdtsWeight.NORMALIZED].kd_loss * mean_sq == pytest.approx(out[IdtsWeight.TAU2].kd_loss, rel=1e-12)


@pytest.mark.parametrize("pool", list(MedianPool))
@pytest.mark.parametrize("weight", [IdtsWeight.TAU2, IdtsWeight.NORMALIZED])
def test_through_fused_head_matches_reference(weight, pool):
    """The fused head (logits = h W^T chunk by chunk, hand-written backward) gets the through terms right too."""
    g = torch.Generator().manual_seed(7)
    b, length, h, v = 2, 7, 5, 19
    hs, ws = (
        torch.randn(b, length, h, generator=g, dtype=torch.float64),
        torch.randn(v, h, generator=g, dtype=torch.float64),
    )
    ht, wt = (
        torch.randn(b, length, h, generator=g, dtype=torch.float64),
        torch.randn(v, h, generator=g, dtype=torch.float64),
    )
    _, _, labels, mask = ref.make_batch(b, length, v, seed=8)
    cfg = LossConfig(
        divergence=Divergence.FKL, idts_grad=IdtsGrad.THROUGH, idts_weight=weight, median_pool=pool, chunk_size=4
    )
    loss_fn = AdaKDLoss(cfg)
    loss_fn.controller.ratio = 0.6
    h1, w1 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    loss, _ = loss_fn(HeadInput(h1, w1), HeadInput(ht, wt), labels, mask)
    loss.backward()
    h2, w2 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    want = ref.adakd_reference(ref.RefCfg.from_loss_config(cfg), h2 @ w2.T, ht @ wt.T, labels, mask, ratio=0.6)
    want.loss.backward()
    torch.testing.assert_close(loss, want.loss, **TOL)
    torch.testing.assert_close(h1.grad, h2.grad, **TOL)
    torch.testing.assert_close(w1.grad, w2.grad, **TOL)


def test_through_float32_is_close_to_float64():
    zs, zt, labels, mask = ref.make_batch(2, 6, 40, seed=9)
    cfg = LossConfig(idts_grad=IdtsGrad.THROUGH, chunk_size=5)
    loss_fn = AdaKDLoss(cfg)
    loss_fn.controller.ratio = 0.75
    x = zs.float().requires_grad_(True)
    loss_fn(x, zt.float(), labels, mask)[0].backward()
    xr = zs.float().double().requires_grad_(True)
    ref.adakd_reference(
        ref.RefCfg.from_loss_config(cfg), xr, zt.float().double(), labels, mask, ratio=0.75
    ).loss.backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("key", ["idts_grad", "idts_weight", "median_pool"])
def test_bad_enum_value_is_one_line_naming_the_key(key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*BASE_ARGS, f"--loss.{key}", "bogus"])
    msg = str(err.value)
    assert f"loss.{key}" in msg and "choose from" in msg and "\n" not in msg


def test_through_with_a_non_hellinger_indicator_is_refused():
    cfg = load_config(None, [*BASE_ARGS, "--loss.idts_grad", "through", "--loss.indicator", "ce"])
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    assert "loss.idts_grad through needs loss.indicator hellinger" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="loss.idts_grad through needs loss.indicator hellinger"):
        AdaKDLoss(cfg.loss)
    # the same indicator without IDTS, or detached, is fine
    load_config(
        None, [*BASE_ARGS, "--loss.idts_grad", "through", "--loss.indicator", "ce", "--loss.idts", "false"]
    ).validate()
    load_config(None, [*BASE_ARGS, "--loss.indicator", "ce"]).validate()


def test_bad_knob_through_the_cli_is_one_line_and_exit_2(tiny_setup, tmp_path, capsys):
    from adakd_ds.engine.cli import distill_main
    from tests.engine_fixtures import write_run_config

    cfg = write_run_config(tiny_setup, tmp_path / "out")
    for extra, expected in [
        (["--loss.idts_weight", "tau3"], "'loss.idts_weight': cannot read 'tau3'"),
        (["--loss.idts_grad", "through", "--loss.indicator", "random"], "loss.idts_grad through needs"),
    ]:
        assert distill_main(["--config", str(cfg), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out" / ".adakd-run.lock").exists()


# ---------------------------------------------------------------- c and the LATF schedule (already keys)


@pytest.mark.parametrize("c", [0.1, 0.25, 0.5])
def test_c_values_match_reference(c):
    cfg = LossConfig(c=c, chunk_size=4)
    zs, zt, labels, mask = ref.make_batch(3, 7, 17, seed=12)
    stats, want = check(cfg, zs, zt, labels, mask, ratio=0.5)
    lo, hi = math.exp(-c), math.exp(c)
    assert lo - 1e-12 <= stats.tau_min < 1.0 < stats.tau_max <= hi + 1e-12


def test_a_fast_latf_schedule_moves_r_within_a_short_run():
    """eps 0.01, delta 0.2, r_min 0.3 on a falling loss: r falls to r_min in a few dozen steps, as the reference."""
    cfg = LossConfig(eps=0.01, delta=0.2, r_min=0.3, ema_beta=0.9)
    load_config(None, [*BASE_ARGS, "--loss.eps", "0.01", "--loss.delta", "0.2", "--loss.r_min", "0.3"]).validate()
    total = 60
    ctl = LATFController(cfg, total)
    want = ref.RefLATF(r_min=0.3, beta=0.9, eps=0.01, delta=0.2, warmup_frac=cfg.warmup_frac, total_steps=total)
    ratios = []
    for step in range(total):
        loss = 3.0 * 0.97**step
        ratios.append(ctl.update(loss))
        assert ratios[-1] == pytest.approx(want.update(loss), abs=1e-12)
    warm = int(cfg.warmup_frac * total)
    assert ratios[:warm] == [1.0] * warm and ratios[-1] == pytest.approx(0.3) and len(set(ratios)) > 4
