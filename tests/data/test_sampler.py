"""The global sample order: world-size independence, drop_last, determinism, exact resume."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adakd_ds.data.sampler import GlobalBatchSampler, epoch_seed


def _samplers(n: int, world: int, micro: int, seed: int) -> list[GlobalBatchSampler]:
    return [GlobalBatchSampler(n, world * micro, micro, rank, seed) for rank in range(world)]


def test_order_matches_an_independent_reference() -> None:
    n, world, micro, seed = 23, 2, 3, 7
    samplers = _samplers(n, world, micro, seed)
    for epoch in range(3):
        gen = torch.Generator().manual_seed(seed * 1000003 + epoch)  # the documented seed, written out
        perm = torch.randperm(n, generator=gen).tolist()
        assert epoch_seed(seed, epoch) == seed * 1000003 + epoch
        steps = n // (world * micro)
        assert samplers[0].steps_per_epoch == steps == 3
        for step in range(steps):
            for rank, sampler in enumerate(samplers):
                start = step * world * micro + rank * micro
                assert sampler.rank_indices(epoch, step) == perm[start : start + micro]


def test_two_ranks_of_m_equal_one_rank_of_2m() -> None:
    n, m, seed = 50, 3, 11
    two = _samplers(n, 2, m, seed)
    (one,) = _samplers(n, 1, 2 * m, seed)
    assert one.steps_per_epoch == two[0].steps_per_epoch == n // (2 * m)
    for epoch in range(3):
        one_batches = list(one.iter_micro_batches(epoch))
        rank_batches = [list(s.iter_micro_batches(epoch)) for s in two]
        assert len(one_batches) == one.steps_per_epoch
        for step, batch in enumerate(one_batches):
            union = rank_batches[0][step] + rank_batches[1][step]  # rank order = the 1-rank batch's order
            assert union == batch
            assert union == two[1].global_indices(epoch, step)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    world=st.integers(1, 4),
    micro=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 5),
)
def test_each_epoch_is_a_drop_last_partition(n: int, world: int, micro: int, seed: int, epoch: int) -> None:
    if n < world * micro:
        with pytest.raises(ValueError, match="fewer than one global micro-batch"):
            GlobalBatchSampler(n, world * micro, micro, 0, seed)
        return
    samplers = _samplers(n, world, micro, seed)
    seen: list[int] = []
    for sampler in samplers:
        batches = list(sampler.iter_micro_batches(epoch))
        assert all(len(b) == micro for b in batches)  # every rank runs every forward, with a full micro-batch
        assert len(batches) == n // (world * micro)
        seen += [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == (n // (world * micro)) * world * micro
    assert set(seen) <= set(range(n))
    # the single-rank view with the same global batch gives the same set, in the same order per step
    (flat,) = _samplers(n, 1, world * micro, seed)
    assert [i for b in flat.iter_micro_batches(epoch) for i in b] == [
        i for step in range(flat.steps_per_epoch) for r in range(world) for i in samplers[r].rank_indices(epoch, step)
    ]


def test_epochs_differ_and_seeds_reproduce() -> None:
    a = GlobalBatchSampler(100, 4, 2, 0, seed=3)
    b = GlobalBatchSampler(100, 4, 2, 0, seed=3)
    c = GlobalBatchSampler(100, 4, 2, 0, seed=4)
    assert a.permutation(0).tolist() == b.permutation(0).tolist()
    assert a.permutation(0).tolist() != a.permutation(1).tolist()
    assert a.permutation(0).tolist() != c.permutation(0).tolist()
    assert sorted(a.permutation(1).tolist()) == list(range(100))


def test_resume_skips_exactly_the_consumed_micro_steps() -> None:
    sampler = GlobalBatchSampler(40, 6, 3, 1, seed=5)
    full = list(sampler.iter_micro_batches(2))
    for start in range(sampler.steps_per_epoch + 1):
        assert list(sampler.iter_micro_batches(2, start)) == full[start:]
        sampler.set_epoch(2, start)
        assert len(sampler) == len(full) - start
        assert list(sampler) == full[start:]  # the DataLoader batch_sampler protocol
    with pytest.raises(IndexError):
        list(sampler.iter_micro_batches(2, sampler.steps_per_epoch + 1))


def test_locate_never_resumes_into_an_empty_epoch_remainder() -> None:
    sampler = GlobalBatchSampler(40, 6, 3, 0, seed=5)
    steps = sampler.steps_per_epoch  # 6
    assert sampler.locate(0) == (0, 0)
    assert sampler.locate(steps - 1) == (0, steps - 1)
    assert sampler.locate(steps) == (1, 0)  # stopped exactly at an epoch end: the next epoch starts
    assert sampler.locate(2 * steps + 2) == (2, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 5, 2, 0, 0), "multiple of micro_batch"),
        ((10, 4, 2, 2, 0), "rank 2 is outside"),
        ((3, 4, 2, 0, 0), "fewer than one global micro-batch"),
    ],
)
def test_bad_sampler_arguments(args: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlobalBatchSampler(*args)
