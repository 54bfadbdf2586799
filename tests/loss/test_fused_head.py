"""The fused head (logits made chunk by chunk from hidden states) against the unfused loss on materialised logits.

The unfused path is the reference: it is itself checked against a float64 per-token loop (test_losses_reference.py).
Same loss, same statistics (scores, selection, temperatures), same gradients on the hidden states and the head, in
float64 (1e-10) and float32, for every divergence, with AdaKD on and off and with a label-CE mix; then through real
tiny HF models (Llama tied and untied, GPT-2): the gradient of every parameter, the embedding included when tied.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adakd_ds.config.schema import Divergence, FusedHead, LossConfig
from adakd_ds.eval.hidden_forward import head_input, model_output, resolve_fused_head
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.fused_head import HeadInput

DIVS = [d.value for d in Divergence]
TOLS = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-6}}
MODES = {  # name -> LossConfig overrides
    "base": {"adakd": False},
    "adakd": {"adakd": True},
    "adakd_ce": {"adakd": True, "kd_ratio": 0.6},
}
B, L, H, V, V_PAD = 3, 7, 16, 37, 40


def _inputs(dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    ws = torch.randn(V, H, generator=g, dtype=torch.float64) / H**0.5
    ht = hs + 0.5 * torch.randn(B, L, H, generator=g, dtype=torch.float64)
    wt = torch.randn(V_PAD, H, generator=g, dtype=torch.float64) / H**0.5  # a padded teacher vocab
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :3] = -100  # a prompt
    labels[2, 5:] = -100  # padding
    return [t.to(dtype) for t in (hs, ws, ht, wt)], labels


def _ratio_loss(cfg: LossConfig) -> AdaKDLoss:
    loss = AdaKDLoss(cfg, total_steps=10)
    loss.controller.ratio = 0.55  # LATF keeps a scattered subset of the rows
    return loss


def _run(cfg: LossConfig, fused: bool, dtype: torch.dtype, seed: int):
    (hs, ws, ht, wt), labels = _inputs(dtype, seed)
    hs.requires_grad_(True)
    ws.requires_grad_(True)
    if fused:
        loss, stats = _ratio_loss(cfg)(HeadInput(hs, ws), HeadInput(ht, wt), labels)
    else:
        loss, stats = _ratio_loss(cfg)(hs @ ws.t(), ht @ wt.t(), labels)
    loss.backward()
    return loss.detach(), stats, hs.grad, ws.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", DIVS)
def test_fused_equals_unfused(name, mode, dtype):
    cfg = LossConfig(divergence=Divergence(name), chunk_size=4, **MODES[mode])
    seed = DIVS.index(name)
    loss_u, stats_u, gh_u, gw_u = _run(cfg, False, dtype, seed)
    loss_f, stats_f, gh_f, gw_f = _run(cfg, True, dtype, seed)
    tol = TOLS[dtype]
    assert stats_f.k == stats_u.k and stats_f.n == stats_u.n
    if cfg.adakd:
        assert 0 < stats_u.k < stats_u.n  # LATF really selected a subset
        assert torch.equal(stats_f.selected, stats_u.selected)
        torch.testing.assert_close(stats_f.scores, stats_u.scores, **tol)
    torch.testing.assert_close(stats_f.taus, stats_u.taus, **tol)
    torch.testing.assert_close(loss_f, loss_u, **tol)
    assert gh_u.abs().max() > 0 and gw_u.abs().max() > 0
    torch.testing.assert_close(gh_f, gh_u, **tol)
    torch.testing.assert_close(gw_f, gw_u, **tol)


def test_fused_chunking_does_not_change_the_result():
    cfg = LossConfig(divergence=Divergence.RKL)
    ref = _run(dataclasses.replace(cfg, chunk_size=1), True, torch.float64, 3)
    for chunk in (0, 5, 1000):
        got = _run(dataclasses.replace(cfg, chunk_size=chunk), True, torch.float64, 3)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[2], ref[2], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[3], ref[3], rtol=1e-12, atol=1e-12)


def test_fused_head_errors_name_the_shape():
    (hs, ws, ht, wt), labels = _inputs(torch.float64, 0)
    loss = AdaKDLoss(LossConfig())
    with pytest.raises(ValueError, match="head weight"):
        loss(HeadInput(hs, ws[:, :5]), HeadInput(ht, wt), labels)
    with pytest.raises(ValueError, match="smaller than the student"):
        loss(HeadInput(hs, ws), HeadInput(ht, wt[:10]), labels)
    with pytest.raises(ValueError, match="labels shape"):
        loss(HeadInput(hs, ws), HeadInput(ht, wt), labels[:, 1:])


# ------------------------------------------------------------------------------------------- real tiny HF models


def _llama(tied: bool, seed: int, vocab: int = 53):
    from transformers import LlamaForCausalLM

    from tests.engine_fixtures import tiny_llama_config

    torch.manual_seed(seed)
    cfg = tiny_llama_config(vocab, 24, 2)
    cfg.tie_word_embeddings = tied
    return LlamaForCausalLM(cfg).double()


def _gpt2(seed: int, vocab: int = 53):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_embd=24,
            n_layer=2,
            n_head=4,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    ).double()


def _batch(vocab: int):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    targets = torch.full_like(ids, -100)
    targets[:, 2:-1] = ids[:, 3:]
    targets[1, 6:] = -100
    return ids, mask, targets


def _model_grads(student, teacher, fused: bool, cfg: LossConfig):
    student.zero_grad(set_to_none=True)
    ids, mask, targets = _batch(53)
    with torch.no_grad():
        t_out = model_output(teacher, ids, mask, fused)
    s_out = model_output(student, ids, mask, fused)
    loss, stats = _ratio_loss(cfg)(s_out, t_out, targets, attention_mask=mask)
    loss.backward()
    return loss.detach(), stats, {n: p.grad.clone() for n, p in student.named_parameters()}


@pytest.mark.parametrize("family", ["llama_tied", "llama_untied", "gpt2"])
def test_fused_model_gradients_equal_unfused(family):
    if family == "gpt2":
        student, teacher = _gpt2(1), _gpt2(2)
    else:
        student, teacher = _llama(family == "llama_tied", 1), _llama(False, 2)
    assert resolve_fused_head(FusedHead.AUTO, student, teacher)
    cfg = LossConfig(divergence=Divergence.RKL, kd_ratio=0.8, chunk_size=5)
    loss_u, stats_u, grads_u = _model_grads(student, teacher, False, cfg)
    loss_f, stats_f, grads_f = _model_grads(student, teacher, True, cfg)
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-10, atol=1e-10)
    assert torch.equal(stats_f.selected, stats_u.selected)
    assert grads_u.keys() == grads_f.keys()
    for name, g in grads_u.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], g, rtol=1e-10, atol=1e-10, msg=name)
    if family == "llama_tied":  # the head IS the embedding: one parameter, both gradients summed in it
        assert student.lm_head.weight is student.model.embed_tokens.weight


def test_head_input_is_the_hidden_state_the_head_reads():
    model = _llama(False, 3)
    ids, mask, _ = _batch(53)
    with torch.no_grad():
        x = head_input(model, ids, mask)
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert x.weight is model.lm_head.weight
    torch.testing.assert_close(x.hidden @ x.weight.t(), logits, rtol=1e-12, atol=1e-12)


def test_resolve_fused_head_modes():
    model = _llama(True, 4)
    assert resolve_fused_head("auto", model) is True
    assert resolve_fused_head(FusedHead.FALSE, model) is False
    model.config.model_type = "gemma2"  # a family with logit soft-capping after the head: never fused by auto
    assert resolve_fused_head("auto", model) is False
    with pytest.raises(ValueError, match="fused_head: true.*gemma2"):
        resolve_fused_head(FusedHead.TRUE, model)


def test_heldout_eval_loss_fused_equals_unfused():
    from adakd_ds.eval.heldout_loss import eval_loss_sums

    student, teacher = _llama(True, 6), _llama(False, 7, vocab=57)  # a padded teacher vocab is sliced
    g = torch.Generator().manual_seed(8)
    samples = []
    for n in (5, 9, 7, 3):
        ids = torch.randint(3, 53, (n,), generator=g).tolist()
        samples.append((ids, [-100] * 2 + ids[2:]))
    kw = {"divergences": ["rkl", "fkl", "jsd"], "batch_size": 3}
    unfused = eval_loss_sums(student, samples, 0, teacher, fused_head="false", **kw)
    fused = eval_loss_sums(student, samples, 0, teacher, fused_head="true", **kw)
    assert unfused.keys() == fused.keys() and unfused["n_tokens"] == 3 + 7 + 5 + 1  # n - 2 targets each
    for key, value in unfused.items():
        assert value > 0, key
        assert fused[key] == pytest.approx(value, rel=1e-10, abs=1e-10), key
