"""The NaN guard (issue 13, item 6): non-finite steps are skipped with no optimizer update, counted and logged;
`train.max_bad_steps` in a row abort with one line naming the step, the ranks and the model; a checkpoint of
non-finite weights is never written. The drills run real 2-rank ZeRO-3 jobs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from adakd_ds.config.schema import LossConfig
from adakd_ds.engine.guard.nan_guard import NanGuard, NonFiniteAbort
from adakd_ds.loss.adakd_loss import AdaKDLoss
from tests.engine_fixtures import read_history, run_launch, write_run_config


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_guarded_loss_names_the_model_and_returns_a_nan_loss_on_the_student_graph():
    loss_fn = AdaKDLoss(LossConfig(), total_steps=10)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    for model in ("teacher", "student"):
        guard = NanGuard(max_bad_steps=3)
        student, teacher = _logits(1).requires_grad_(), _logits(2)
        if model == "teacher":
            teacher[0, 1, 3] = math.inf
            loss, stats = guard.guarded_loss(loss_fn, 7, student, teacher, labels)
        else:
            bad = student + torch.nn.functional.pad(torch.full((1, 1, 1), math.nan), (3, 7, 1, 3, 0, 1))
            loss, stats = guard.guarded_loss(loss_fn, 7, bad, teacher, labels)
        assert stats is None and math.isnan(float(loss.detach()))
        loss.backward()
        assert torch.isnan(student.grad).all()  # every gradient non-finite: DeepSpeed's norm check skips the update
        line = guard.end_step(7, math.inf, [stats])
        assert (
            line == f"step 7: non-finite logits from the {model} on rank(s) [0]: skipped, no optimizer update "
            "(1 in a row, 1 in all)"
        )
    good, stats = NanGuard(3).guarded_loss(loss_fn, 1, _logits(1), _logits(2), labels)
    assert math.isfinite(float(good)) and stats is not None


def test_consecutive_bad_steps_abort_and_a_good_step_resets_the_count():
    guard = NanGuard(max_bad_steps=3)
    assert guard.end_step(1, 0.5, [object()]) is None
    assert guard.end_step(1, None, [object()]) is None  # an optimizer that reports no norm: the loss decides
    assert "1 in a row, 1 in all" in guard.end_step(2, math.nan, [object()])
    assert "2 in a row, 2 in all" in guard.end_step(3, math.inf, [object()])
    assert guard.end_step(4, 0.7, [object()]) is None
    assert "1 in a row, 3 in all" in guard.end_step(5, 1.0, [None])
    guard.end_step(6, math.inf, [object()])
    with pytest.raises(NonFiniteAbort, match=r"^step 7: non-finite gradient norm \(inf\); 3 consecutive"):
        guard.end_step(7, math.inf, [object()])


# ------------------------------------------------------------------------------------------------ real 2-rank drills
def _fp32(out: Path, step: int, rank: int) -> list[torch.Tensor]:
    """A rank's fp32 master weights in the checkpoint of `step`."""
    path = out / "checkpoints" / f"step_{step:08d}" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
    return torch.load(path, weights_only=False)["optimizer_state_dict"]["fp32_flat_groups"]


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output[-3000:]
    return [line for line in output.splitlines() if "adakd-distill: error:" in line]


@pytest.mark.slow
@pytest.mark.faults
def test_an_inf_teacher_weight_skips_steps_then_aborts_naming_step_ranks_and_teacher(tiny_setup, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = tmp_path / "inf_teacher"
    model = AutoModelForCausalLM.from_pretrained(tiny_setup.teacher)
    with torch.no_grad():
        model.lm_head.weight[5] = math.inf
    model.save_pretrained(teacher)
    for name in Path(tiny_setup.teacher).glob("tokenizer*"):
        shutil.copy(name, teacher / name.name)
    out = tmp_path / "run"
    cfg = write_run_config(
        tiny_setup,
        out,
        model={"teacher": str(teacher)},
        train={"max_steps": 8, "max_bad_steps": 3},
        output={"save_interval": 1},
    )
    res = run_launch(["--config", str(cfg)], launcher="deepspeed", timeout=240)
    assert res.returncode == 1, res.output[-3000:]
    lines = _error_lines(res.output)
    assert len(lines) == 1, res.output[-3000:]
    assert "step 3: non-finite logits from the teacher on rank(s) [0, 1]; 3 consecutive non-finite steps" in lines[0]
    assert [(h["step"], h.get("skipped")) for h in read_history(out)] == [(1, True), (2, True)]
    # the skipped steps changed nothing: their checkpoints hold the same (finite) weights, the last good state
    for rank in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(_fp32(out, 1, rank), _fp32(out, 2, rank), strict=True))


@pytest.mark.slow
@pytest.mark.faults
def test_one_nan_step_is_skipped_without_an_update_and_training_goes_on(tiny_setup, tmp_path):
    out = tmp_path / "run"
    cfg = write_run_config(tiny_setup, out, train={"max_steps": 5}, output={"save_interval": 1, "keep_last": 10})
    res = run_launch(["--config", str(cfg)], env={"ADAKD_NAN_AT": "student:3:1"}, timeout=240)
    assert res.returncode == 0, res.output[-3000:]
    assert "step 3: non-finite logits from the student on rank(s) [1]: skipped, no optimizer update" in res.output
    hist = read_history(out)
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5] and hist[2].get("skipped") is True
    assert all(math.isfinite(h["loss"]) for h in hist if not h.get("skipped"))
    # the reference for "no update": the fp32 master weights and the Adam moments of step 3 equal those of step 2
    for rank in (0, 1):
        flat = [_fp32(out, step, rank) for step in (2, 3, 4)]
        assert all(torch.equal(a, b) for a, b in zip(flat[0], flat[1], strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(flat[1], flat[2], strict=True))  # step 4 did update
    # DeepSpeed does not step the lr schedule on a skipped step: the lr after step 3 is still the one after step 2
    assert hist[2]["lr"] == hist[1]["lr"] and hist[3]["lr"] != hist[2]["lr"]


@pytest.mark.slow
@pytest.mark.faults
def test_non_finite_weights_are_never_checkpointed(tiny_setup, tmp_path):
    out = tmp_path / "run"
    cfg = write_run_config(tiny_setup, out, train={"max_steps": 4}, output={"save_interval": 1})
    # an inf put into rank 1's weight partition after step 2 (no real lr overflows fp32 Adam: torch refuses the lr)
    res = run_launch(["--config", str(cfg)], launcher="deepspeed", env={"ADAKD_NAN_AT": "weights:2:1"}, timeout=240)
    assert res.returncode == 1, res.output[-3000:]
    lines = _error_lines(res.output)
    assert len(lines) == 1 and "step 2: the student's weights are not finite on rank(s) [1]" in lines[0], lines
    assert [p.parent.name for p in out.glob("checkpoints/*/COMPLETE.json")] == ["step_00000001"]
    assert not (out / "checkpoints" / "step_00000002").exists()
