"""End to end on a real local Slurm cluster with the REAL trainer: adakd-submit -> sbatch -> srun -> deepspeed -> 2 ranks.

tests/slurm/test_slurm_cluster.py proves the Slurm plumbing with a stand-in trainer; here the job runs launch/distill.py on
the tiny offline models (2 CPU ranks, gloo, ZeRO-3), so the template, the launcher, the trainer's signal handling,
its checkpoints and its automatic resume are tested together. The reference for the preempted job is an
uninterrupted run of the same config started directly with the deepspeed CLI (no Slurm): the final consolidated
weights and the per-step (loss, r) trajectory must be identical, not close.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.engine_fixtures import TinySetup, read_history, run_env, run_launch, write_run_config
from tests.slurm.slurm_cluster import FINAL_STATES, SlurmCluster, slurm_cluster_fixture  # noqa: F401  (`slurm_cluster`)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one local cluster at a time

REPO = Path(__file__).resolve().parents[2]
_CONSOLE_SCRIPT = Path(sys.executable).parent / "adakd-submit"
SUBMIT = [str(_CONSOLE_SCRIPT)] if _CONSOLE_SCRIPT.exists() else [sys.executable, str(REPO / "launch" / "submit.py")]
LONG_STEPS = 40  # ~0.2 s a step on 2 busy cores: the USR1 sent after step 2 lands well before the end


def _tail(log: Path, lines: int = 80) -> str:
    """The end of the job log, for assertion messages (progress bars are split on their carriage returns)."""
    if not log.exists():
        return f"(no job log at {log})"
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return f"--- last {min(lines, len(text))} lines of {log} ---\n" + "\n".join(text[-lines:])


def _submit(cluster: SlurmCluster, cfg: Path, job_name: str, cwd: Path, *overrides: str) -> tuple[int, Path]:
    """adakd-submit as a user runs it (1 node x 2 CPU ranks, deepspeed launcher); returns the job id and its log."""
    cmd = [*SUBMIT, "--config", str(cfg), "--nodes", "1", "--gpus-per-node", "2", "--accelerator", "cpu"]
    cmd += ["--launcher", "deepspeed", "--time", "10:00", "--signal-seconds", "0", "--job-name", job_name]
    if overrides:
        cmd += ["--", *overrides]
    # sbatch exports this environment to the job: offline HF, one thread per rank, the private cluster's SLURM_CONF
    env = run_env({"SLURM_CONF": str(cluster.conf)})
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    submitted = re.search(r"^Submitted batch job (\d+)$", proc.stdout, re.M)
    log = re.search(r"^log:\s+(\S+)$", proc.stdout, re.M)
    assert submitted and log, proc.stdout
    return int(submitted.group(1)), Path(log.group(1))


@contextlib.contextmanager
def _cancelled_on_exit(cluster: SlurmCluster, job_id: int) -> Iterator[None]:
    """A failing test must not leave its job training on the shared cores (scancel of a finished job is a no-op)."""
    try:
        yield
    finally:
        cluster.run("scancel", str(job_id), check=False)


def _wait_job(cluster: SlurmCluster, job_id: int, log: Path, states: set[str], timeout: float) -> dict[str, str]:
    try:
        return cluster.wait_job(job_id, states, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_tail(log)}") from None


def _wait_for_steps(cluster: SlurmCluster, job_id: int, out: Path, log: Path, n: int, timeout: float) -> None:
    """Until history.jsonl holds n complete lines (rank 0 appends one per optimizer step)."""
    history = out / "history.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file() and history.read_text(encoding="utf-8").count("\n") >= n:
            return
        state = cluster.job(job_id).get("JobState", "?")
        if state in FINAL_STATES:
            raise AssertionError(f"job {job_id} ended {state} before step {n}\n{_tail(log)}")
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: fewer than {n} steps in {history} after {timeout}s\n{_tail(log)}")


def _trajectory(out: Path) -> list[tuple[int, float, float]]:
    """The deterministic part of history.jsonl (the timing fields differ between runs)."""
    return [(int(h["step"]), h["loss"], h["ratio"]) for h in read_history(out)]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "export" / "model.safetensors"))


def _train(max_steps: int) -> dict[str, float | int]:
    return {"max_steps": max_steps, "micro_batch": 4, "lr": 1e-2}


def test_adakd_submit_runs_the_real_trainer_on_two_ranks(
    slurm_cluster: SlurmCluster, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """The job completes with a checkpoint of both ranks' shards, TensorBoard events and the consolidated export."""
    out = tmp_path / "run"
    cfg = write_run_config(tiny_setup, out, train=_train(6), output={"save_interval": 0})
    # max_steps 6 in the file, 3 after the trainer override passed through adakd-submit, sbatch and the launcher
    job_id, log = _submit(slurm_cluster, cfg, "e2e", tmp_path, "--train.max_steps", "3")
    assert log == out / "slurm" / f"e2e-{job_id}.out"
    with _cancelled_on_exit(slurm_cluster, job_id):
        info = _wait_job(slurm_cluster, job_id, log, {"COMPLETED"}, timeout=300)
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0", context
    assert f"adakd: job {job_id} restart 0 on 1 node(s) x 2, " in text and "launcher deepspeed" in text, context
    assert "adakd: finished" in text, context

    # Two ranks ran: deepspeed's launcher spawned local ranks 0 and 1 of a world of 2, and both exited 0.
    assert "dist_world_size=2" in text, context
    for rank in (0, 1):
        assert re.search(
            rf"spawned with command: \[.*'--local_rank={rank}', '--config', '{re.escape(str(cfg))}'", text
        ), context
    assert len(re.findall(r"Process \d+ exits successfully", text)) == 2, context

    assert (out / "history.jsonl").is_file(), context
    assert [step for step, _, _ in _trajectory(out)] == [1, 2, 3], context
    ckpt = out / "checkpoints" / "step_00000003"
    assert (ckpt / "COMPLETE.json").is_file(), f"no complete checkpoint {ckpt}\n{context}"
    marker = json.loads((ckpt / "COMPLETE.json").read_text())
    assert marker["step"] == 3 and marker["world_size"] == 2, marker
    shards = sorted(p.name for p in ckpt.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)], shards

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {out / 'tensorboard'}\n{context}"
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3], context

    from transformers import AutoConfig, AutoModelForCausalLM

    export = out / "export"
    assert (export / "model.safetensors").is_file() and (export / "config.json").is_file(), context
    model = AutoModelForCausalLM.from_pretrained(str(export))
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tiny_setup.student_config)))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}


def test_usr1_preemption_requeues_resumes_and_matches_an_uninterrupted_run(
    slurm_cluster: SlurmCluster, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """scancel --signal=USR1 --batch -> trap -> srun -> both ranks save and exit 75 -> requeue -> resume -> done."""
    reference = tmp_path / "reference"
    ref_cfg = write_run_config(tiny_setup, reference, train=_train(LONG_STEPS), output={"save_interval": 0})
    ref = run_launch(["--config", str(ref_cfg)], launcher="deepspeed", nproc=2, timeout=300)  # no Slurm, before it
    assert ref.returncode == 0, ref.output[-4000:]

    out = tmp_path / "preempted"
    cfg = write_run_config(tiny_setup, out, train=_train(LONG_STEPS), output={"save_interval": 0})
    job_id, log = _submit(slurm_cluster, cfg, "preempt", tmp_path)
    with _cancelled_on_exit(slurm_cluster, job_id):
        _wait_for_steps(slurm_cluster, job_id, out, log, 2, timeout=240)
        slurm_cluster.run("scancel", "--signal=USR1", "--batch", str(job_id))
        info = _wait_job(slurm_cluster, job_id, log, {"COMPLETED"}, timeout=400)
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", context

    # The signal path, in the order the log shows it: trap, the ranks' agreed stop, exit 75, requeue, resume.
    steps = [json.loads(m.read_text())["step"] for m in sorted((out / "checkpoints").glob("step_*/COMPLETE.json"))]
    assert len(steps) == 2 and steps[-1] == LONG_STEPS, f"complete checkpoints at steps {steps}\n{context}"
    stopped = steps[0]
    assert 2 <= stopped < LONG_STEPS, f"stopped at step {stopped}: the signal did not land mid-run\n{context}"
    expected = [
        f"adakd: job {job_id} restart 0 ",
        "adakd: stop signal received",
        "preemption requested (SIGUSR1): saving",  # rank 0 got the signal itself, not only via the other rank
        f"adakd: preempted (exit code 75); requeueing job {job_id}",
        f"adakd: job {job_id} restart 1 ",  # the rerun sees SLURM_RESTART_COUNT=1
        f"step_{stopped:08d} at step {stopped}",  # "resumed from <out>/checkpoints/step_... at step N"
        "adakd: finished",
    ]
    positions = [text.find(s) for s in expected]
    missing = [s for s, p in zip(expected, positions, strict=True) if p < 0]
    assert not missing, f"not in the job log: {missing}\n{context}"
    assert positions == sorted(positions), f"out of order: {list(zip(expected, positions, strict=True))}\n{context}"
    assert re.search(rf"resumed from \S*step_{stopped:08d} at step {stopped}", text), context

    # Same result as never stopping: every step once, bit-identical (loss, r), bit-identical final weights.
    got, want = _trajectory(out), _trajectory(reference)
    assert [s for s, _, _ in got] == list(range(1, LONG_STEPS + 1)), context
    assert got == want, context
    assert (out / "export" / "model.safetensors").is_file(), context
    ref_w, got_w = _weights(reference), _weights(out)
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], got_w[name]), f"{name} differs from the uninterrupted run\n{context}"
