"""One run per output dir: an exclusive advisory lock on a file in it, held for the run's lifetime.

Two runs in one output dir used to both exit 0 with their history, checkpoints and export mixed. flock() is released
by the OS when the holder dies, however it dies (kill -9 included), so a crashed run never blocks the next one, and
no stale-lock cleanup is needed. Global rank 0 takes it, before any heavy work; a refused run exits 2 with one line
naming the holder's host and pid.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".adakd-run.lock"
_held: dict[str, int] = {}  # resolved output dir -> the open fd that holds its lock (kept open on purpose)


class RunLockError(ValueError):
    """The output dir is in use by another live run (or cannot hold a lock file)."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown: it is starting up"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"host {info.get('host')}, pid {info.get('pid')}, since {since}"


def acquire_run_lock(out_dir: str | Path) -> Path:
    """Lock `out_dir` for this process (created if needed); raises RunLockError naming the live holder."""
    out = Path(out_dir)
    key = str(out.resolve())
    if key in _held:
        return out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunLockError(f"output.dir {out}: cannot create its lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLockError(
            f"output.dir {out} is in use by another run ({holder}); wait for it to end, stop it, "
            "or choose another output.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode(), 0)
    _held[key] = fd
    return out / LOCK_NAME


def release_run_lock(out_dir: str | Path) -> None:
    """Drop the lock early (in-process callers running several runs); process exit drops it anyway."""
    fd = _held.pop(str(Path(out_dir).resolve()), None)
    if fd is not None:
        os.close(fd)
