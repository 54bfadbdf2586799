"""Each rank watches its launchers: when one of them is gone, the rank checkpoints and exits as if signalled.

Why: the `deepspeed` runner has no signal handler on one node; SIGTERM kills it at once (143) while its
`launch.py` and the ranks run on unsupervised to the end. A rank cannot keep its launcher alive, but it can notice
that it died (its `launch.py` parent, the `deepspeed` runner above it, torchrun, or adakd-launch) and take the
preemption path: every rank agrees at the next step boundary, saves a complete checkpoint and exits 75, so no rank
outlives its launcher by more than one step and a save. Polling (once a second) rather than PR_SET_PDEATHSIG,
because the process that dies is often the grandparent, which PDEATHSIG cannot see.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Callable

import psutil

POLL_SECONDS = 1.0


class LauncherKind(str, enum.Enum):
    DEEPSPEED_RUNNER = "deepspeed"
    DEEPSPEED_LAUNCH = "deepspeed launch.py"
    TORCHRUN = "torchrun"
    SUPERVISOR = "adakd-launch"


# A process is a launcher of this kind when its command line contains one of these.
CMDLINE_MARKERS: dict[LauncherKind, tuple[str, ...]] = {
    LauncherKind.DEEPSPEED_LAUNCH: ("deepspeed.launcher.launch",),
    LauncherKind.DEEPSPEED_RUNNER: ("bin/deepspeed", "deepspeed.launcher.runner"),
    LauncherKind.TORCHRUN: ("bin/torchrun", "torch.distributed.run", "torch/distributed/run.py"),
    LauncherKind.SUPERVISOR: ("adakd-launch", "launch/supervise.py", "adakd_ds.engine.guard.supervisor"),
}


def launcher_kind(cmdline: list[str]) -> LauncherKind | None:
    joined = " ".join(cmdline)
    for kind, markers in CMDLINE_MARKERS.items():
        if any(marker in joined for marker in markers):
            return kind
    return None


def launcher_ancestors(pid: int | None = None) -> list[tuple[psutil.Process, LauncherKind]]:
    """The unbroken chain of launcher processes above `pid` (this process), nearest first."""
    chain = []
    try:
        proc = psutil.Process(pid or os.getpid()).parent()
        while proc is not None and proc.pid > 1:
            kind = launcher_kind(proc.cmdline())
            if kind is None:
                break
            chain.append((proc, kind))
            proc = proc.parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return chain


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def watch_launchers(on_gone: Callable[[str], None], interval: float = POLL_SECONDS) -> list[int]:
    """Start a daemon thread that calls on_gone(reason) once, when a launcher above this rank is gone.

    Returns the watched pids (none when run as a plain process).
    """
    chain = launcher_ancestors()
    if not chain:
        return []

    def poll() -> None:
        while True:
            for proc, kind in chain:
                if _gone(proc):
                    on_gone(f"its launcher ({kind.value}, pid {proc.pid}) is gone")
                    return
            time.sleep(interval)

    threading.Thread(target=poll, name="adakd-launcher-watch", daemon=True).start()
    return [proc.pid for proc, _ in chain]


def gone_launcher_note(chain: list[tuple[psutil.Process, LauncherKind]], wait: float = 0.0) -> str | None:
    """A line for a preempted run whose top launcher (the bare `deepspeed` runner or torchrun, no adakd-launch above
    it) is already gone: the shell then got that launcher's own exit code (130 on Ctrl-C, 143 on SIGTERM) before
    this checkpoint was saved, and only adakd-launch waits for the save and exits 75 (issue 25)."""
    if any(kind is LauncherKind.SUPERVISOR for _, kind in chain):
        return None
    tops = [(p, k) for p, k in chain if k in (LauncherKind.DEEPSPEED_RUNNER, LauncherKind.TORCHRUN)]
    deadline = time.monotonic() + wait  # a Ctrl-C reaches the runner too, but it may take a moment to die
    while tops and not any(_gone(p) for p, _ in tops) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc, kind in tops:
        if _gone(proc):
            return (
                f"note: the {kind.value} launcher (pid {proc.pid}) had already returned its own exit code to the "
                "shell (130 on Ctrl-C, 143 on SIGTERM) before this checkpoint was saved; start the same command "
                f"as `adakd-launch {kind.value} ...` to wait for the save and exit 75"
            )
    return None
