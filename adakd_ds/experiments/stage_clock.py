"""Wall clock, CPU time and machine load of each pipeline stage, kept on disk so that a rerun keeps the first times.

Why: a rerun of a finished quickstart skips every stage; it must not report its own few seconds as the run's time.
And the wall clock of a 2-core machine shared with other jobs says more about the neighbours than about the work, so
each stage also records its CPU time (user + sys of this process and every child it waited for, ranks included)
and the 1-minute load average before and after it.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageTime:
    wall_s: float
    cpu_s: float  # user + sys, this process and its reaped children (the ranks of a torchrun stage included)
    load_before: float  # 1-minute load average
    load_after: float

    def describe(self) -> str:
        return (f"{self.wall_s:.0f} s wall, {self.cpu_s:.0f} s CPU (user + sys), "
                f"load {self.load_before:.1f} -> {self.load_after:.1f} on {os.cpu_count()} cores")  # fmt: skip


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load() -> float:
    return os.getloadavg()[0]


class StageClock:
    """name -> StageTime of the run that actually did the stage, persisted in a JSON file next to the outputs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = json.loads(path.read_text()) if path.is_file() else {}
        self.times: dict[str, StageTime] = {name: StageTime(**t) for name, t in raw.items()}
        self.skipped: list[str] = []  # stages found done in this invocation
        self.order: list[str] = []  # every stage this invocation went through, in order

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time the block; the time is recorded (and saved) only when the block finishes without an error."""
        t0, c0, l0 = time.perf_counter(), _cpu_seconds(), _load()
        yield
        self.times[name] = StageTime(time.perf_counter() - t0, _cpu_seconds() - c0, l0, _load())
        self.order.append(name)
        self._save()

    def skip(self, name: str) -> str:
        """Note a stage found done; returns the line to print, with the time of the run that did it when known."""
        self.skipped.append(name)
        self.order.append(name)
        earlier = self.times.get(name)
        return "done earlier, skipped" + (f" (it took {earlier.describe()})" if earlier else "")

    def total(self) -> tuple[StageTime | None, list[str]]:
        """The sum over this invocation's stages of their first-run times, and the stages with no recorded time."""
        known = [self.times[n] for n in self.order if n in self.times]
        missing = [n for n in self.order if n not in self.times]
        if not known:
            return None, missing
        wall, cpu = sum(t.wall_s for t in known), sum(t.cpu_s for t in known)
        return StageTime(wall, cpu, known[0].load_before, known[-1].load_after), missing

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
