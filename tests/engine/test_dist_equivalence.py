"""Two gloo ranks, each holding half of the batch, must give exactly the single-process AdaKD objective.

The spawned ranks run every case once (a module fixture) and save what they saw; the parent process computes the
whole batch without torch.distributed and the tests compare. Gradient rule: DeepSpeed AVERAGES gradients over ranks,
so rank r's gradient rows divided by world_size must equal the single-process gradient rows of rank r's tokens.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import traceback
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adakd_ds.config.schema import Divergence, IdtsGrad, IdtsWeight, Indicator, LossConfig, MedianPool
from adakd_ds.loss.adakd_loss import AdaKDLoss
from tests.loss import reference_loss as ref

WORLD = 2
TOL = {"rtol": 1e-6, "atol": 1e-6}
JOIN_TIMEOUT_S = 90
B, L, V = 4, 6, 24
LATF_STEPS = 8


@dataclass
class Case:
    name: str
    cfg: LossConfig
    ratio: float
    seed: int = 0  # the AdaKDLoss seed (the random indicator)


CASES = {
    "equal": Case("equal", LossConfig(divergence=Divergence.RKL, chunk_size=5), ratio=0.6),
    "skewed": Case("skewed", LossConfig(divergence=Divergence.JSD, kd_ratio=0.7, chunk_size=3), ratio=0.5),
    "empty_rank": Case("empty_rank", LossConfig(divergence=Divergence.FKL), ratio=0.7),
    "random": Case("random", LossConfig(indicator=Indicator.RANDOM), ratio=0.5, seed=7),
    "ties": Case("ties", LossConfig(divergence=Divergence.TVD), ratio=0.45),  # N = 16, k = 7: one pair splits
    # issue 21's knobs: the through pass's all-reduce, the global mean of tau^2 and the median over all valid tokens
    "knobs": Case(
        "knobs",
        LossConfig(
            idts_grad=IdtsGrad.THROUGH, idts_weight=IdtsWeight.NORMALIZED, median_pool=MedianPool.VALID, chunk_size=4
        ),
        ratio=0.5,
    ),
    "knobs_empty_rank": Case(
        "knobs_empty_rank", LossConfig(divergence=Divergence.JSD, idts_grad=IdtsGrad.THROUGH), ratio=0.6
    ),
}
SEEDS = {"equal": 1, "skewed": 2, "empty_rank": 3, "random": 4, "ties": 5, "knobs": 6, "knobs_empty_rank": 7}
EMPTY_RANK_1 = ("empty_rank", "knobs_empty_rank")  # cases whose rank 1 holds no valid token
LATF_CFG = LossConfig(warmup_frac=0.2, ema_beta=0.5, eps=0.05, delta=0.1, r_min=0.3)


def case_batch(name: str, step: int = 0):
    """The whole batch, float32. Rows [0, B/2) belong to rank 0, rows [B/2, B) to rank 1."""
    if name == "latf":
        zs, zt, labels, mask = ref.make_batch(B, L, V, seed=100 + step, dtype=torch.float64)
        zs = zt[..., :V] + 0.6**step * (zs - zt[..., :V])  # the student closes in: the loss falls, r shrinks
        return zs.float(), zt.float(), labels, mask
    zs, zt, labels, mask = ref.make_batch(B, L, V, seed=SEEDS[name], dtype=torch.float32)
    if name == "skewed":
        labels[B // 2 :, :] = -100
        labels[B // 2, 2] = 3  # rank 1 keeps a single valid token
    elif name in EMPTY_RANK_1:
        labels[B // 2 :, :] = -100
    elif name == "ties":  # rank 1 holds copies of rank 0's rows: every score is tied across ranks
        for t in (zs, zt, labels, mask):
            t[B // 2 :] = t[: B // 2]
    return zs, zt, labels, mask


def rank_rows(rank: int) -> slice:
    half = B // WORLD
    return slice(rank * half, (rank + 1) * half)


def run_one(loss_fn: AdaKDLoss, zs, zt, labels, mask) -> dict:
    x = zs.clone().requires_grad_(True)
    loss, stats = loss_fn(x, zt, labels, mask)
    loss.backward()
    assert x.grad is not None, "backward left no gradient on the student logits"
    return {"loss": loss.detach(), "grad": x.grad, "stats": stats}


def latf_run(loss_fn: AdaKDLoss, rows: slice | None) -> dict:
    """Several optimizer steps: forward, backward, the all-reduced step loss into the controller."""
    ratios, losses, ks = [], [], []
    for step in range(LATF_STEPS):
        zs, zt, labels, mask = case_batch("latf", step)
        if rows is not None:
            zs, zt, labels, mask = zs[rows], zt[rows], labels[rows], mask[rows]
        out = run_one(loss_fn, zs, zt, labels, mask)
        step_loss = out["loss"].clone()
        if dist.is_initialized():
            dist.all_reduce(step_loss)
            step_loss /= dist.get_world_size()
        ratios.append(loss_fn.controller.update(float(step_loss)))
        losses.append(float(step_loss))
        ks.append(out["stats"].k)
    return {"ratios": ratios, "losses": losses, "ks": ks, "state": loss_fn.controller.state_dict()}


def _worker(rank: int, port: int, outdir: str) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        results = {}
        for name, case in CASES.items():
            loss_fn = AdaKDLoss(case.cfg, total_steps=10, seed=case.seed)
            loss_fn.controller.ratio = case.ratio
            zs, zt, labels, mask = case_batch(name)
            r = rank_rows(rank)
            results[name] = run_one(loss_fn, zs[r], zt[r], labels[r], mask[r])
        results["latf"] = latf_run(AdaKDLoss(LATF_CFG, total_steps=10), rank_rows(rank))
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(outdir, f"rank{rank}.err"), "w") as fh:
            fh.write(traceback.format_exc())
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    outdir = str(tmp_path_factory.mktemp("dist"))
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = mp.get_context("spawn")
    procs = []
    try:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, port, outdir), daemon=True) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(JOIN_TIMEOUT_S)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        errors = []
        for r in range(WORLD):
            err = os.path.join(outdir, f"rank{r}.err")
            if os.path.exists(err):
                errors.append(f"rank {r}:\n" + open(err).read())
        assert not errors, "\n".join(errors)
        assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S}s: a collective hangs"
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def single(name: str) -> dict:
    case = CASES[name]
    loss_fn = AdaKDLoss(case.cfg, total_steps=10, seed=case.seed)
    loss_fn.controller.ratio = case.ratio
    return run_one(loss_fn, *case_batch(name))


@pytest.mark.parametrize("name", list(CASES))
def test_selection_median_and_taus_match(ranks, name):
    one = single(name)["stats"]
    sel = one.selected.bool()
    pool = sel if CASES[name].cfg.median_pool is MedianPool.SELECTED else torch.ones_like(sel)
    median = ref.lower_median(one.scores[pool].tolist())  # the reference's lower median of the pool's scores
    assert one.median == median, "stats.median is not the lower median of the pool's scores"
    for r, res in enumerate(ranks):
        st = res[name]["stats"]
        assert (st.n, st.k) == (one.n, one.k), f"rank {r}"
        assert torch.equal(st.selected.bool(), sel), f"rank {r} selected a different set"
        torch.testing.assert_close(st.scores, one.scores, **TOL)
        assert st.median == pytest.approx(median, abs=1e-6), f"rank {r} used a different median"
        torch.testing.assert_close(st.taus, one.taus, **TOL)
        assert st.ratio == one.ratio
    # the taus are the IDTS formula at the recomputed median (not just equal to each other)
    cfg = CASES[name].cfg
    want = [ref.idts_tau_one(float(s), median, cfg.temperature, cfg.c) for s in one.scores[sel]]
    torch.testing.assert_close(one.taus.double(), torch.tensor(want, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradient_match(ranks, name):
    one = single(name)
    for r, res in enumerate(ranks):
        assert res[name]["stats"].loss == pytest.approx(one["stats"].loss, rel=1e-6, abs=1e-6), f"rank {r}"
        torch.testing.assert_close(res[name]["grad"] / WORLD, one["grad"][rank_rows(r)], **TOL)
    local_mean = sum(float(res[name]["loss"]) for res in ranks) / WORLD
    assert local_mean == pytest.approx(float(one["loss"]), rel=1e-6, abs=1e-6)
    assert float(one["loss"]) == pytest.approx(one["stats"].loss, rel=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_rank_share(ranks, name):
    one = single(name)["stats"]
    labels, mask = case_batch(name)[2:]
    n0 = int(((labels[rank_rows(0)] != -100) & (mask[rank_rows(0)] == 1)).sum())
    sel = one.selected.bool()
    want = [float(sel[:n0].sum()) / one.k, float(sel[n0:].sum()) / one.k]
    for res in ranks:
        assert res[name]["stats"].rank_share == pytest.approx(want, abs=1e-9)


def test_case_shapes_are_what_they_claim():
    """The skewed / empty cases really put (almost) nothing on rank 1."""
    for name, lo, hi in (("skewed", 1, 1), ("empty_rank", 0, 0), ("equal", 5, 100)):
        labels, mask = case_batch(name)[2:]
        n1 = int(((labels[rank_rows(1)] != -100) & (mask[rank_rows(1)] == 1)).sum())
        assert lo <= n1 <= hi, (name, n1)


def test_ties_go_to_the_lower_global_index(ranks):
    st = ranks[0]["ties"]["stats"]
    n0 = st.n // 2
    assert torch.equal(st.scores[:n0], st.scores[n0:]), "the copied rows should give identical scores"
    sel = st.selected.bool()
    assert st.k % 2 == 1, "k must be odd so that one tied pair is split by the selection"
    assert torch.all(sel[:n0] >= sel[n0:])  # where a tied pair splits, rank 0's (lower global index) token wins
    assert int(sel[:n0].sum()) == int(sel[n0:].sum()) + 1


@pytest.mark.parametrize("name", EMPTY_RANK_1)
def test_empty_rank_has_zero_gradient_and_loss(ranks, name):
    res = ranks[1][name]
    assert float(res["loss"]) == 0.0
    assert torch.all(res["grad"] == 0)


def test_knob_cases_are_not_the_defaults():
    """The knob cases' single-process gradient differs from the default loss's on the same batch (not vacuous)."""
    for name in ("knobs", "knobs_empty_rank"):
        case = CASES[name]
        default = dataclasses.replace(case.cfg, idts_grad=IdtsGrad.DETACHED, idts_weight=IdtsWeight.TAU2)
        default = dataclasses.replace(default, median_pool=MedianPool.SELECTED)
        loss_fn = AdaKDLoss(default, total_steps=10)
        loss_fn.controller.ratio = case.ratio
        assert (run_one(loss_fn, *case_batch(name))["grad"] - single(name)["grad"]).abs().max() > 1e-4, name


def test_latf_state_after_several_steps(ranks):
    one = latf_run(AdaKDLoss(LATF_CFG, total_steps=10), None)
    assert min(one["ratios"]) < 1.0, one["ratios"]  # the controller did leave r = 1
    for r, res in enumerate(ranks):
        got = res["latf"]
        assert got["ks"] == one["ks"], f"rank {r}"
        assert got["ratios"] == pytest.approx(one["ratios"], rel=1e-12), f"rank {r}"
        assert got["losses"] == pytest.approx(one["losses"], rel=1e-6, abs=1e-6), f"rank {r}"
        for key, value in one["state"].items():
            if isinstance(value, float):
                assert got["state"][key] == pytest.approx(value, rel=1e-6), key
            else:
                assert got["state"][key] == value, key
