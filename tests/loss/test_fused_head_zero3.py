"""The fused head under real ZeRO-3 on 2 gloo ranks: its gradient reaches DeepSpeed's partitioned gradients.

The worker (tests/workers/fused_zero3_worker.py) runs each rank's half of a fixed batch through ZeRO-3 teacher and
student engines, unfused and fused, with a tied and an untied student head, and reads every parameter's full
gradient back from the partitions. The reference is independent: the same models loaded plainly in float64, the whole
batch in one process, unfused. DeepSpeed averages over ranks, so the averaged gradient must equal it.
"""

from __future__ import annotations

import pytest
import torch

from adakd_ds.loss.adakd_loss import AdaKDLoss
from tests.engine_fixtures import REPO, run_launch
from tests.workers.fused_zero3_common import RATIO, batch, loss_config, save_models

WORKER = str(REPO / "tests" / "workers" / "fused_zero3_worker.py")


@pytest.fixture(scope="module")
def zero3_results(tmp_path_factory):
    work = tmp_path_factory.mktemp("fused_zero3")
    save_models(work)
    res = run_launch(["--work", str(work)], launcher="torchrun", nproc=2, script=WORKER, timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    return work, torch.load(work / "zero3_results.pt")


def _reference(work, case: str):
    """Plain float64, one process, the whole batch, unfused: loss, selection and every parameter's gradient."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float64)
    student = AutoModelForCausalLM.from_pretrained(work / f"student_{case}", dtype=torch.float64)
    ids, mask, targets = batch()
    loss_fn = AdaKDLoss(loss_config(), total_steps=10)
    loss_fn.controller.ratio = RATIO
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits
    loss, stats = loss_fn(student(input_ids=ids, attention_mask=mask).logits, t_logits, targets, attention_mask=mask)
    loss.backward()
    return stats, {n: p.grad for n, p in student.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["tied", "untied"])
def test_fused_zero3_gradients_equal_the_single_process_reference(zero3_results, case):
    work, results = zero3_results
    ref_stats, ref_grads = _reference(work, case)
    unfused, fused = results[(case, False)], results[(case, True)]
    for got in (unfused, fused):
        assert got["loss"] == pytest.approx(ref_stats.loss, rel=1e-5)
        assert torch.equal(got["selected"], ref_stats.selected)
        torch.testing.assert_close(got["taus"].double(), ref_stats.taus.double(), rtol=1e-5, atol=1e-6)
        assert got["grads"].keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(got["grads"][name].double(), g, rtol=1e-4, atol=1e-6, msg=name)
    # fused and unfused under ZeRO-3 agree more tightly than either does with the float64 reference
    for name in ref_grads:
        torch.testing.assert_close(fused["grads"][name], unfused["grads"][name], rtol=1e-5, atol=1e-7, msg=name)
    if case == "tied":
        assert "lm_head.weight" not in ref_grads  # one parameter: the embedding carries the head's gradient too
