"""Wall clock, CPU time and machine load of each pipeline stage, kept on disk so that a rerun keeps the first times.

Why: a rerun of a finished quickstart skips every stage; it must not report its own few seconds as the run's time.
And the wall clock of a 2-core machine shared with other jobs says more about the neighbours than about the work, so
each stage also records its CPU time and the 1-minute load average before and after it.

Stages may run side by side (the quickstart's lanes), so a stage's CPU time is its own thread's (an in-process
evaluation) plus the children that thread waited for, as the kernel reported them when reaping each one
(``wait_child``, ranks included); and the run's wall clock is the union of the stages' intervals, not their sum.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageTime:
    wall_s: float
    cpu_s: float  # user + sys of the stage's thread and of the children it reaped (a torchrun stage's ranks too)
    load_before: float  # 1-minute load average
    load_after: float
    started_at: float | None = None  # epoch seconds; None in files written before stages ran side by side

    def describe(self) -> str:
        return (f"{self.wall_s:.0f} s wall, {self.cpu_s:.0f} s CPU (user + sys), "
                f"load {self.load_before:.1f} -> {self.load_after:.1f} on {os.cpu_count()} cores")  # fmt: skip


_charged = threading.local()  # per thread: CPU seconds of the children reaped inside the current measure()


def wait_child(proc: subprocess.Popen) -> int:
    """Reap ``proc`` and charge its CPU time (its own and its reaped children's, as ``os.wait4`` reports it) to
    the stage this thread is measuring, if any; returns the exit code, as ``Popen.wait`` would."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if getattr(_charged, "cpu_s", None) is not None:
        _charged.cpu_s += usage.ru_utime + usage.ru_stime
    return proc.returncode


def _thread_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_THREAD)
    return own.ru_utime + own.ru_stime


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval: stages that overlapped count once."""
    covered, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            covered += b - max(a, end)
            end = b
    return covered


def _load() -> float:
    return os.getloadavg()[0]


class StageClock:
    """name -> StageTime of the run that actually did the stage, persisted in a JSON file next to the outputs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # stages of several lanes record and save through one clock
        raw = json.loads(path.read_text()) if path.is_file() else {}
        self.times: dict[str, StageTime] = {name: StageTime(**t) for name, t in raw.items()}
        self.skipped: list[str] = []  # stages found done in this invocation
        self.order: list[str] = []  # every stage this invocation went through, in order

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time the block; the time is recorded (and saved) only when the block finishes without an error."""
        started, t0, c0, l0 = time.time(), time.perf_counter(), _thread_cpu_seconds(), _load()
        _charged.cpu_s = 0.0
        try:
            yield
            cpu = _thread_cpu_seconds() - c0 + _charged.cpu_s
        finally:
            _charged.cpu_s = None
        self.record(name, StageTime(time.perf_counter() - t0, cpu, l0, _load(), started))

    def record(self, name: str, took: StageTime) -> None:
        """Keep (and save) the time of a stage that this invocation did."""
        with self._lock:
            self.times[name] = took
            self.order.append(name)
            self._save()

    def skip(self, name: str) -> str:
        """Note a stage found done; returns the line to print, with the time of the run that did it when known."""
        with self._lock:
            self.skipped.append(name)
            self.order.append(name)
        earlier = self.times.get(name)
        return "done earlier, skipped" + (f" (it took {earlier.describe()})" if earlier else "")

    def total(self) -> tuple[StageTime | None, list[str]]:
        """This invocation's stages, at their first-run times: the wall clock they covered (their sum where a stage
        has no start time), their summed CPU time; and the stages with no recorded time.

        The sums are math.fsum (exactly rounded, so independent of the order): stages of side-by-side lanes finish
        in one order in the first run and are skipped in another in a rerun, and a plain sum of the same times
        then differs in its last bit (issue 25: 334.1115009999999 against 334.111501). For the same reason the
        stages are taken in the order the file keeps (the order they were first done), not this invocation's."""
        went = set(self.order)
        known = [t for n, t in self.times.items() if n in went]  # in the order the stages were first done
        missing = [n for n in self.order if n not in self.times]
        if not known:
            return None, missing
        first, last, wall = known[0], known[-1], math.fsum(t.wall_s for t in known)
        spans = [(t.started_at, t.started_at + t.wall_s, t) for t in known if t.started_at is not None]
        if len(spans) == len(known):
            wall = _union_length([(a, b) for a, b, _ in spans])
            first, last = min(spans, key=lambda s: s[0])[2], max(spans, key=lambda s: s[1])[2]
        return StageTime(wall, math.fsum(t.cpu_s for t in known), first.load_before, last.load_after), missing

    def summary(self) -> dict[str, object]:
        """For the results JSON: the total, the stages skipped in this invocation and every stage's time."""
        total, missing = self.total()
        return {
            "total": asdict(total) if total else None,
            "stages_without_time": missing,
            "skipped_this_run": self.skipped,
            "stages": {n: asdict(self.times[n]) for n in self.order if n in self.times},
        }

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({n: asdict(t) for n, t in self.times.items()}, indent=2))
        os.replace(tmp, self.path)
