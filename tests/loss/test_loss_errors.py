"""Bad input fails early with ONE clear ValueError line, never with a deep torch error or a silent wrong loss."""

from __future__ import annotations

import pytest
import torch

from adakd_ds.config.schema import Divergence, Indicator, LossConfig
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.difficulty import token_difficulty
from adakd_ds.loss.divergences import get_divergence
from tests.loss import reference_loss as ref


def raises_one_line(pattern: str, fn, *args):
    with pytest.raises(ValueError, match=pattern) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg.strip(), f"error message is not one line: {msg!r}"
    return msg


@pytest.fixture
def batch():
    return ref.make_batch(2, 5, 12, seed=21, dtype=torch.float32)


def test_shape_mismatch(batch):
    zs, zt, labels, mask = batch
    loss = AdaKDLoss(LossConfig())
    raises_one_line(r"(?i)shape", loss, zs, zt[:, :4], labels, mask)  # teacher is shorter
    raises_one_line(r"(?i)shape", loss, zs, zt, labels[:, :4], mask)  # labels do not fit the logits
    raises_one_line(r"(?i)shape|mask", loss, zs, zt, labels, mask[:, :3])  # attention mask does not fit


def test_vocab_mismatch_teacher_smaller(batch):
    zs, zt, labels, mask = batch
    msg = raises_one_line(r"(?i)vocab", AdaKDLoss(LossConfig()), zs, zt[..., :10], labels, mask)
    assert "10" in msg and "12" in msg, f"the message should name both vocab sizes: {msg}"


def test_all_labels_ignored(batch):
    zs, zt, labels, mask = batch
    raises_one_line(r"(?i)valid|-100", AdaKDLoss(LossConfig()), zs, zt, torch.full_like(labels, -100), mask)
    # every label valid but every position masked out is the same: nothing to learn from
    raises_one_line(r"(?i)valid|-100|mask", AdaKDLoss(LossConfig()), zs, zt, labels, torch.zeros_like(mask))


@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits(batch, which, bad):
    zs, zt, labels, mask = (t.clone() for t in batch)
    target = zs if which == "student" else zt
    target[0, 3, 4] = bad  # position (0, 3) is a valid token
    assert labels[0, 3] != -100 and mask[0, 3] == 1
    msg = raises_one_line(r"(?i)finite|nan|inf", AdaKDLoss(LossConfig()), zs, zt, labels, mask)
    assert "rank" in msg.lower(), f"the message should name the rank: {msg}"


@pytest.mark.parametrize("name", ["kl", "skd", "adaptive-focuskd", "rkl2", "forward_kl", ""])
def test_unknown_divergence_name(name):
    msg = raises_one_line(r".", get_divergence, name)
    for choice in ("fkl", "rkl", "jsd", "tvd", "sfkl", "srkl", "ab"):
        assert choice in msg, f"the message should list the choices: {msg}"
    with pytest.raises(ValueError):
        AdaKDLoss(LossConfig(divergence=name))(*ref.make_batch(1, 3, 5, seed=0)[:3])


@pytest.mark.parametrize("name", ["skd", "adaptive-focuskd", "hell", "kl", "cross_entropy", "random2"])
def test_unknown_indicator_name(name):
    zs, zt, labels, _ = ref.make_batch(1, 4, 6, seed=22, prompt_len=0, pad_tail=False)
    with pytest.raises(ValueError):
        token_difficulty(name, zs[0], zt[0], labels[0])
    with pytest.raises(ValueError):
        AdaKDLoss(LossConfig(indicator=name))(zs, zt, labels)


def test_known_names_resolve_exactly():
    """Each registry entry is reachable by its exact value, and only that (no substring or prefix matching)."""
    for d in Divergence:
        assert callable(get_divergence(d.value))
        assert callable(get_divergence(d))
    zs, zt, labels, _ = ref.make_batch(1, 4, 6, seed=23, prompt_len=0, pad_tail=False)
    for i in Indicator:
        if i is not Indicator.RANDOM:
            assert token_difficulty(i, zs[0], zt[0], labels[0]).shape == (4,)
