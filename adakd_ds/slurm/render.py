"""Fill slurm/distill.sbatch for one job: a pure text transformation, validated before anything is submitted.

The template stays a working script on its own (defaults read from the environment); rendering replaces its two
marked blocks, the ``#SBATCH`` header and the settings, with fixed values, so a submitted job does not depend on
whatever the submitting shell happens to export.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "slurm" / "distill.sbatch"
HEADER_BLOCK = ("# >>> sbatch header", "# <<< sbatch header")
SETTINGS_BLOCK = ("# >>> settings", "# <<< settings")
# Slurm time limits: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Launcher(str, enum.Enum):
    """How each node starts its ranks (see the template header for why deepspeed is the default)."""

    DEEPSPEED = "deepspeed"
    TORCHRUN = "torchrun"
    COMMAND = "command"  # SlurmJob.command runs through bash on every node


class Accelerator(str, enum.Enum):
    CUDA = "cuda"  # request GPUs from Slurm
    CPU = "cpu"  # no GPU request; DS_ACCELERATOR=cpu and one thread per rank (tests, CPU clusters)


class SlurmJobError(ValueError):
    """A SlurmJob that would fail (or train the wrong thing) after waiting in the queue."""


@dataclass
class SlurmJob:
    """Everything one submission needs; paths are made absolute when rendered."""

    config: str
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int | None = None  # None: the partition default
    partition: str | None = None  # None: the cluster default
    time: str = "24:00:00"
    job_name: str = "adakd"
    log_dir: str = "."  # the job log is <log_dir>/<job_name>-<jobid>.out, appended to across requeues
    signal_seconds: int = 600  # SIGUSR1 this long before the time limit; 0 = no early signal
    teacher_offload: bool = False
    teacher_offload_config: str = str(REPO_ROOT / "ds_configs" / "teacher_zero3_offload.json")
    overrides: list[str] = field(default_factory=list)  # trainer arguments, e.g. ["--train.lr", "1e-5"]
    launcher: Launcher = Launcher.DEEPSPEED
    command: str | None = None  # launcher=command: a bash command run once per node
    accelerator: Accelerator = Accelerator.CUDA
    script: str = str(REPO_ROOT / "launch" / "distill.py")
    workdir: str = field(default_factory=os.getcwd)  # the trainer's cwd; relative config paths start here
    repo: str = str(REPO_ROOT)  # where slurm/make_hostfile.sh lives
    venv: str | None = None  # a virtualenv prefix put first on PATH in the job
    max_restarts: int = 50
    env: dict[str, str] = field(default_factory=dict)  # extra exports, e.g. {"NCCL_SOCKET_IFNAME": "ib0"}
    sbatch_args: list[str] = field(default_factory=list)  # extra #SBATCH lines, e.g. ["--account=proj"]


def _abs(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def time_limit_seconds(limit: str) -> int | None:
    """Seconds in a Slurm time limit ([D-]HH:MM:SS, [D-]HH:MM, [D-]HH, MM:SS or MM); None for UNLIMITED-like values."""
    days, _, clock = limit.rpartition("-") if "-" in limit else ("0", "", limit)
    parts = [int(p) for p in clock.split(":") if p.isdigit()]
    if not parts or len(parts) != len(clock.split(":")):
        return None
    if "-" in limit:  # D-HH[:MM[:SS]]
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:  # MM:SS
        h, (m, s) = 0, parts
    else:  # MM
        h, m, s = 0, parts[0], 0
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def validate_job(job: SlurmJob) -> None:
    """Raise SlurmJobError with one line naming the first problem; reads the file system, writes nothing."""
    for name in ("nodes", "gpus_per_node"):
        if getattr(job, name) < 1:
            raise SlurmJobError(f"{name} must be >= 1, got {getattr(job, name)}")
    if job.cpus_per_task is not None and job.cpus_per_task < 1:
        raise SlurmJobError(f"cpus_per_task must be >= 1, got {job.cpus_per_task}")
    if job.signal_seconds < 0:
        raise SlurmJobError(f"signal_seconds must be >= 0, got {job.signal_seconds}")
    if job.max_restarts < 0:
        raise SlurmJobError(f"max_restarts must be >= 0, got {job.max_restarts}")
    if not _TIME_RE.match(job.time):
        raise SlurmJobError(f"time must be a Slurm time limit like 24:00:00 or 2-00:00:00, got {job.time!r}")
    limit = time_limit_seconds(job.time)
    if limit is not None and job.signal_seconds >= limit:
        raise SlurmJobError(
            f"signal_seconds ({job.signal_seconds}) must be well below the time limit {job.time} ({limit} s): "
            "the job would be told to stop as soon as it starts"
        )
    if not job.job_name or re.search(r"\s", job.job_name):
        raise SlurmJobError(f"job_name must be non-empty without spaces, got {job.job_name!r}")
    if job.partition is not None and not re.match(r"^[\w.,-]+$", job.partition):
        raise SlurmJobError(f"partition must be a Slurm partition name, got {job.partition!r}")
    if not isinstance(job.launcher, Launcher):
        raise SlurmJobError(f"launcher must be one of {', '.join(m.value for m in Launcher)}, got {job.launcher!r}")
    if not isinstance(job.accelerator, Accelerator):
        raise SlurmJobError(f"accelerator must be cuda or cpu, got {job.accelerator!r}")
    if job.launcher is Launcher.COMMAND and not (job.command or "").strip():
        raise SlurmJobError("launcher=command needs a command")
    if job.launcher is not Launcher.COMMAND and job.command:
        raise SlurmJobError(f"command is only used with launcher=command, not launcher={job.launcher.value}")
    texts = [job.config, job.log_dir, job.script, job.workdir, job.repo, job.venv or "", job.command or ""]
    texts += job.overrides + job.sbatch_args + list(job.env) + list(job.env.values())
    if any("\n" in t or "\r" in t for t in texts):
        raise SlurmJobError("no setting may contain a newline (it would split a line of the batch script)")
    for key in job.env:
        if not _ENV_NAME_RE.match(key):
            raise SlurmJobError(f"env name {key!r} is not a valid shell variable name")
    for arg in job.sbatch_args:
        if not arg.startswith("--"):
            raise SlurmJobError(f"sbatch_args entries look like --option=value, got {arg!r}")
    config = _abs(job.config, job.workdir)
    if not os.path.isfile(config):
        raise SlurmJobError(f"config file not found: {config}")
    if job.launcher is not Launcher.COMMAND and not os.path.isfile(_abs(job.script, job.workdir)):
        raise SlurmJobError(f"training script not found: {_abs(job.script, job.workdir)}")
    if job.teacher_offload and not os.path.isfile(_abs(job.teacher_offload_config, job.workdir)):
        raise SlurmJobError(
            f"teacher offload DeepSpeed config not found: {_abs(job.teacher_offload_config, job.workdir)}"
        )
    if not os.path.isdir(job.workdir):
        raise SlurmJobError(f"workdir not found: {job.workdir}")
    if not os.access(os.path.join(job.repo, "slurm", "make_hostfile.sh"), os.X_OK):
        raise SlurmJobError(f"slurm/make_hostfile.sh not found or not executable under repo {job.repo}")


def _header(job: SlurmJob) -> list[str]:
    lines = [
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if job.accelerator is Accelerator.CUDA:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_task is not None:
        lines.append(f"#SBATCH --cpus-per-task={job.cpus_per_task}")
    if job.partition is not None:
        lines.append(f"#SBATCH --partition={job.partition}")
    lines += [
        f"#SBATCH --time={job.time}",
        f"#SBATCH --output={_abs(job.log_dir, job.workdir)}/%x-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
    ]
    if job.signal_seconds > 0:
        lines.append(f"#SBATCH --signal=B:USR1@{job.signal_seconds}")
    lines += [f"#SBATCH {arg}" for arg in job.sbatch_args]
    return lines


def _settings(job: SlurmJob) -> list[str]:
    q = shlex.quote
    values = {
        "ADAKD_CONFIG": _abs(job.config, job.workdir),
        "ADAKD_WORKDIR": job.workdir,
        "ADAKD_REPO": job.repo,
        "ADAKD_SCRIPT": _abs(job.script, job.workdir),
        "ADAKD_LAUNCHER": job.launcher.value,
        "ADAKD_COMMAND": job.command or "",
        "GPUS_PER_NODE": str(job.gpus_per_node),
        "ADAKD_ACCELERATOR": job.accelerator.value,
        "TEACHER_OFFLOAD": "1" if job.teacher_offload else "0",
        "ADAKD_TEACHER_OFFLOAD_CONFIG": _abs(job.teacher_offload_config, job.workdir),
        "ADAKD_VENV": job.venv or "",
        "ADAKD_MAX_RESTARTS": str(job.max_restarts),
    }
    lines = [f"{key}={q(value)}" for key, value in values.items()]
    lines.append("TRAINER_ARGS=(" + " ".join(q(a) for a in job.overrides) + ")")
    lines += [f"export {key}={q(value)}" for key, value in job.env.items()]
    return lines


def _replace_block(text: str, block: tuple[str, str], body: list[str]) -> str:
    start, end = text.find(block[0]), text.find(block[1])
    if start < 0 or end < start:
        raise SlurmJobError(f"{TEMPLATE}: marker lines {block[0]!r} / {block[1]!r} are missing")
    first_line_end = text.index("\n", start) + 1  # keep the marker line itself
    return text[:first_line_end] + "\n".join(body) + "\n" + text[end:]


def render_sbatch(job: SlurmJob, template: str | None = None) -> str:
    """Validate ``job`` and return the complete batch script text (no files written, nothing submitted)."""
    validate_job(job)
    if template is None:
        if not TEMPLATE.is_file():
            raise SlurmJobError(f"Slurm template not found: {TEMPLATE}")
        template = TEMPLATE.read_text(encoding="utf-8")
    text = _replace_block(template, HEADER_BLOCK, _header(job))
    return _replace_block(text, SETTINGS_BLOCK, _settings(job))
