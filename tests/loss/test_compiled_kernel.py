"""loss.kernel compiled against the eager reference: every divergence x {base, AdaKD, LATF only, IDTS only} x
{unfused, fused head}, to float32 round-off; masked (-inf) logits; no recompile over a 20-step run of varying token
counts; the one-line fallback when the compiler fails.

The eager path is itself checked against float64 loops (test_losses_reference.py). CI cost: the compiled graphs are
shared across every case of this module (one per kernel kind, row dimension dynamic), so the compile time is paid
once (about 10 graphs); the shapes are tiny.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adakd_ds.config.schema import Divergence, LossConfig, LossKernel
from adakd_ds.loss import compiled as compiled_mod
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.fused_head import HeadInput

DIVS = [d.value for d in Divergence]
MODES = {  # name -> LossConfig overrides; LATF keeps 60 % of the tokens from the first step (no warm-up)
    "base": {"adakd": False},
    "adakd": {"adakd": True},
    "latf_only": {"adakd": True, "idts": False},
    "idts_only": {"adakd": True, "latf": False},
}
B, L, H, V = 3, 9, 8, 48
TOL = {"rtol": 2e-5, "atol": 1e-6}


def _cfg(div: str, mode: str, kernel: LossKernel, **extra) -> LossConfig:
    base = LossConfig(divergence=Divergence(div), ratio_init=0.6, warmup_frac=0.0, kd_ratio=0.8, chunk_size=4)
    return dataclasses.replace(base, kernel=kernel, **MODES[mode], **extra)


def _data(seed: int, tokens: tuple[int, int] = (B, L)):
    g = torch.Generator().manual_seed(seed)
    hs, ht = torch.randn(*tokens, H, generator=g), torch.randn(*tokens, H, generator=g)
    ws, wt = torch.randn(V, H, generator=g) / H**0.5, torch.randn(V, H, generator=g) / H**0.5
    labels = torch.randint(0, V, tokens, generator=g)
    labels[0, :2] = -100  # a prompt: the selected rows are not one contiguous run
    return hs, ws, ht, wt, labels


def _run(cfg: LossConfig, fused: bool, seed: int = 0):
    """(loss, stats, gradients): of the student's logits (unfused) or of its hidden states and head (fused)."""
    hs, ws, ht, wt, labels = _data(seed)
    hs.requires_grad_(True)
    ws.requires_grad_(True)
    loss_fn = AdaKDLoss(cfg, total_steps=10)
    if fused:
        loss, stats = loss_fn(HeadInput(hs, ws), HeadInput(ht, wt), labels)
        loss.backward()
        return loss.detach(), stats, (hs.grad, ws.grad)
    logits = (hs @ ws.T).detach().requires_grad_(True)
    loss, stats = loss_fn(logits, ht @ wt.T, labels)
    loss.backward()
    return loss.detach(), stats, (logits.grad,)


@pytest.fixture(scope="module", autouse=True)
def fresh_dynamo():
    """Counters and caches of this module only (the compiled graphs are shared by its cases, not with others)."""
    torch._dynamo.reset()
    compiled_mod._CACHE.clear()
    yield
    compiled_mod._CACHE.clear()
    torch._dynamo.reset()


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("div", DIVS)
def test_compiled_equals_eager(div: str, mode: str, fused: bool) -> None:
    loss_e, st_e, grads_e = _run(_cfg(div, mode, LossKernel.EAGER), fused)
    model = AdaKDLoss(_cfg(div, mode, LossKernel.COMPILED))
    assert model.compiled, model.kernel_note  # the compiler works here, so this case tests the compiled path
    loss_c, st_c, grads_c = _run(_cfg(div, mode, LossKernel.COMPILED), fused)
    assert st_c.k == st_e.k and st_c.k < st_c.n if "latf" in mode or mode == "adakd" else st_c.k == st_c.n
    if st_e.selected is not None:
        assert torch.equal(st_c.selected, st_e.selected)  # the same tokens, from the compiled difficulty pass
    torch.testing.assert_close(loss_c, loss_e, **TOL)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        assert ge.abs().max() > 0
        torch.testing.assert_close(gc, ge, **TOL)
    assert not any(f.failed for f in compiled_mod._CACHE.values())  # no silent fallback to eager
    assert not torch._dynamo.utils.counters["graph_break"]  # each chunk's work is whole graphs (no host sync)


@pytest.mark.parametrize("div", ["fkl", "rkl", "jsd"])
def test_masked_logits(div: str) -> None:
    """-inf on both sides (a masked vocab entry): the compiled where-form gives the eager NaN branch's result."""
    hs, ws, ht, wt, labels = _data(1)
    s, t = (hs @ ws.T), (ht @ wt.T)
    s[..., :5], t[..., :5] = float("-inf"), float("-inf")
    labels[labels < 5] = 7
    out = []
    for kernel in (LossKernel.EAGER, LossKernel.COMPILED):
        x = s.clone().requires_grad_(True)
        loss, _ = AdaKDLoss(_cfg(div, "adakd", kernel))(x, t, labels)
        loss.backward()
        out.append((loss.detach(), x.grad))
    assert torch.isfinite(out[0][0]) and torch.isfinite(out[0][1]).all()
    torch.testing.assert_close(out[1][0], out[0][0], **TOL)
    torch.testing.assert_close(out[1][1], out[0][1], **TOL)


def test_no_recompile_over_20_steps() -> None:
    """Token counts vary per step as the engine's batches do (lengths, padding, LATF's ratio): one graph each."""
    counters = torch._dynamo.utils.counters
    loss_fn = AdaKDLoss(_cfg("rkl", "adakd", LossKernel.COMPILED), total_steps=20)
    graphs = []
    for step in range(20):
        hs, ws, ht, wt, labels = _data(100 + step, tokens=(2, 5 + (step * 7) % 13))
        labels[1, -(step % 4) - 1 :] = -100  # padding: a varying number of valid tokens, a 1-row chunk sometimes
        logits = (hs @ ws.T).requires_grad_(True)
        loss, stats = loss_fn(logits, ht @ wt.T, labels)
        loss.backward()
        loss_fn.controller.update(stats.kd_loss)  # LATF moves the ratio, as once per optimizer step
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0  # it compiled
    # A kernel used for the first time mid-run (the gathered-rows form once LATF selects a scattered subset) adds
    # its one graph then, in a fresh process: so the count may step up once or twice early, never per step.
    assert graphs[-1] == graphs[10], f"recompiled during the run: unique graphs per step {graphs}"
    assert graphs[-1] <= graphs[1] + 2, f"more graphs than kernels: unique graphs per step {graphs}"
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compile_failure_falls_back_with_one_line(monkeypatch, capsys) -> None:
    """A compiler that fails inside a kernel: one line on stderr, the eager result, no crash."""

    def broken(fn, **_):
        def call(*args):
            raise RuntimeError("inductor exploded\nsecond line")

        return call

    monkeypatch.setattr(compiled_mod, "_CACHE", {})
    monkeypatch.setattr(torch, "compile", broken)
    loss_c, _, grads_c = _run(_cfg("jsd", "adakd", LossKernel.COMPILED), fused=False)
    loss_e, _, grads_e = _run(_cfg("jsd", "adakd", LossKernel.EAGER), fused=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all("failed, eager from now on (RuntimeError: inductor exploded)" in line for line in err)
    assert len(err) == len(compiled_mod._CACHE)  # one line per kernel, not per call
    assert torch.equal(loss_c, loss_e) and torch.equal(grads_c[0], grads_e[0])


def test_auto_without_a_compiler_says_eager(monkeypatch) -> None:
    monkeypatch.setattr(compiled_mod, "_SMOKE", (False, "CppCompileError: no gcc"))
    ok, note = compiled_mod.resolve_kernel(LossKernel.AUTO)
    assert not ok and note == "loss.kernel: auto -> eager (torch.compile does not work here: CppCompileError: no gcc)"
    assert not AdaKDLoss(_cfg("rkl", "adakd", LossKernel.COMPILED)).compiled
    assert compiled_mod.resolve_kernel("eager") == (False, "loss.kernel: eager")
    assert LossConfig().kernel is LossKernel.EAGER  # the default (why: docs/benchmarks-compiled.md)
