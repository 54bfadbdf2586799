"""The rendered batch script, run for real by bash with recording stand-ins for srun/scontrol/deepspeed/torchrun.

Executing the script (not only grepping it) checks the multi-node wiring each node would actually get: node rank,
master address, port, hostfile and trainer arguments, plus the requeue decision after the ranks exit.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from adakd_ds.slurm.render import (
    REPO_ROOT,
    TEMPLATE,
    Accelerator,
    Launcher,
    SlurmJob,
    SlurmJobError,
    render_sbatch,
)
from adakd_ds.slurm.submit import submit_main

# scontrol: expands node[001-004] like Slurm; records requeues. srun: runs the task once per node with SLURM_NODEID.
STUBS = {
    "scontrol": """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then
    prefix=${3%%[*}; range=${3#*[}; range=${range%]}
    if [ "$prefix" = "$3" ]; then echo "$3"; exit 0; fi
    for i in $(seq -w "${range%-*}" "${range#*-}"); do echo "$prefix$i"; done
elif [ "$1" = requeue ]; then echo "$2" >> "$STUB_LOG/requeue"
fi
""",
    "srun": """#!/bin/bash
printf '%s\\n' "$@" > "$STUB_LOG/srun_args"
while [[ "$1" == --* ]]; do shift; done
rc=0
for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@"; r=$?; if [ $r -gt $rc ]; then rc=$r; fi
done
exit $rc
""",
    "deepspeed": """#!/bin/bash
python3 -c 'import json, os, sys; a = sys.argv[1:]; h = a[a.index("--hostfile") + 1] if "--hostfile" in a else None
json.dump({"argv": a, "hostfile": open(h).read() if h else None, "env": dict(os.environ)},
          open(os.path.join(os.environ["STUB_LOG"], "launch." + os.environ["SLURM_NODEID"]), "w"))' "$@"
exit "${STUB_RC:-0}"
""",
    "sbatch": """#!/bin/bash
echo "$@" > "$STUB_LOG/sbatch_called"
echo 4242
""",
}
STUBS["torchrun"] = STUBS["deepspeed"]


@pytest.fixture()
def stubs(tmp_path: Path) -> dict[str, str]:
    """A PATH with the stand-ins first and STUB_LOG where they record."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log)}


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        "mode: sft\nmodel: {student_config: tiny}\ndata: {source: data.jsonl}\n"
        f"output: {{dir: {tmp_path / 'runs' / 'r1'}}}\n"
    )
    return path


def run_script(text: str, tmp_path: Path, stubs: dict[str, str], nodes: int, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    # the template's own settings must decide these, not the shell the tests run in (tests/run.sh exports some)
    prefixes = ("SLURM_", "ADAKD_", "GPUS_PER_NODE", "MASTER_", "DS_ACCELERATOR", "OMP_NUM_THREADS")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    slurm = {
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": f"node[001-{nodes:03d}]" if nodes > 1 else "node001",
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        ["bash", str(script)], env={**base, **stubs, **slurm, **env}, capture_output=True, text=True, timeout=60
    )


def launches(stubs: dict[str, str], nodes: int) -> list[dict]:
    return [json.loads((Path(stubs["STUB_LOG"]) / f"launch.{i}").read_text()) for i in range(nodes)]


def test_multi_node_render_text(cfg: Path, tmp_path: Path) -> None:
    job = SlurmJob(
        config=str(cfg), nodes=4, gpus_per_node=8, cpus_per_task=16, partition="gpu", time="2-00:00:00",
        log_dir=str(tmp_path / "logs"), signal_seconds=900, overrides=["--train.lr", "1e-5"],
    )  # fmt: skip
    text = render_sbatch(job)
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=adakd",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=2-00:00:00",
        f"#SBATCH --output={tmp_path / 'logs'}/%x-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@900",
    ]
    assert f"ADAKD_CONFIG={cfg}\n" in text and "GPUS_PER_NODE=8\n" in text and "ADAKD_LAUNCHER=deepspeed\n" in text
    assert "TRAINER_ARGS=(--train.lr 1e-5)\n" in text
    assert 'MASTER_ADDR=${ADAKD_MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}' in text
    assert "MASTER_PORT=${ADAKD_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}" in text
    assert 'SRUN_ARGS=(--nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0)' in text
    assert 'deepspeed --no_ssh --hostfile "$hostfile" --node_rank "$SLURM_NODEID"' in text
    assert text.count('exec python "$ADAKD_REPO/launch/supervise.py"') == 2  # both launchers under adakd-launch
    assert "${ADAKD_CONFIG:-" not in text  # the by-hand defaults were replaced, not left to the submitting shell


@pytest.mark.parametrize("launcher", [Launcher.DEEPSPEED, Launcher.TORCHRUN])
def test_multi_node_wiring_per_node(launcher: Launcher, cfg: Path, tmp_path: Path, stubs: dict[str, str]) -> None:
    job = SlurmJob(config=str(cfg), nodes=4, gpus_per_node=8, launcher=launcher, overrides=["--train.lr", "1e-5"])
    proc = run_script(render_sbatch(job), tmp_path, stubs, nodes=4)
    assert proc.returncode == 0, proc.stderr
    srun_args = (Path(stubs["STUB_LOG"]) / "srun_args").read_text().split("\n")
    assert srun_args[:5] == [
        "--nodes=4",
        "--ntasks=4",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=0",
        "--cpus-per-task=16",
    ]
    script, trainer = str(REPO_ROOT / "launch" / "distill.py"), ["--config", str(cfg), "--train.lr", "1e-5"]
    for node, seen in enumerate(launches(stubs, 4)):
        master = ["--master_addr", "node001", "--master_port", str(20000 + 123456 % 20000)]
        if launcher is Launcher.DEEPSPEED:
            hostfile = str(tmp_path / f"adakd-hostfile-123456-{node}")
            want = ["--no_ssh", "--hostfile", hostfile, "--node_rank", str(node), *master, "--num_nodes", "4"]
            assert seen["argv"] == [*want, "--num_gpus", "8", script, *trainer]
            assert seen["hostfile"] == "".join(f"node{i:03d} slots=8\n" for i in range(1, 5))
        else:
            want = ["--nnodes", "4", "--nproc_per_node", "8", "--node_rank", str(node), *master, script, *trainer]
            assert seen["argv"] == want
        assert seen["env"]["MASTER_ADDR"] == "node001" and "DS_ACCELERATOR" not in seen["env"]


def test_single_node_cpu_render_and_teacher_offload(cfg: Path, tmp_path: Path, stubs: dict[str, str]) -> None:
    offload = tmp_path / "offload.json"
    offload.write_text("{}")
    job = SlurmJob(
        config=str(cfg), nodes=1, gpus_per_node=2, accelerator=Accelerator.CPU, signal_seconds=0,
        teacher_offload=True, teacher_offload_config=str(offload), env={"NCCL_DEBUG": "WARN"},
    )  # fmt: skip
    text = render_sbatch(job)
    assert "#SBATCH --nodes=1\n" in text
    assert "--gpus-per-node" not in "".join(line for line in text.splitlines() if line.startswith("#SBATCH"))
    assert "#SBATCH --signal" not in text and "#SBATCH --partition" not in text
    proc = run_script(text, tmp_path, stubs, nodes=1)
    assert proc.returncode == 0, proc.stderr
    (seen,) = launches(stubs, 1)
    assert seen["argv"][seen["argv"].index("--node_rank") + 1] == "0"
    assert seen["argv"][seen["argv"].index("--master_addr") + 1] == "node001"
    assert seen["argv"][-2:] == ["--deepspeed.teacher", str(offload)]
    assert seen["hostfile"] == "node001 slots=2\n"
    assert (seen["env"]["DS_ACCELERATOR"], seen["env"]["OMP_NUM_THREADS"], seen["env"]["NCCL_DEBUG"]) == (
        "cpu",
        "1",
        "WARN",
    )


@pytest.mark.parametrize(
    ("ranks_rc", "restart_count", "script_rc", "requeued"),
    [(0, "0", 0, False), (75, "0", 0, True), (75, "3", 0, True), (3, "0", 3, False), (75, "50", 75, False)],
)
def test_requeue_decision(ranks_rc, restart_count, script_rc, requeued, cfg, tmp_path, stubs) -> None:
    """Exit 75 requeues (up to max_restarts); 0 finishes; any other failure without a stop request does not."""
    text = render_sbatch(SlurmJob(config=str(cfg), nodes=2, gpus_per_node=1))
    proc = run_script(text, tmp_path, stubs, nodes=2, STUB_RC=str(ranks_rc), SLURM_RESTART_COUNT=restart_count)
    assert proc.returncode == script_rc, proc.stdout + proc.stderr
    requeue_log = Path(stubs["STUB_LOG"]) / "requeue"
    assert requeue_log.exists() == requeued
    if requeued:
        assert requeue_log.read_text() == "123456\n"


def test_template_runs_by_hand(cfg: Path, tmp_path: Path, stubs: dict[str, str]) -> None:
    """The unrendered template is a working script: settings come from the environment, rank count from Slurm."""
    proc = run_script(
        TEMPLATE.read_text(), tmp_path, stubs, nodes=2, ADAKD_CONFIG=str(cfg), SLURM_GPUS_ON_NODE="4",
        ADAKD_LAUNCHER="torchrun",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for node, seen in enumerate(launches(stubs, 2)):
        assert seen["argv"][:6] == ["--nnodes", "2", "--nproc_per_node", "4", "--node_rank", str(node)]
        assert seen["argv"][-3:] == [str(REPO_ROOT / "launch" / "distill.py"), "--config", str(cfg)]


def test_make_hostfile(tmp_path: Path, stubs: dict[str, str]) -> None:
    tool = str(REPO_ROOT / "slurm" / "make_hostfile.sh")
    env = {**os.environ, **stubs, "SLURM_JOB_NODELIST": "gpu[01-03]"}
    out = subprocess.run([tool, "4"], env=env, capture_output=True, text=True, check=True).stdout
    assert out == "gpu01 slots=4\ngpu02 slots=4\ngpu03 slots=4\n"
    env.pop("SLURM_JOB_NODELIST")
    proc = subprocess.run([tool, "4"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "SLURM_JOB_NODELIST is not set" in proc.stderr
    assert os.stat(tool).st_mode & stat.S_IXUSR


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": 0}, "nodes must be >= 1, got 0"),
        ({"gpus_per_node": 0}, "gpus_per_node must be >= 1, got 0"),
        ({"config": "/nonexistent/run.yaml"}, "config file not found: /nonexistent/run.yaml"),
        ({"time": "forever"}, "time must be a Slurm time limit like 24:00:00 or 2-00:00:00, got 'forever'"),
        ({"launcher": Launcher.COMMAND}, "launcher=command needs a command"),
        ({"time": "5:00", "signal_seconds": 600}, "signal_seconds (600) must be well below the time limit 5:00"),
        ({"overrides": ["--a", "b\nc"]}, "no setting may contain a newline"),
        (
            {"teacher_offload": True, "teacher_offload_config": "/nope.json"},
            "teacher offload DeepSpeed config not found",
        ),
    ],
)
def test_bad_input_refused(change: dict, message: str, cfg: Path) -> None:
    job = SlurmJob(**{"config": str(cfg), **change})
    with pytest.raises(SlurmJobError) as err:
        render_sbatch(job)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_submit_dry_run_prints_and_does_not_submit(cfg: Path, tmp_path: Path, stubs: dict[str, str]) -> None:
    env = {**os.environ, **stubs, "PYTHONPATH": str(REPO_ROOT)}  # launch/ scripts need adakd_ds importable
    cmd = [sys.executable, str(REPO_ROOT / "launch" / "submit.py"), "--config", str(cfg), "--nodes", "2"]
    proc = subprocess.run([*cmd, "--dry-run", "--", "--train.lr", "1e-5"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2\n" in proc.stdout
    assert "TRAINER_ARGS=(--train.lr 1e-5)\n" in proc.stdout
    assert not (Path(stubs["STUB_LOG"]) / "sbatch_called").exists()
    assert not (tmp_path / "runs").exists()
    # the control: without --dry-run the same command writes the script and calls sbatch
    proc = subprocess.run([*cmd, "--", "--train.lr", "1e-5"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Submitted batch job 4242" in proc.stdout
    (written,) = (tmp_path / "runs" / "r1" / "slurm").glob("adakd-*.sbatch")
    called = (Path(stubs["STUB_LOG"]) / "sbatch_called").read_text().split()
    assert called == ["--parsable", str(written)]
    assert written.read_text() == render_sbatch(
        SlurmJob(
            config=str(cfg), nodes=2, log_dir=str(written.parent), overrides=["--train.lr", "1e-5"], venv=sys.prefix
        )
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "0"], "adakd-submit: error: nodes must be >= 1, got 0"),
        (["--", "--train.nope", "1"], "adakd-submit: error: command line: unknown config key 'train.nope'"),
    ],
)
def test_submit_bad_input(argv, message, cfg, capsys) -> None:
    assert submit_main(["--config", str(cfg), "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_submit_missing_config(tmp_path: Path, capsys) -> None:
    assert submit_main(["--config", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    assert f"config file not found: {tmp_path / 'missing.yaml'}" in capsys.readouterr().err
