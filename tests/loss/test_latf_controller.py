"""The LATF ratio controller on scripted loss sequences, and against the plain reference controller."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adakd_ds.config.schema import LossConfig
from adakd_ds.loss.latf import LATFController
from tests.loss import reference_loss as ref


def make(total_steps: int = 20, **kw) -> tuple[LATFController, ref.RefLATF]:
    cfg = LossConfig(**kw)
    ctl = LATFController(cfg, total_steps)
    mirror = ref.RefLATF(
        ratio_init=cfg.ratio_init,
        r_min=cfg.r_min,
        beta=cfg.ema_beta,
        eps=cfg.eps,
        delta=cfg.delta,
        warmup_frac=cfg.warmup_frac,
        total_steps=total_steps,
    )
    return ctl, mirror


def feed(ctl: LATFController, mirror: ref.RefLATF, losses: list[float]) -> list[float]:
    out = []
    for loss in losses:
        r = ctl.update(loss)
        assert r == mirror.update(loss) == ctl.ratio, f"step {mirror.step}: got {r}, reference {mirror.ratio}"
        out.append(r)
    return out


def test_warmup_keeps_ratio_one_and_sets_ref_at_its_end():
    ctl, mirror = make(total_steps=20, warmup_frac=0.25, ratio_init=1.0)  # 5 warm-up steps
    assert ctl.state_dict()["warmup_steps"] == 5
    rs = feed(ctl, mirror, [5.0, 1.0, 9.0, 0.1, 4.0])  # wild losses: r must not move during warm-up
    assert rs == [1.0] * 5
    state = ctl.state_dict()
    ema = 5.0
    for x in [1.0, 9.0, 0.1, 4.0]:
        ema = 0.99 * ema + 0.01 * x
    assert state["step"] == 5
    assert state["ema"] == pytest.approx(ema, rel=1e-15)
    assert state["ref"] == pytest.approx(ema, rel=1e-15)


def test_ref_is_unset_before_the_end_of_warmup():
    ctl, mirror = make(total_steps=20, warmup_frac=0.25)
    feed(ctl, mirror, [1.0, 2.0, 3.0, 4.0])
    assert ctl.state_dict()["ref"] is None


@pytest.mark.parametrize("frac,total,expect", [(0.05, 100, 5), (0.07, 100, 7), (0.29, 100, 28), (0.5, 3, 1)])
def test_warmup_steps_is_the_floor(frac, total, expect):
    ctl, _ = make(total_steps=total, warmup_frac=frac)
    assert ctl.state_dict()["warmup_steps"] == expect == int(frac * total)


def test_sustained_fall_then_rise_moves_ratio_and_clamps_at_one():
    ctl, mirror = make(total_steps=10, warmup_frac=0.2, ema_beta=0.0)  # ema == the step loss; 2 warm-up steps
    feed(ctl, mirror, [1.0, 1.0])
    falls = feed(ctl, mirror, [0.9, 0.8, 0.7])  # each below ref * 0.95
    assert falls == pytest.approx([0.95, 0.95**2, 0.95**3], rel=1e-15)
    rises = feed(ctl, mirror, [0.8, 0.9, 1.0, 1.1, 1.2, 1.3])  # each above ref * 1.05
    expect, r = [], 0.95**3
    for _ in rises:
        r = min(1.0, r * 1.05)
        expect.append(r)
    assert rises == pytest.approx(expect, rel=1e-15)
    assert rises[-1] == 1.0 and rises[-2] == 1.0
    assert ctl.state_dict()["ref"] == 1.3


def test_sustained_fall_clamps_at_r_min():
    ctl, mirror = make(total_steps=10, warmup_frac=0.1, ema_beta=0.0, r_min=0.3, delta=0.2)
    rs = feed(ctl, mirror, [0.5**i for i in range(12)])
    assert rs[0] == 1.0
    assert rs[1:6] == pytest.approx([0.8, 0.64, 0.512, 0.4096, 0.32768], rel=1e-15)
    assert rs[6:] == [0.3] * 6


def test_within_eps_band_ratio_unchanged():
    ctl, mirror = make(total_steps=10, warmup_frac=0.1, ema_beta=0.0)
    feed(ctl, mirror, [1.0, 0.9])  # warm-up ends at 1.0; the fall to 0.9 gives r = 0.95, ref = 0.9
    band = feed(ctl, mirror, [0.93, 0.87, 0.944, 0.856, 0.9])  # all within 0.9 * (1 +- 0.05), strictly
    assert band == [0.95] * 5
    assert ctl.state_dict()["ref"] == 0.9
    assert feed(ctl, mirror, [0.946]) == pytest.approx([0.95 * 1.05], rel=1e-15)  # just above the band


def test_no_warmup_first_update_sets_ref():
    ctl, mirror = make(total_steps=50, warmup_frac=0.0, ema_beta=0.0, ratio_init=0.5)
    assert ctl.ratio == 0.5
    assert feed(ctl, mirror, [2.0]) == [0.5]
    assert ctl.state_dict()["ref"] == 2.0
    assert feed(ctl, mirror, [2.2, 1.5]) == pytest.approx([0.525, 0.525 * 0.95], rel=1e-15)


def test_state_dict_round_trip_continues_identically():
    ctl, mirror = make(total_steps=40, warmup_frac=0.1, ema_beta=0.7)
    g = torch.Generator().manual_seed(0)
    losses = (2.0 * torch.exp(-0.1 * torch.arange(30.0)) + 0.1 * torch.rand(30, generator=g)).tolist()
    feed(ctl, mirror, losses[:12])
    state = ctl.state_dict()
    assert set(state) >= {"ratio", "ema", "ref", "step", "warmup_steps"}
    buf = io.BytesIO()
    torch.save(copy.deepcopy(state), buf)  # it must survive a checkpoint
    buf.seek(0)
    resumed, _ = make(total_steps=40, warmup_frac=0.1, ema_beta=0.7)
    resumed.load_state_dict(torch.load(buf))
    assert resumed.state_dict() == state and resumed.ratio == ctl.ratio
    a = [ctl.update(x) for x in losses[12:]]
    b = [resumed.update(x) for x in losses[12:]]
    assert a == b
    assert resumed.state_dict() == ctl.state_dict()
    assert min(a) < 1.0  # the sequence did move r, so the comparison means something


@settings(max_examples=30, deadline=None)
@given(
    losses=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=60),
    frac=st.sampled_from([0.0, 0.05, 0.2]),
    beta=st.sampled_from([0.0, 0.5, 0.99]),
)
def test_matches_reference_controller(losses, frac, beta):
    ctl, mirror = make(total_steps=40, warmup_frac=frac, ema_beta=beta, r_min=0.2)
    feed(ctl, mirror, losses)
    s = ctl.state_dict()
    assert (s["step"], s["ema"], s["ref"], s["ratio"]) == (mirror.step, mirror.ema, mirror.ref, mirror.ratio)
