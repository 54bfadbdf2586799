"""The launcher watch, in isolation: which command lines are launchers, and a rank whose launcher is SIGKILLed
notices within a couple of seconds (the drills in test_signals.py run it inside real jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from adakd_ds.engine.guard.launcher_watch import LauncherKind, launcher_kind
from tests.engine_fixtures import REPO, run_env

CHILD = """
import time
from adakd_ds.engine.guard.launcher_watch import watch_launchers
print("WATCHING", watch_launchers(lambda reason: print("GONE", reason, flush=True), interval=0.2), flush=True)
time.sleep(60)
"""
# A stand-in launcher: its command line carries torchrun's module name; it runs the child and waits for it.
PARENT = "import os, subprocess, sys; subprocess.run([sys.executable, '-c', os.environ['WATCH_CHILD']])"


def test_launcher_kinds():
    assert launcher_kind(["/venv/bin/python", "/venv/bin/deepspeed", "--num_gpus", "2", "x.py"]) is (
        LauncherKind.DEEPSPEED_RUNNER
    )
    assert launcher_kind(["python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=x"]) is (
        LauncherKind.DEEPSPEED_LAUNCH
    )
    assert launcher_kind(["/venv/bin/python", "/venv/bin/torchrun", "--nproc_per_node", "2"]) is LauncherKind.TORCHRUN
    assert launcher_kind(["python", "launch/supervise.py", "deepspeed"]) is LauncherKind.SUPERVISOR
    assert launcher_kind(["python", "-u", "launch/distill.py", "--local_rank=0"]) is None
    assert launcher_kind(["bash", "-c", "pytest"]) is None


def test_a_rank_notices_its_launcher_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, "torch.distributed.run"],
        cwd=REPO,
        env=run_env({"WATCH_CHILD": CHILD}),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout.readline().split() == ["WATCHING", f"[{parent.pid}]"]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        t0 = time.time()
        line = parent.stdout.readline().strip()  # the orphaned child still writes to our pipe
        assert line == f"GONE its launcher (torchrun, pid {parent.pid}) is gone"
        assert time.time() - t0 < 5
    finally:
        os.killpg(parent.pid, signal.SIGKILL)


def test_the_note_for_a_gone_bare_runner_and_the_supervisors_closing_line():
    """Issue 25: the routes where DeepSpeed's runner decides the exit code say so; adakd-launch ends in one line."""
    import psutil

    from adakd_ds.engine.guard.launcher_watch import gone_launcher_note
    from adakd_ds.engine.guard.supervisor import outcome_line

    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = psutil.Process(gone.pid)  # a launcher that then dies and is reaped
    gone.kill()
    gone.wait()
    alive = psutil.Process()  # this test process stands in for a launcher that is still there
    runner_gone = [(alive, LauncherKind.DEEPSPEED_LAUNCH), (dead, LauncherKind.DEEPSPEED_RUNNER)]
    note = gone_launcher_note(runner_gone)
    assert note and f"deepspeed launcher (pid {gone.pid})" in note and "adakd-launch deepspeed ..." in note
    assert gone_launcher_note([(alive, LauncherKind.DEEPSPEED_RUNNER)]) is None  # still there: it waits for us
    assert gone_launcher_note([*runner_gone, (alive, LauncherKind.SUPERVISOR)]) is None  # adakd-launch gives 75
    assert outcome_line(75, [signal.SIGINT]) == (
        "adakd-launch: stopped by SIGINT: a checkpoint was saved; exit 75 (run the same command again to resume)"
    )
    assert outcome_line(0, []) is None and outcome_line(2, []) is None
    assert "killed by SIGTERM; exit 143" in outcome_line(143, [], signal.SIGTERM)
