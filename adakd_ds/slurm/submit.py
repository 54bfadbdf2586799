"""``adakd-submit``: check a run config, render the Slurm batch script for it, and submit it with sbatch.

Everything that can be checked before queueing is checked first (the config loads and validates with the given
overrides, the job shape is sane), so a typo fails in a second instead of after hours in the queue.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from adakd_ds.config.load import ConfigError, load_config
from adakd_ds.slurm.render import Accelerator, Launcher, SlurmJob, SlurmJobError, render_sbatch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adakd-submit",
        description="Render slurm/distill.sbatch for a run config and submit it. "
        "Arguments after `--` are trainer overrides (--section.key value).",
    )
    p.add_argument("--config", required=True, help="run config (YAML/JSON)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node task (default: partition default)")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default="24:00:00", help="time limit, e.g. 24:00:00 or 2-00:00:00")
    p.add_argument("--job-name", default="adakd")
    p.add_argument("--signal-seconds", type=int, default=600, help="SIGUSR1 this long before the limit (0: none)")
    p.add_argument("--teacher-offload", action="store_true", help="teacher ZeRO-3 with CPU parameter offload")
    p.add_argument("--launcher", choices=[m.value for m in Launcher if m is not Launcher.COMMAND], default="deepspeed")
    p.add_argument("--accelerator", choices=[m.value for m in Accelerator], default="cuda")
    p.add_argument("--max-restarts", type=int, default=50)
    p.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH line, e.g. --sbatch-arg=--qos=high")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    return p


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def job_from_args(args: argparse.Namespace, overrides: list[str]) -> tuple[SlurmJob, str]:
    """The SlurmJob and the directory its script and log go to (<output.dir>/slurm)."""
    if not os.path.isfile(args.config):
        raise SlurmJobError(f"config file not found: {os.path.abspath(args.config)}")
    cfg = load_config(args.config, overrides)
    cfg.validate()
    log_dir = os.path.join(os.path.abspath(cfg.output.dir), "slurm")
    venv = sys.prefix if sys.prefix != getattr(sys, "base_prefix", sys.prefix) else None
    job = SlurmJob(
        config=os.path.abspath(args.config),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time=args.time,
        job_name=args.job_name,
        log_dir=log_dir,
        signal_seconds=args.signal_seconds,
        teacher_offload=args.teacher_offload,
        overrides=overrides,
        launcher=Launcher(args.launcher),
        accelerator=Accelerator(args.accelerator),
        venv=venv,
        max_restarts=args.max_restarts,
        sbatch_args=args.sbatch_arg,
    )
    return job, log_dir


def submit_main(argv: list[str] | None = None) -> int:
    """Entry point of ``adakd-submit``; returns the exit code (0 ok, 2 bad input, 1 sbatch failed)."""
    ours, overrides = _split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(ours)
    try:
        job, log_dir = job_from_args(args, overrides)
        script = render_sbatch(job)
    except (ConfigError, SlurmJobError, ValueError) as exc:
        print(f"adakd-submit: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        print("adakd-submit: error: sbatch not found on PATH (use --dry-run to only print the script)", file=sys.stderr)
        return 2
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"{job.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(script)
    os.chmod(path, 0o755)
    proc = subprocess.run([sbatch, "--parsable", path], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        print(f"adakd-submit: error: sbatch {path} failed (rc {proc.returncode}): {' '.join(detail)}", file=sys.stderr)
        return 1
    job_id = proc.stdout.strip().split(";")[0]
    print(f"Submitted batch job {job_id}")
    print(f"script: {path}")
    print(f"log:    {log_dir}/{job.job_name}-{job_id}.out")
    return 0


if __name__ == "__main__":
    sys.exit(submit_main())
