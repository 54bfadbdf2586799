"""What the benchmarks share: honest peak memory, the machine's load, optional peers, one measured run per process.

Peak memory: the peak RSS is reset after the inputs exist (Linux: writing 5 to /proc/self/clear_refs resets VmHWM),
so a temporary made while building the inputs cannot hide growth; the growth is VmHWM after the run minus the RSS
before it. CPU time is reported next to wall time: on a shared machine the wall time is mostly the neighbours'.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def peak_mib() -> float:
    kib = _status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and core count, for every table."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            one, five, fifteen = fh.read().split()[:3]
    except OSError:
        return "load unknown"
    return f"load average {one}, {five}, {fifteen} on {os.cpu_count()} cores"


def missing_peer(module: str, extra: str) -> str | None:
    """None when `module` imports; else the one-line note that its benchmark row is skipped."""
    if importlib.util.find_spec(module) is not None:
        return None
    return f"skipped: `{module}` is not installed (a bench-only extra: pip install {extra})"


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_growth_mib: float
    value: float


def measure_once(run: Callable[[], float]) -> Measured:
    """One run after the inputs exist: wall and process CPU time, and the peak RSS growth above the inputs."""
    reset_peak()
    base = rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    value = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Measured(wall, cpu, peak_mib() - base, value)


def run_json(script: str, args: list[str]) -> dict:
    """Run `script args` in a fresh interpreter and parse the JSON object on its last output line."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
