"""A ZeRO-3 checkpoint resumes on another world size with its optimizer state (adakd_ds.checkpoint.reshard, DeepSpeed's UC).

One chain of three real torchrun runs of tests/workers/reshard_worker.py (fp32, torch AdamW, a per-step lr schedule):
  A: 2 ranks, micro-batch 2: steps 1-6 uninterrupted, checkpoint at step 3  (the reference)
  B: 1 rank, micro-batch 2 x grad_accum 2: loads A's step-3 checkpoint (2 -> 1), runs 4-6, checkpoints at step 4
  C: 2 ranks, micro-batch 2: loads B's step-4 checkpoint (1 -> 2), runs 5-6
Every step sees the same 4 samples in each run. Right after each load the gathered fp32 params, Adam moments, Adam
step and lr must EQUAL those of the saving engine at save time, and the losses after it must agree with run A.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adakd_ds.checkpoint.manager import MARKER, CheckpointError
from adakd_ds.checkpoint.reshard import (
    DONE,
    checkpoint_world_size,
    convert_to_universal,
    is_converted,
    main,
    universal_dir,
)
from tests.engine_fixtures import REPO, run_launch

WORKER = str(REPO / "tests" / "workers" / "reshard_worker.py")
RTOL = 1e-4
TIMEOUT_S = 240


def _run(out: Path, nproc: int, *args: str) -> None:
    res = run_launch(["--out", str(out), *args], launcher="torchrun", nproc=nproc, timeout=TIMEOUT_S, script=WORKER)
    assert res.returncode == 0, f"worker {args} failed (rc {res.returncode}):\n{res.output[-4000:]}"


def _losses(path: Path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def _assert_same_state(saved: dict, loaded: dict, what: str) -> None:
    for key in ("fp32", "exp_avg", "exp_avg_sq"):
        assert saved[key].keys() == loaded[key].keys(), f"{what}: parameter names differ"
        for name, tensor in saved[key].items():
            assert torch.equal(tensor, loaded[key][name]), f"{what}: {key} of {name} differs after loading"
    for key in ("lr", "adam_step", "global_steps"):
        assert saved[key] == loaded[key], f"{what}: {key} {saved[key]} saved, {loaded[key]} after loading"


def _assert_losses_agree(reference: dict[int, float], resumed: dict[int, float], steps: range, what: str) -> None:
    assert sorted(resumed) == list(steps), f"{what}: resumed steps {sorted(resumed)}"
    for step in steps:
        ref, got = reference[step], resumed[step]
        assert abs(got - ref) <= RTOL * abs(ref), f"{what}: step {step} loss {got} vs uninterrupted {ref}"


@pytest.mark.slow
def test_zero3_checkpoint_resumes_across_world_sizes(tmp_path: Path) -> None:
    _run(tmp_path, 2, "--phase", "train", "--micro_batch", "2")
    ckpt3 = tmp_path / "checkpoints" / "step_00000003"
    assert checkpoint_world_size(ckpt3) == 2
    reference = _losses(tmp_path / "losses_train.json")
    assert reference[6] < reference[1], f"the tiny model did not learn: {reference}"
    assert main([str(ckpt3)]) == 0  # converted ahead (the CLI); the 1 -> 2 leg converts inside load_resharded
    assert is_converted(ckpt3) and (universal_dir(ckpt3) / "zero" / "lm_head.weight" / "exp_avg.pt").is_file()

    _run(
        tmp_path,
        1,
        "--phase",
        "resume",
        "--from_step",
        "3",
        "--micro_batch",
        "2",
        "--grad_accum",
        "2",
        "--save_at",
        "4",
        "--tag",
        "w1",
    )
    _assert_same_state(
        torch.load(tmp_path / "state_at_save.pt"), torch.load(tmp_path / "state_after_load_w1.pt"), "2 -> 1"
    )
    _assert_losses_agree(reference, _losses(tmp_path / "losses_resume_w1.json"), range(4, 7), "2 -> 1")
    client = json.loads((tmp_path / "client_state_w1.json").read_text())
    assert client["global_step"] == 3 and client["note"] == "reshard"

    ckpt4 = tmp_path / "checkpoints" / "step_00000004"
    assert checkpoint_world_size(ckpt4) == 1
    assert not is_converted(ckpt4)
    _run(tmp_path, 2, "--phase", "resume", "--from_step", "4", "--micro_batch", "2", "--tag", "w2")
    assert json.loads((universal_dir(ckpt4) / DONE).read_text())["source_world_size"] == 1
    _assert_same_state(
        torch.load(tmp_path / "state_at_save_w1.pt"), torch.load(tmp_path / "state_after_load_w2.pt"), "1 -> 2"
    )
    _assert_losses_agree(reference, _losses(tmp_path / "losses_resume_w2.json"), range(5, 7), "1 -> 2")


def test_checkpoint_world_size_from_marker_or_shards(tmp_path: Path) -> None:
    marked = tmp_path / "step_00000002"
    marked.mkdir()
    (marked / MARKER).write_text(json.dumps({"step": 2, "world_size": 8, "time": 0.0}))
    assert checkpoint_world_size(marked) == 8

    unmarked = tmp_path / "step_00000004"
    unmarked.mkdir()
    for rank in range(3):
        (unmarked / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
        (unmarked / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"")
    assert checkpoint_world_size(unmarked) == 3

    empty = tmp_path / "step_00000006"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="step_00000006"):
        checkpoint_world_size(empty)

    bad = tmp_path / "step_00000008"
    bad.mkdir()
    (bad / MARKER).write_text(json.dumps({"step": 8}))
    with pytest.raises(CheckpointError, match="world_size"):
        checkpoint_world_size(bad)


def test_convert_refuses_incomplete_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tag = tmp_path / "step_00000005"
    tag.mkdir()
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"step_00000005: no {MARKER}"):
        convert_to_universal(tag)
    (tag / MARKER).write_text(json.dumps({"step": 5, "world_size": 2, "time": 0.0}))
    with pytest.raises(CheckpointError, match="step_00000005: 1 ZeRO optimizer shards .* for 2 ranks"):
        convert_to_universal(tag)
    assert main([str(tag)]) == 2
    assert "step_00000005" in capsys.readouterr().err
    assert not is_converted(tag)
