"""adakd-launch: run `deepspeed ...` or `torchrun ...` so that a signal always ends in a checkpoint and exit 75.

Why: the launchers cannot keep that promise themselves. The `deepspeed` runner dies with 143 on SIGTERM and leaves
its ranks running; DeepSpeed's launch.py exits 1 after passing a signal on; torchrun turns any worker's exit into 1.
This wrapper (usage: `adakd-launch deepspeed --num_gpus 2 launch/distill.py --config run.yaml`):
- starts the launcher in a new session, so a signal to this process or its group reaches the ranks only through it;
- passes SIGTERM / SIGINT / SIGUSR1 straight to the ranks (not through launch.py, which SIGKILLs after 30 s);
- is a child subreaper, so a rank orphaned by a dying launcher is still its descendant: it waits for every one of
  them before it exits (no rank outlives it);
- exits with what global rank 0 reported through ADAKD_STATUS_FILE when that is 75 (preempted) or 2 (bad input),
  else with the launcher's own code.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from adakd_ds.engine.guard.launcher_watch import launcher_kind
from adakd_ds.engine.guard.preemption import EXIT_PREEMPTED

STATUS_ENV = "ADAKD_STATUS_FILE"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPORTED_CODES = (EXIT_PREEMPTED, 2)  # the codes whose meaning a launcher loses on the way (preempted, bad input)
PR_SET_CHILD_SUBREAPER = 36
USAGE = "usage: adakd-launch deepspeed|torchrun [launcher args] SCRIPT [script args]"


def report_exit(code: int) -> int:
    """Called by every rank with its exit code: the node's local rank 0 writes it where that node's adakd-launch
    reads it (one adakd-launch per node; the ranks agree on 75 and 2, so every node reports the same)."""
    path = os.environ.get(STATUS_ENV)
    if path and os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) == "0":
        try:
            Path(path).write_text(str(code), encoding="utf-8")
        except OSError:
            pass  # the launcher's own exit code still tells the failure
    return code


def _set_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: orphans go to init instead
        pass


def _ranks() -> list[psutil.Process]:
    """Our descendants that are ranks: started with LOCAL_RANK and not themselves a launcher."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "LOCAL_RANK" in proc.environ() and launcher_kind(proc.cmdline()) is None:
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _wait_for_descendants(grace: float) -> None:
    """Reap every descendant (orphans included: we are their subreaper); SIGKILL what is left after `grace` s."""
    deadline = time.monotonic() + grace
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        alive = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                continue
        if not alive:
            return
        if time.monotonic() > deadline:
            for proc in alive:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.2)


def supervise(cmd: list[str], grace: float = 600.0) -> int:
    _set_subreaper()
    fd, status_path = tempfile.mkstemp(prefix="adakd-status-")
    os.close(fd)
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for proc in _ranks():
            try:
                proc.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    try:
        try:
            launcher = subprocess.Popen(cmd, env={**os.environ, STATUS_ENV: status_path}, start_new_session=True)
        except OSError as exc:
            print(f"adakd-launch: error: cannot start {cmd[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
            return 2
        for sig in FORWARDED:
            signal.signal(sig, forward)
        code = launcher.wait()
        _wait_for_descendants(grace)
        reported = Path(status_path).read_text(encoding="utf-8").strip()
    finally:
        os.unlink(status_path)
    final = int(reported) if reported.isdigit() and int(reported) in REPORTED_CODES else (128 - code if code < 0 else code)
    line = outcome_line(final, received, -code if code < 0 else None)
    if line:
        print(line, file=sys.stderr, flush=True)
    return final


def outcome_line(code: int, received: list[int], launcher_killed_by: int | None = None) -> str | None:
    """The one line that closes a run that a signal (or a preemption) ended, so the last thing the user reads says
    what happened and what the exit code means, below whatever DeepSpeed's launch.py logged on its way out."""
    by = f" by {signal.Signals(received[0]).name}" if received else ""
    if code == EXIT_PREEMPTED:
        return f"adakd-launch: stopped{by}: a checkpoint was saved; exit 75 (run the same command again to resume)"
    if received:
        return f"adakd-launch: stopped{by}, the ranks ended with exit {code} (no checkpoint was reported)"
    if launcher_killed_by is not None:
        return f"adakd-launch: the launcher was killed by {signal.Signals(launcher_killed_by).name}; exit {code}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    return supervise(argv)


if __name__ == "__main__":
    sys.exit(main())
