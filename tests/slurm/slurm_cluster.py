"""A real one-node Slurm cluster (munged + slurmctld + slurmd) for tests, private to one pytest session.

Why real: the sbatch trap, ``scancel --signal``, requeue and restart are Slurm behaviour that a mock would only
restate. Everything lives in a temporary state folder and is reached through ``SLURM_CONF``; nothing global is
touched except the Debian package install. Recipe and pitfalls: /work/shared/docs/local-slurm.md.

Use it from a test module::

    from tests.slurm.slurm_cluster import slurm_cluster_fixture  # noqa: F401  (provides the `slurm_cluster` fixture)

    def test_x(slurm_cluster):
        job_id = slurm_cluster.sbatch(script_path)
        info = slurm_cluster.wait_job(job_id, {"COMPLETED"}, timeout=60)

Where Slurm cannot be installed the fixture skips; with ``CI=true`` it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo", "squeue", "munged", "munge", "unmunge")
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"})


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed and cannot be installed here (not root, or no apt)."""


def _ensure_sbin_on_path() -> None:
    """The daemons live in /usr/sbin, which a minimal (non-login) shell's PATH may lack."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in parts]
    if extra:
        os.environ["PATH"] = os.pathsep.join(parts + extra)


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]


def ensure_slurm_installed() -> None:
    """Install the Debian packages when missing; raise SlurmUnavailable with the reason when that is impossible."""
    if not _missing_binaries():
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"Slurm binaries missing ({', '.join(_missing_binaries())}) and not root to install")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("Slurm binaries missing and apt-get is not available to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise SlurmUnavailable(f"{' '.join(cmd)} failed (rc {proc.returncode}): {tail[0]}")
    if _missing_binaries():
        raise SlurmUnavailable(f"still missing after install: {', '.join(_missing_binaries())}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_topology(cpus: int | None) -> str:
    """The NodeName fields from ``slurmd -C`` (so slurmd does not warn), optionally advertising more CPUs."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    if cpus is not None and cpus > int(fields["CPUs"]):
        return f"CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={fields['RealMemory']}"
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(f"{k}={fields[k]}" for k in keys if k in fields)


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munged() -> bool:
    """Start munged as the munge user unless one already answers; True when we started it (so we stop it)."""
    if _munge_works():
        return False
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
        os.chmod(d, 0o755)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 10
    while not _munge_works():
        if time.monotonic() > deadline:
            raise RuntimeError("munged started but `munge -n | unmunge` still fails")
        time.sleep(0.1)
    return True


@dataclass
class SlurmCluster:
    """A running private cluster; every client call goes through ``env`` (SLURM_CONF points at our conf)."""

    root: Path
    conf: Path
    node: str
    partition: str = "debug"
    started_munged: bool = False
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
        return proc

    def sbatch(self, script: str | os.PathLike, *args: str, env: dict[str, str] | None = None) -> int:
        """Submit and return the job id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", *args, str(script)],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed (rc {proc.returncode}): {proc.stderr.strip()}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, RestartCnt, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: int, states: set[str] | frozenset[str], timeout: float = 60) -> dict[str, str]:
        """Poll until JobState is one of ``states``; a different final state or a timeout raises with the state."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "?")
            if state in states:
                return info
            if state in FINAL_STATES:
                raise AssertionError(f"job {job_id} ended {state} (ExitCode={info.get('ExitCode')}), wanted {states}")
            time.sleep(0.25)
        raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout}s, wanted {states}")

    def stop(self) -> None:
        """scancel everything, ``scontrol shutdown``, wait for our daemon pids (SIGKILL stragglers), reap, stop munged.

        The reap is by pid: every process whose environment carries our SLURM_CONF (srun, slurmstepd, the ranks) is
        killed, so a job whose daemons could not be told (munged died, scancel failed) leaves no orphan behind.
        """
        self.run("scancel", "--user", "root", check=False, timeout=30)
        deadline = time.monotonic() + 15  # let the killed jobs' slurmstepd finish before the daemons go
        while self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.run("scontrol", "shutdown", check=False, timeout=30)
        deadline = time.monotonic() + 15
        for pid in self.pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        reap_by_conf(self.conf)
        if self.started_munged:
            subprocess.run(
                ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--stop"], capture_output=True, timeout=30
            )

    def leftovers(self) -> list[str]:
        """What of this cluster still runs (for the tests' no-leak check): daemons and job processes, by pid."""
        procs = [p for p in self.pids.values() if _alive(p)] + [p.pid for p in processes_of_conf(self.conf)]
        return [f"pid {pid}: {_cmdline(pid)}" for pid in sorted(set(procs))]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def processes_of_conf(conf: Path) -> list[psutil.Process]:
    """Live processes (not this one or its ancestors) whose environment has SLURM_CONF=conf."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid in mine or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("SLURM_CONF") == str(conf):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap_by_conf(conf: Path, timeout: float = 10) -> None:
    """SIGKILL every process of this cluster (see processes_of_conf) and wait until they are gone."""
    procs = processes_of_conf(conf)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def write_conf(root: Path, controller: str, nodes: list[tuple[str, str]], cpus: int | None) -> Path:
    """slurm.conf for a controller at ``controller`` (the short hostname's address) and ``nodes`` (name, address).

    Per-node files use %n (the node name), so several slurmd (one per network namespace) can share the folder.
    """
    conf = root / "slurm.conf"
    host = socket.gethostname().split(".")[0]  # must be the short name or slurmctld is "not a valid controller"
    names = ",".join(name for name, _ in nodes)
    lines = [
        "ClusterName=adakdtest",
        f"SlurmctldHost={host}({controller})",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "AuthInfo=cred_expire=10",  # with bf/sched intervals: a requeued job restarts in ~12 s instead of ~121 s
        "SchedulerParameters=bf_interval=2,sched_interval=2",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "MailProg=/bin/true",
        "MinJobAge=3600",  # keep finished jobs visible to `scontrol show job` (no accounting here)
        "KillWait=10",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool-%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        *(f"NodeName={name} NodeAddr={addr} {_node_topology(cpus)} State=UNKNOWN" for name, addr in nodes),
        f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def start_cluster(root: Path, cpus: int | None = 4, timeout: float = 30) -> SlurmCluster:
    """Install if needed, then start munged, slurmctld and slurmd on 127.0.0.1 with state under ``root``."""
    _ensure_sbin_on_path()
    ensure_slurm_installed()
    shutil.rmtree(root, ignore_errors=True)  # job ids restart at 1 on a wiped state folder: callers use fresh dirs
    node = socket.gethostname().split(".")[0]  # must be the short name or slurmctld is "not a valid controller"
    for sub in ("state", f"spool-{node}"):
        (root / sub).mkdir(parents=True)
    conf = write_conf(root, "127.0.0.1", [(node, "127.0.0.1")], cpus)
    cluster = SlurmCluster(root=root, conf=conf, node=node, started_munged=_start_munged())
    try:
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run(
                [daemon, "-f", str(conf)], env=cluster.env, capture_output=True, text=True, timeout=30
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{daemon} failed to start (rc {proc.returncode}): {proc.stderr.strip()}")
            pid_file = root / ("slurmctld.pid" if daemon == "slurmctld" else f"slurmd-{node}.pid")
            deadline = time.monotonic() + timeout
            while not pid_file.exists() or not pid_file.read_text().strip():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{daemon} wrote no pid file; see the logs under {root}")
                time.sleep(0.05)
            cluster.pids[daemon] = int(pid_file.read_text().strip())
        deadline = time.monotonic() + timeout
        while cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"node never became idle; see {root}/slurmctld.log and slurmd.log")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


_lock = threading.Lock()
_shared: dict[str, object] = {"cluster": None, "users": 0, "tmp": None}


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> Iterator[SlurmCluster]:
    """One cluster per session, shared by every module that imports this fixture; stopped after the last user."""
    with _lock:
        if _shared["cluster"] is None:
            tmp = tempfile.mkdtemp(prefix="adakd-slurm-")
            reason = None
            try:
                _shared["cluster"] = start_cluster(Path(tmp) / "cluster")
            except SlurmUnavailable as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                reason = f"no local Slurm: {exc}"
            if reason is not None:
                if os.environ.get("CI", "").lower() == "true":
                    pytest.fail(f"{reason} (CI=true: Slurm tests must not skip)", pytrace=False)
                pytest.skip(reason)
            _shared["tmp"] = tmp
        _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    try:
        yield _shared["cluster"]  # type: ignore[misc]
    finally:
        with _lock:
            _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
            if _shared["users"] == 0:
                cluster: SlurmCluster = _shared["cluster"]  # type: ignore[assignment]
                _shared["cluster"] = None
                try:
                    cluster.stop()
                finally:
                    shutil.rmtree(str(_shared["tmp"]), ignore_errors=True)
