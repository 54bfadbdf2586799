"""Jobs that span two nodes (network namespaces, tests/slurm/netns_cluster.py), through adakd-submit and the real
slurm/distill.sbatch, with the real trainer (tiny models, 2 nodes x 1 CPU rank, gloo between the namespaces).

The reference for everything is the same job on 1 node x 2 ranks (same global batch), run once per module on the
same cluster: every two-node run, however it was stopped, requeued, killed or resumed, must end with its per-step
(loss, r) history and its final weights bit-identical to it.
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

import psutil
import pytest
import torch

from adakd_ds.engine.guard.launcher_watch import launcher_kind
from tests.engine_fixtures import TinySetup, read_history, run_env, write_run_config
from tests.slurm.netns_cluster import NODE_IFNAME, TwoNodeCluster, two_node_cluster_fixture  # noqa: F401
from tests.slurm.slurm_cluster import FINAL_STATES

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

REPO = Path(__file__).resolve().parents[2]
_CONSOLE_SCRIPT = Path(sys.executable).parent / "adakd-submit"
SUBMIT = [str(_CONSOLE_SCRIPT)] if _CONSOLE_SCRIPT.exists() else [sys.executable, str(REPO / "launch" / "submit.py")]
STEPS = 60  # ~0.06 s a step: a signal sent after step 2 (it takes about a second to land) comes well before the end
LOST_WITHIN_S = 15.0  # the survivor's line must come this soon after the kill (the collective timeout is 1800 s)


def _tail(log: Path, lines: int = 60) -> str:
    if not log.exists():
        return f"(no job log at {log})"
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return f"--- last {min(lines, len(text))} lines of {log} ---\n" + "\n".join(text[-lines:])


def _config(setup: TinySetup, out: Path, save_interval: int = 0) -> Path:
    train = {"max_steps": STEPS, "micro_batch": 4, "lr": 1e-2}
    return write_run_config(setup, out, train=train, output={"save_interval": save_interval})


def _submit(cluster: TwoNodeCluster, cfg: Path, name: str, cwd: Path, nodes: int, launcher: str) -> tuple[int, Path]:
    """adakd-submit as a user runs it; 2 ranks in all (nodes x ranks per node), CPU, gloo on the nodes' interface."""
    cmd = [*SUBMIT, "--config", str(cfg), "--nodes", str(nodes), "--gpus-per-node", str(2 // nodes)]
    cmd += ["--accelerator", "cpu", "--launcher", launcher, "--time", "10:00", "--signal-seconds", "0"]
    cmd += ["--job-name", name]
    # the real collective timeout (run_env's 60 s would hide a survivor that waits for it)
    env = run_env({"SLURM_CONF": str(cluster.conf), "GLOO_SOCKET_IFNAME": NODE_IFNAME, "ADAKD_DIST_TIMEOUT": "1800"})
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    job_id = re.search(r"^Submitted batch job (\d+)$", proc.stdout, re.M)
    log = re.search(r"^log:\s+(\S+)$", proc.stdout, re.M)
    assert job_id and log, proc.stdout
    return int(job_id.group(1)), Path(log.group(1))


@contextlib.contextmanager
def _cancelled_on_exit(cluster: TwoNodeCluster, job_id: int) -> Iterator[None]:
    try:
        yield
    finally:
        cluster.run("scancel", str(job_id), check=False)


def _wait(cluster: TwoNodeCluster, job_id: int, log: Path, states: set[str], timeout: float = 300) -> dict[str, str]:
    try:
        return cluster.wait_job(job_id, states, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_tail(log)}") from None


def _wait_for_steps(cluster: TwoNodeCluster, job_id: int, out: Path, log: Path, n: int) -> None:
    history, deadline = out / "history.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline:
        if history.is_file() and history.read_text(encoding="utf-8").count("\n") >= n:
            return
        if cluster.job(job_id).get("JobState") in FINAL_STATES:
            raise AssertionError(f"job {job_id} ended before step {n}\n{_tail(log)}")
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: fewer than {n} steps after 240 s\n{_tail(log)}")


def _complete_steps(out: Path) -> list[int]:
    return sorted(json.loads(m.read_text())["step"] for m in (out / "checkpoints").glob("step_*/COMPLETE.json"))


def _assert_both_shards(out: Path, step: int) -> None:
    """A complete checkpoint of a 2-rank world: both ranks' shards, i.e. the rank on each node saved."""
    ckpt = out / "checkpoints" / f"step_{step:08d}"
    assert json.loads((ckpt / "COMPLETE.json").read_text())["world_size"] == 2
    shards = sorted(p.name for p in ckpt.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)], shards


def _assert_same_as(reference: Path, out: Path, context: str) -> None:
    def trajectory(d: Path) -> list[tuple[int, float, float]]:
        return [(int(h["step"]), h["loss"], h["ratio"]) for h in read_history(d)]

    from safetensors.torch import load_file

    got, want = trajectory(out), trajectory(reference)
    assert [s for s, _, _ in got] == list(range(1, STEPS + 1)), context
    assert got == want, f"per-step (loss, r) differ from 1 node x 2 ranks\n{context}"
    ref_w, got_w = (load_file(str(d / "export" / "model.safetensors")) for d in (reference, out))
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], got_w[name]), f"{name} differs from 1 node x 2 ranks\n{context}"


def _on_nodes(cluster: TwoNodeCluster, job_id: int) -> str:
    return cluster.job(job_id).get("NodeList", "?")


@pytest.fixture(scope="module")
def one_node_reference(two_node_cluster: TwoNodeCluster, tiny_setup: TinySetup, tmp_path_factory) -> Path:
    """The uninterrupted job on 1 node x 2 ranks (deepspeed launcher): the reference of every test here."""
    root = tmp_path_factory.mktemp("one-node")
    out = root / "run"
    job_id, log = _submit(two_node_cluster, _config(tiny_setup, out), "ref", root, nodes=1, launcher="deepspeed")
    with _cancelled_on_exit(two_node_cluster, job_id):
        info = _wait(two_node_cluster, job_id, log, {"COMPLETED"})
    assert info["NodeList"] == "node1" and info["ExitCode"] == "0:0", _tail(log)
    return out


def test_deepspeed_two_nodes_usr1_requeues_resumes_and_equals_one_node(
    two_node_cluster: TwoNodeCluster, tiny_setup: TinySetup, one_node_reference: Path, tmp_path: Path
) -> None:
    """USR1 to the batch shell -> both nodes' ranks checkpoint, exit 75 -> requeue -> resume -> the 1-node result."""
    out = tmp_path / "run"
    job_id, log = _submit(two_node_cluster, _config(tiny_setup, out), "ds2", tmp_path, nodes=2, launcher="deepspeed")
    with _cancelled_on_exit(two_node_cluster, job_id):
        _wait_for_steps(two_node_cluster, job_id, out, log, 2)
        assert _on_nodes(two_node_cluster, job_id) == "node[1-2]"
        two_node_cluster.run("scancel", "--signal=USR1", "--batch", str(job_id))
        info = _wait(two_node_cluster, job_id, log, {"COMPLETED"})
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", context
    assert f"on 2 node(s) x 1, master node1:{20000 + job_id % 20000}, launcher deepspeed" in text, context
    steps = _complete_steps(out)
    assert len(steps) == 2 and 2 <= steps[0] < STEPS == steps[1], f"checkpoints at {steps}\n{context}"
    _assert_both_shards(out, steps[0])
    assert f"adakd: preempted (exit code 75); requeueing job {job_id}" in text, context
    assert re.search(rf"resumed from \S*step_{steps[0]:08d} at step {steps[0]}", text), context
    _assert_same_as(one_node_reference, out, context)


def _kill_rank_on(cluster: TwoNodeCluster, node: str, job_id: int) -> int:
    """SIGKILL the trainer rank(s) of this job inside the node's namespace; returns how many were killed."""
    killed = 0
    for pid in cluster.ns_pids(node):
        try:
            proc = psutil.Process(pid)
            env, cmdline = proc.environ(), " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rank = env.get("SLURM_JOB_ID") == str(job_id) and "LOCAL_RANK" in env and "launch/distill.py" in cmdline
        if rank and launcher_kind(proc.cmdline()) is None:  # the trainer itself, not a launcher above it
            proc.kill()
            killed += 1
    return killed


def test_torchrun_two_nodes_scancel_node_loss_and_resume_equal_one_node(
    two_node_cluster: TwoNodeCluster, tiny_setup: TinySetup, one_node_reference: Path, tmp_path: Path
) -> None:
    """scancel -> every rank checkpoints, 75; resubmit, kill node 2's rank -> node 1 names it within seconds;
    resubmit -> resumes from the last complete checkpoint and ends with the 1-node result."""
    out = tmp_path / "run"
    cfg = _config(tiny_setup, out, save_interval=3)
    job_id, log = _submit(two_node_cluster, cfg, "tr2", tmp_path, nodes=2, launcher="torchrun")
    with _cancelled_on_exit(two_node_cluster, job_id):
        _wait_for_steps(two_node_cluster, job_id, out, log, 2)
        two_node_cluster.run("scancel", str(job_id))
        _wait(two_node_cluster, job_id, log, {"CANCELLED"}, timeout=60)
        deadline = time.monotonic() + 30  # the batch shell reports srun's code after the ranks have saved
        while "not requeueing" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
    info = two_node_cluster.job(job_id)
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    assert "launcher torchrun" in text and "adakd: stop signal received (SIGTERM)" in text, context
    for node, task in (("node1", 0), ("node2", 1)):  # each node's adakd-launch reports its ranks' 75
        assert f"srun: error: {node}: task {task}: Exited with exit code 75" in text, context
    assert "adakd: stopped by SIGTERM (scancel or the time limit) with exit code 75; not requeueing" in text, context
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("CANCELLED", "75:0", "0"), context
    stopped = _complete_steps(out)[-1]
    assert 2 <= stopped < STEPS, context
    _assert_both_shards(out, stopped)

    # Node loss: resumed, then node 2's rank is killed after the next periodic checkpoint.
    job_id, log = _submit(two_node_cluster, cfg, "tr2lost", tmp_path, nodes=2, launcher="torchrun")
    with _cancelled_on_exit(two_node_cluster, job_id):
        _wait_for_steps(two_node_cluster, job_id, out, log, stopped + 4)
        assert _kill_rank_on(two_node_cluster, "node2", job_id) == 1, _tail(log)
        killed_at = time.monotonic()
        while "lost node" not in log.read_text(errors="replace"):
            assert time.monotonic() - killed_at < LOST_WITHIN_S, f"no lost-node line in {LOST_WITHIN_S}s\n{_tail(log)}"
            time.sleep(0.1)
        noticed_s = time.monotonic() - killed_at
        info = _wait(two_node_cluster, job_id, log, {"FAILED"}, timeout=60)
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    lines = [ln for ln in text.splitlines() if "lost node" in ln]
    assert len(lines) == 1 and "rank 0 on node1 lost node node2 (rank 1, " in lines[0], context
    assert info["Restarts"] == "0" and info["ExitCode"] == "1:0", context
    print(f"node loss noticed by node1 {noticed_s:.1f} s after the kill")
    last_complete = _complete_steps(out)[-1]
    assert last_complete > stopped, context

    job_id, log = _submit(two_node_cluster, cfg, "tr2resume", tmp_path, nodes=2, launcher="torchrun")
    with _cancelled_on_exit(two_node_cluster, job_id):
        info = _wait(two_node_cluster, job_id, log, {"COMPLETED"})
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    assert re.search(rf"resumed from \S*step_{last_complete:08d} at step {last_complete}", text), context
    _assert_same_as(one_node_reference, out, context)


def test_output_dir_one_node_cannot_see_exits_2_naming_it(
    two_node_cluster: TwoNodeCluster, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """output.dir exists on node 2 only as an empty tmpfs of its own: one line naming node2, exit 2, no model."""
    hidden = tmp_path / "hidden"
    out = hidden / "run"
    cfg = _config(tiny_setup, out).rename(tmp_path / "hidden-run.yaml")  # the config itself stays visible
    two_node_cluster.hide_on("node2", hidden)
    job_id, log = _submit(two_node_cluster, cfg, "blind", tmp_path, nodes=2, launcher="deepspeed")
    with _cancelled_on_exit(two_node_cluster, job_id):
        info = _wait(two_node_cluster, job_id, log, {"FAILED"}, timeout=180)
    text, context = log.read_text(encoding="utf-8", errors="replace"), _tail(log)
    assert info["ExitCode"] == "2:0", context
    lines = [ln for ln in text.splitlines() if "cannot see a file that rank 0 wrote" in ln]
    assert len(lines) == 1, context
    assert lines[0] == (
        f"adakd-distill: error: output.dir {out}: node node2 (rank 1) cannot see a file that rank 0 wrote there on "
        "node1: output.dir must be on a filesystem shared by every node"
    ), context
    assert "preflight ok" in text and "setup: " not in text, context  # stopped before the tokenizer, no model built
    assert not (out / "checkpoints").exists() and not list(out.glob(".adakd-shared-*")), context
