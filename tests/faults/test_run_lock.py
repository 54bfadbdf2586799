"""One run per output dir (issue 13, item 2): the second run is refused with one line naming the holder's host and
pid, and a holder killed with SIGKILL leaves no stale lock behind (the OS drops flock locks of a dead process)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from adakd_ds.engine.guard.run_lock import RunLockError, acquire_run_lock, release_run_lock
from tests.engine_fixtures import REPO, run_env, run_launch, write_run_config

HOLD = "import sys, time; from adakd_ds.engine.guard.run_lock import acquire_run_lock; acquire_run_lock(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def _holder(out) -> subprocess.Popen:
    """Another process that holds the lock exactly as a live run's rank 0 does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], cwd=REPO, env=run_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_host_and_pid_and_a_killed_holder_frees_it(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        with pytest.raises(RunLockError) as err:
            acquire_run_lock(out)
        msg = str(err.value)
        assert f"host {socket.gethostname()}, pid {holder.pid}" in msg and str(out) in msg and "\n" not in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire_run_lock(out)  # no stale lock after kill -9
    release_run_lock(out)
    again = _holder(out)  # and release_run_lock really released it
    again.kill()
    again.wait()


@pytest.mark.faults
def test_a_second_run_in_a_live_runs_output_dir_exits_2_at_once(tiny_setup, tmp_path):
    out = tmp_path / "run"
    cfg = write_run_config(tiny_setup, out, train={"max_steps": 2})
    holder = _holder(out)
    try:
        t0 = time.time()
        res = run_launch(["--config", str(cfg)], launcher="deepspeed", nproc=2, timeout=120)
        assert res.returncode == 2, res.output[-3000:]
        lines = [line for line in res.output.splitlines() if "adakd-distill: error:" in line]
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], res.output[-3000:]
        assert "Traceback" not in res.output
        assert time.time() - t0 < 60
        assert not (out / "history.jsonl").exists() and not (out / "checkpoints").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    res = run_launch(["--config", str(cfg)], launcher="python", nproc=1, timeout=180)
    assert res.returncode == 0, res.output[-3000:]  # the killed holder left nothing that blocks the next run
