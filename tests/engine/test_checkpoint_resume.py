"""Checkpoints that never lose work, on real 2-rank ZeRO-3 runs: exact resume, crashes, preemption, bad input.

The reference for every resume is the uninterrupted run of the same config: per-step losses, the r trajectory and
the final consolidated weights must be IDENTICAL, not close.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.engine_fixtures import (
    build_tiny_setup,
    kill_group,
    read_history,
    start_launch,
    trajectory,
    write_run_config,
)

# one worker for the whole module: its module-scoped reference runs are then made once, not once per worker
pytestmark = pytest.mark.xdist_group("checkpoint_resume")

STEPS = 8  # 32 records / (2 ranks x micro 4) = 4 optimizer steps per epoch: the run spans 2 epochs


@pytest.fixture(scope="module")
def ckpt_setup(tmp_path_factory):
    return build_tiny_setup(tmp_path_factory.mktemp("ckpt"), n_records=32)


def _config(setup, out: Path, dtype: str = "fp32", fused_head: str = "true", **sections) -> Path:
    train = {"max_steps": STEPS, "micro_batch": 4, "lr": 1e-2, "dtype": dtype, **sections.pop("train", {})}
    loss = {"fused_head": fused_head, **sections.pop("loss", {})}
    return write_run_config(setup, out, train=train, loss=loss, **sections)


def _run(cfg: Path, *extra: str, env: dict[str, str] | None = None, launcher: str = "torchrun", nproc: int = 2):
    from tests.engine_fixtures import run_launch

    return run_launch(["--config", str(cfg), *extra], launcher=launcher, nproc=nproc, env=env, timeout=240)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "export" / "model.safetensors"))


def _assert_identical_runs(reference: Path, resumed: Path) -> None:
    ref_hist, got_hist = read_history(reference), read_history(resumed)
    assert [h["step"] for h in got_hist] == list(range(1, STEPS + 1))
    assert trajectory(got_hist) == trajectory(ref_hist)  # losses and r, bit for bit (JSON keeps every digit)
    ref_w, got_w = _weights(reference), _weights(resumed)
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], got_w[name]), name


@pytest.fixture(scope="module")
def reference_runs(ckpt_setup, tmp_path_factory):
    """Uninterrupted runs, one per dtype (fused head), and fp32 unfused, computed once for the module."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for dtype, fused in (("fp32", "true"), ("bf16", "true"), ("fp32", "false")):
        out = root / f"{dtype}-{fused}"
        res = _run(_config(ckpt_setup, out, dtype, fused, output={"save_interval": 2}))
        assert res.returncode == 0, res.output[-4000:]
        runs[dtype if fused == "true" else f"{dtype}-unfused"] = out
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,stop_at,fused_head",
    [("fp32", 4, "true"), ("fp32", 3, "true"), ("bf16", 3, "true"), ("fp32", 3, "false")],
    ids=["fp32-at-epoch-boundary", "fp32-crossing-epoch", "bf16-crossing-epoch", "fp32-unfused-crossing-epoch"],
)
def test_bit_exact_resume(ckpt_setup, reference_runs, tmp_path, dtype, stop_at, fused_head):
    out = tmp_path / "run"
    cfg = _config(ckpt_setup, out, dtype, fused_head, output={"save_interval": 2})
    first = _run(cfg, env={"ADAKD_PREEMPT_AT_STEP": str(stop_at)})
    assert first.returncode != 0, "a preempted run must not report success"
    assert [h["step"] for h in read_history(out)] == list(range(1, stop_at + 1))
    assert (out / "checkpoints" / f"step_{stop_at:08d}" / "COMPLETE.json").is_file()
    second = _run(cfg)  # --resume auto is the default
    assert second.returncode == 0, second.output[-4000:]
    assert "resumed from" in second.output and f"step {stop_at}" in second.output
    _assert_identical_runs(reference_runs[dtype if fused_head == "true" else f"{dtype}-unfused"], out)


@pytest.mark.slow
def test_crash_halfway_through_a_save_resumes_from_the_previous_complete_one(ckpt_setup, reference_runs, tmp_path):
    out = tmp_path / "crash"
    cfg = _config(ckpt_setup, out, output={"save_interval": 2})
    crashed = _run(cfg, env={"ADAKD_FAULT": "save_kill:1:6", "ADAKD_DIST_TIMEOUT": "20"})
    assert crashed.returncode != 0
    ckpts = out / "checkpoints"
    assert (ckpts / "step_00000004" / "COMPLETE.json").is_file()
    assert (ckpts / "step_00000006").is_dir() and not (ckpts / "step_00000006" / "COMPLETE.json").exists()
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    resumed = _run(cfg)
    assert resumed.returncode == 0, resumed.output[-4000:]
    assert "ignoring partial checkpoint" in resumed.output
    hist = read_history(out)  # steps 5 and 6 ran twice (before the crash, after the resume) but are logged once
    assert [h["step"] for h in hist] == list(range(1, STEPS + 1))
    assert trajectory(hist) == trajectory(read_history(reference_runs["fp32"]))
    ref_w, got_w = _weights(reference_runs["fp32"]), _weights(out)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                env = child.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if env.get("RANK") == str(rank) and "distill.py" in " ".join(child.cmdline()):
                return child.pid
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started")


def _wait_for_steps(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "history.jsonl").is_file() and len(read_history(out)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} steps after {timeout}s")


def _start(cfg: Path, launcher: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return start_launch(["--config", str(cfg)], launcher, 2, env)


@pytest.mark.slow
def test_sigusr1_to_one_rank_checkpoints_both_and_resumes_to_the_same_weights(ckpt_setup, tmp_path):
    long = {"max_steps": 24}
    reference = tmp_path / "uninterrupted"
    ref = _run(_config(ckpt_setup, reference, train=long, output={"save_interval": 0}))
    assert ref.returncode == 0, ref.output[-3000:]

    out = tmp_path / "preempted"
    cfg = _config(ckpt_setup, out, train=long, output={"save_interval": 0})
    proc = _start(cfg, "deepspeed")
    try:
        _wait_for_steps(out, 2, proc)
        os.kill(_rank_pid(proc, 1), signal.SIGUSR1)
        output, _ = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 75, output[-3000:]  # EXIT_PREEMPTED, passed on by the deepspeed launcher
    complete = sorted((out / "checkpoints").glob("step_*/COMPLETE.json"))
    assert len(complete) == 1
    stopped_at = json.loads(complete[0].read_text())["step"]
    assert 2 <= stopped_at < 24
    resumed = _run(cfg)
    assert resumed.returncode == 0, resumed.output[-3000:]
    ref_w, got_w = _weights(reference), _weights(out)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


@pytest.mark.slow
def test_sigkill_of_one_rank_fails_fast_and_the_next_run_resumes(ckpt_setup, tmp_path):
    out = tmp_path / "killed"
    cfg = _config(ckpt_setup, out, train={"max_steps": 24}, output={"save_interval": 2})
    proc = _start(cfg, "torchrun", env={"ADAKD_DIST_TIMEOUT": "20"})
    try:
        _wait_for_steps(out, 3, proc)
        os.kill(_rank_pid(proc, 1), signal.SIGKILL)
        t0 = time.time()
        proc.communicate(timeout=90)
        waited = time.time() - t0
    finally:
        kill_group(proc)
    assert proc.returncode != 0
    assert waited < 60, f"the job took {waited:.0f}s to notice a dead rank"
    resumed = _run(cfg)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert read_history(out)[-1]["step"] == 24


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank_with_grad_accumulation(ckpt_setup, tmp_path):
    """Same global batch (2 x 4 x 1 = 1 x 4 x 2): the optimizer state is re-sharded, the data position carries over.

    Base rkl: with AdaKD the top-r selection is taken per micro-step, so another micro-batch split is another
    (equally valid) selection and no longer the same numbers.
    """
    import shutil

    loss = {"adakd": False}
    reference = tmp_path / "two_ranks"
    ref = _run(_config(ckpt_setup, reference, loss=loss, output={"save_interval": 4}))
    assert ref.returncode == 0, ref.output[-3000:]
    out = tmp_path / "one_rank"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step_00000004", out / "checkpoints" / "step_00000004")
    cfg = _config(ckpt_setup, out, loss=loss, train={"micro_batch": 4, "grad_accum": 2})
    res = _run(cfg, nproc=1)
    assert res.returncode == 0, res.output[-3000:]
    assert "re-sharding" in res.output
    ref_hist, got_hist = read_history(reference), read_history(out)
    assert [h["step"] for h in got_hist] == [5, 6, 7, 8]
    for got in got_hist:
        assert got["loss"] == pytest.approx(ref_hist[got["step"] - 1]["loss"], rel=1e-4), got


# ----------------------------------------------------------------------------------------------------- bad input
def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "adakd-distill: error:" in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def test_resume_from_a_missing_directory(ckpt_setup, tmp_path):
    res = _run(_config(ckpt_setup, tmp_path / "r"), "--resume", str(tmp_path / "nope"), launcher="python", nproc=1)
    assert res.returncode == 2
    assert "no such checkpoint directory" in _one_error_line(res.output)


def test_resume_from_a_partial_checkpoint_only(ckpt_setup, tmp_path):
    partial = tmp_path / "r" / "checkpoints" / "step_00000002"
    partial.mkdir(parents=True)
    (partial / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"half")
    res = _run(_config(ckpt_setup, tmp_path / "r"), "--resume", str(partial), launcher="python", nproc=1)
    assert res.returncode == 2
    assert "partial checkpoint" in _one_error_line(res.output)
    assert (partial / "zero_pp_rank_0_mp_rank_00_model_states.pt").read_bytes() == b"half"  # nothing deleted


def test_unwritable_output_dir(ckpt_setup, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = _run(_config(ckpt_setup, tmp_path / "ok"), "--output.dir", str(blocker / "out"), launcher="python", nproc=1)
    assert res.returncode == 2
    assert str(blocker / "out") in _one_error_line(res.output)


@pytest.mark.slow
def test_changed_model_needs_resume_force(ckpt_setup, reference_runs, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from tests.engine_fixtures import tiny_llama_config

    out = tmp_path / "changed"
    shutil.copytree(reference_runs["fp32"], out)
    other = tmp_path / "other_teacher"
    AutoModelForCausalLM.from_config(tiny_llama_config(200, 64, 2)).save_pretrained(other)
    cfg = _config(ckpt_setup, out, model={"teacher": str(other)}, train={"max_steps": STEPS + 1})
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    res = _run(cfg, launcher="python", nproc=1)
    assert res.returncode == 2
    line = _one_error_line(res.output)
    assert "model.teacher" in line and "--resume_force" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing already saved is lost
