"""The data-policy decisions of issue 10 without DeepSpeed: the per-step draw, DistiLLM's threshold, the replay
buffer, and the one-line errors for bad settings. References are the rules written out again in plain Python."""

from __future__ import annotations

import itertools

import pytest
import torch

from adakd_ds.config.schema import DataPolicy, PolicyConfig
from adakd_ds.engine.policy.data_policy import PolicyDraw, Source, Threshold
from adakd_ds.engine.policy.replay_buffer import ReplayBuffer


def _reference_rule(policy: str, u: float, phi: float, alpha: float, step: int, total: int, full: bool) -> str:
    if policy == "gkd":
        return "generated" if u < alpha else "dataset"
    if policy == "distillm":
        if u < phi * (1 - step / total) or (u < phi and not full):
            return "generated"
        return "replay" if u < phi else "dataset"
    return "dataset"


@pytest.mark.parametrize("policy", ["dataset", "gkd", "distillm"])
def test_decide_follows_the_rule(policy):
    total = 10
    for u, phi, alpha, step, full in itertools.product(
        [0.0, 0.05, 0.3, 0.45, 0.5, 0.7, 0.99], [0.0, 0.5, 1.0], [0.0, 0.5, 1.0], [0, 3, 9], [False, True]
    ):
        draw = PolicyDraw(PolicyConfig(data_policy=DataPolicy(policy), gkd_alpha=alpha), seed=1, total_steps=total)
        draw.threshold.phi = phi
        got = draw.decide(step, full, u)
        assert got.value == _reference_rule(policy, u, phi, alpha, step, total, full), (u, phi, alpha, step, full)


def test_gkd_alpha_one_always_generates_and_zero_never():
    for alpha, expected in ((1.0, Source.GENERATED), (0.0, Source.DATASET)):
        draw = PolicyDraw(PolicyConfig(data_policy=DataPolicy.GKD, gkd_alpha=alpha), seed=3, total_steps=50)
        assert {draw.choose(step, False) for step in range(50)} == {expected}


def test_the_draw_is_the_same_sequence_for_the_same_seed_and_resumes_exactly():
    cfg = PolicyConfig(data_policy=DataPolicy.GKD, gkd_alpha=0.5)
    a, b = PolicyDraw(cfg, seed=11, total_steps=100), PolicyDraw(cfg, seed=11, total_steps=100)
    first = [a.choose(s, False) for s in range(40)]
    assert first == [b.choose(s, False) for s in range(40)]  # every rank draws the same choices
    assert 10 < sum(s is Source.GENERATED for s in first) < 30  # the draw is not constant
    state = a.state_dict()
    rest = [a.choose(s, False) for s in range(40, 80)]
    c = PolicyDraw(cfg, seed=999, total_steps=100)
    c.load_state_dict(state)
    assert [c.choose(s, False) for s in range(40, 80)] == rest
    assert c.counts == a.counts
    u = torch.rand((), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert first[0] is (Source.GENERATED if float(u) < 0.5 else Source.DATASET)  # one float64 uniform per step


def test_threshold_rises_by_step_when_the_validation_loss_rose_by_eps_since_the_last_rise():
    th = Threshold(init=0.0, step=0.1, eps=0.25)
    script = [  # (validation loss, phi after it); binary fractions, so no rounding decides a case
        (1.0, 0.0),  # the first measurement is the reference
        (1.125, 0.0),  # +0.125 < eps
        (1.25, 0.1),  # +0.25 >= eps: rise, the reference is now 1.25
        (1.375, 0.1),  # +0.125 since the last rise
        (0.5, 0.1),  # a fall never lowers phi
        (1.5, 0.2),  # +0.25 since 1.25
        (1.5, 0.2),
    ]
    for loss, phi in script:
        th.observe(loss)
        assert th.phi == pytest.approx(phi, abs=1e-12), (loss, th.phi)
    assert th.last == 1.5 and th.reference == 1.5
    capped = Threshold(init=0.95, step=0.1, eps=0.25)
    for loss in (0.0, 1.0, 2.0):
        capped.observe(loss)
    assert capped.phi == 1.0


def test_replay_buffer_never_exceeds_capacity_and_returns_stored_sequences():
    buf = ReplayBuffer(capacity=10, seed=5, rank=1)
    added = []
    for k in range(5):
        batch = [([1, 10 * k + j, 3], [-100, 10 * k + j, 3]) for j in range(4)]
        buf.add(batch)
        added += batch
        assert len(buf) == min(len(added), 10)
        assert buf.full is (len(added) >= 10)
    assert buf.items == added[-10:]  # FIFO: the oldest go first
    state = buf.state_dict()
    drawn = buf.sample(4)
    assert all(s in added[-10:] for s in drawn) and len({tuple(s[0]) for s in drawn}) == 4  # distinct
    assert all(s in added[-10:] for s in buf.sample(25))  # more than stored: with repeats
    again = ReplayBuffer(capacity=10, seed=0, rank=0)
    again.load_state_dict(state)
    assert again.items == added[-10:] and again.sample(4) == drawn
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(2, 0, 0).sample(1)


def _bad_config(tmp_path, **policy) -> list[str]:
    import yaml

    cfg = {
        "model": {"teacher": "t", "student_config": "s"},
        "data": {"source": "train.jsonl", **policy.pop("data", {})},
        "policy": policy,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["--config", str(path)]


@pytest.mark.parametrize(
    "policy,needle",
    [
        ({"data_policy": "gkd", "gkd_alpha": 1.5}, "policy.gkd_alpha must be in [0, 1], got 1.5"),
        ({"data_policy": "gkd", "gkd_alpha": -0.1}, "policy.gkd_alpha must be in [0, 1], got -0.1"),
        ({"data_policy": "distillm", "capacity": 0, "data": {"eval_source": "e.jsonl"}}, "policy.capacity"),
        ({"data_policy": "distillm"}, "distillm needs data.eval_source"),
        ({"data_policy": "onpolicy"}, "'policy.data_policy': cannot read 'onpolicy'"),
    ],
)
def test_bad_policy_settings_are_one_line_errors(tmp_path, capsys, policy, needle):
    from adakd_ds.engine.cli import distill_main

    assert distill_main(_bad_config(tmp_path, **policy)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_heldout_shards_give_every_rank_the_same_number_of_forwards():
    from adakd_ds.engine.policy.heldout import shard_batches

    samples = [([i], [i]) for i in range(9)]
    for world, batch in ((1, 4), (2, 4), (3, 2), (4, 4)):
        shards = [shard_batches(samples, r, world, batch) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # a rank with fewer samples pads with stand-in (None) batches
        real = [x for s in shards for b in s if b is not None for x in b]
        assert sorted(real) == samples and all(len(b) <= batch for s in shards for b in s if b is not None)
    assert shard_batches(samples, 1, 2, 4) == [[samples[1], samples[3], samples[5], samples[7]], None]
