"""On a real local Slurm cluster: srun wiring for torch.distributed, and preempt -> checkpoint -> requeue -> resume.

The trainer here is a stand-in that keeps the trainer's contract (SIGUSR1/SIGTERM: save, exit 75; restarted: resume,
exit 0) without a model, so these tests prove the Slurm side; the real-trainer end-to-end test reuses the fixture
and render_sbatch with the default launch/distill.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from adakd_ds.slurm.render import Accelerator, Launcher, SlurmJob, render_sbatch
from adakd_ds.slurm.submit import submit_main
from tests.slurm.slurm_cluster import SlurmCluster, slurm_cluster_fixture  # noqa: F401  (provides `slurm_cluster`)

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one local cluster at a time

GLOO_CHECK = """
import os, torch, torch.distributed as dist
rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
t = torch.tensor([float(rank + 1)], dtype=torch.float64)
dist.all_reduce(t)
with open(os.path.join(os.environ["OUT"], f"rank{rank}"), "w") as fh:
    fh.write(f"{t.item()} {os.environ['MASTER_ADDR']} {os.environ['SLURM_LOCALID']}")
dist.destroy_process_group()
"""

# The trainer contract in miniature; every rank records what it saw under DUMMY_OUT.
DUMMY_TRAINER = """
import os, signal, sys, time
out, rank = os.environ["DUMMY_OUT"], os.environ["RANK"]
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
def mark(name, text=""):
    with open(os.path.join(out, f"{name}.rank{rank}"), "a") as fh:
        fh.write(text + "\\n")
mark("start", f"restart={restart} args={' '.join(sys.argv[1:])}")
ckpt = os.path.join(out, f"ckpt.rank{rank}")
if restart >= 1 and os.path.exists(ckpt):
    mark("resumed", open(ckpt).read())
    sys.exit(0)
stop = []
signal.signal(signal.SIGUSR1, lambda s, f: stop.append(s))
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
mark("ready")
step = 0
while not stop and step < 1200:  # a step boundary every 50 ms; gives up after a minute
    time.sleep(0.05)
    step += 1
with open(ckpt + ".tmp", "w") as fh:
    fh.write(f"step={step} signal={signal.Signals(stop[0]).name if stop else 'none'}")
os.replace(ckpt + ".tmp", ckpt)
sys.exit(75)
"""


def _wait_files(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise AssertionError(f"never appeared: {[str(p) for p in paths if not p.exists()]}")
        time.sleep(0.1)


def test_gloo_all_reduce_between_two_srun_tasks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "gloo_check.py").write_text(GLOO_CHECK)
    script = tmp_path / "gloo.sbatch"
    script.write_text(
        f"""#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --output={tmp_path}/gloo-%j.out
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000)) OUT={tmp_path} OMP_NUM_THREADS=1
srun {sys.executable} {tmp_path}/gloo_check.py
"""
    )
    job_id = slurm_cluster.sbatch(script)
    info = slurm_cluster.wait_job(job_id, {"COMPLETED"}, timeout=90)
    assert info["ExitCode"] == "0:0"
    results = sorted((tmp_path / f"rank{r}").read_text().split() for r in range(2))
    # 1 + 2 summed across the two srun tasks; both rendezvoused at the first (only) hostname
    assert results == [["3.0", slurm_cluster.node, "0"], ["3.0", slurm_cluster.node, "1"]]


def test_preempt_checkpoint_requeue_resume(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """USR1 to the batch shell -> trap -> srun -> both deepspeed-launched ranks save, exit 75 -> requeue -> resume."""
    trainer, out, cfg = tmp_path / "dummy_trainer.py", tmp_path / "out", tmp_path / "run.yaml"
    trainer.write_text(DUMMY_TRAINER)
    out.mkdir()
    cfg.write_text("mode: sft\n")
    job = SlurmJob(
        config=str(cfg), nodes=1, gpus_per_node=2, accelerator=Accelerator.CPU, launcher=Launcher.DEEPSPEED,
        script=str(trainer), log_dir=str(tmp_path), time="5:00", signal_seconds=0, job_name="preempt",
        overrides=["--train.lr", "1e-5"], env={"DUMMY_OUT": str(out)}, venv=sys.prefix,
    )  # fmt: skip
    script = tmp_path / "preempt.sbatch"
    script.write_text(render_sbatch(job))
    job_id = slurm_cluster.sbatch(script)
    log = tmp_path / f"preempt-{job_id}.out"
    try:
        _wait_files([out / "ready.rank0", out / "ready.rank1"], timeout=60)
    except AssertionError:
        raise AssertionError(f"ranks never got ready; log:\n{log.read_text() if log.exists() else '(none)'}") from None
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", str(job_id))
    _wait_files([out / "ckpt.rank0", out / "ckpt.rank1"], timeout=30)
    info = slurm_cluster.wait_job(job_id, {"COMPLETED"}, timeout=90)
    text = log.read_text()
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", text
    for rank in range(2):
        assert (out / f"ckpt.rank{rank}").read_text().endswith("signal=SIGUSR1")  # the ranks saw USR1, not a kill
        starts = (out / f"start.rank{rank}").read_text().splitlines()
        assert starts == [f"restart={n} args=--local_rank={rank} --config {cfg} --train.lr 1e-5" for n in (0, 1)]
        assert (out / f"resumed.rank{rank}").read_text().startswith("step=")
    assert "stop signal received" in text and "preempted (exit code 75); requeueing" in text
    assert text.count(f"adakd: job {job_id} restart") == 2 and "adakd: finished" in text  # both runs, one log


def test_failure_is_not_requeued(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A crash (not 75, no stop request) must end the job FAILED with its code, not loop through requeues."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("mode: sft\n")
    job = SlurmJob(
        config=str(cfg), gpus_per_node=1, accelerator=Accelerator.CPU, launcher=Launcher.COMMAND,
        command='echo "node $SLURM_NODEID of $NNODES at $MASTER_ADDR:$MASTER_PORT args $*"; exit 3',
        log_dir=str(tmp_path), time="2:00", signal_seconds=0, job_name="crash", overrides=["--x.y", "1"],
    )  # fmt: skip
    script = tmp_path / "crash.sbatch"
    script.write_text(render_sbatch(job))
    job_id = slurm_cluster.sbatch(script)
    info = slurm_cluster.wait_job(job_id, {"FAILED"}, timeout=60)
    text = (tmp_path / f"crash-{job_id}.out").read_text()
    assert info["ExitCode"] == "3:0" and info["Restarts"] == "0", text
    port = 20000 + job_id % 20000
    assert f"node 0 of 1 at {slurm_cluster.node}:{port} args --x.y 1" in text
    assert "not requeueing" in text


def test_submit_cli_submits(slurm_cluster: SlurmCluster, tmp_path: Path, capsys, monkeypatch) -> None:
    """adakd-submit writes the script under <output.dir>/slurm and sbatch accepts it (held, so it never runs)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"mode: sft\nmodel: {{student_config: x}}\ndata: {{source: d.jsonl}}\noutput: {{dir: {tmp_path}/run}}\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    argv = ["--config", str(cfg), "--nodes", "1", "--gpus-per-node", "2", "--accelerator", "cpu", "--time", "3:00"]
    argv += ["--signal-seconds", "60"]  # must stay below --time
    assert submit_main([*argv, "--job-name", "held", "--sbatch-arg=--hold"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Submitted batch job ")
    job_id = int(lines[0].split()[-1])
    try:
        info = slurm_cluster.job(job_id)
        (written,) = (tmp_path / "run" / "slurm").glob("held-*.sbatch")
        assert (info["JobName"], info["JobState"], info["Command"]) == ("held", "PENDING", str(written))
        assert info["Requeue"] == "1" and info["TimeLimit"] == "00:03:00"
        assert info["StdOut"] == f"{tmp_path}/run/slurm/held-{job_id}.out"
    finally:
        slurm_cluster.run("scancel", str(job_id), check=False)
