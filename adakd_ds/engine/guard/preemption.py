"""Preemption: a signal sets a flag; all ranks agree at the next step boundary, save, and exit with EXIT_PREEMPTED.

The signal may reach only some ranks (Slurm sends it to the batch script, a user to one pid), so the decision is an
all-reduce of the flag, taken by every rank at the same point of every step.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was written, run the same command again to resume
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C during setup, before this watch is installed (nothing to save)
EXIT_BAD_INPUT = 2
DRILL_ENV = "ADAKD_PREEMPT_AT_STEP"  # "STEP" or "STEP:RANK": act as if signalled after that step (drills, tests)


class PreemptionWatch:
    """Catches SIGTERM/SIGUSR1; a second signal while saving is absorbed, so it cannot corrupt the checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SIGINT: a Ctrl-C checkpoints too

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> PreemptionWatch:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def note_step(self, step: int, rank: int) -> None:
        """A preemption drill: deterministic, unlike a signal, so a test can stop a run at an exact step."""
        spec = os.environ.get(DRILL_ENV, "")
        if not spec:
            return
        at_step, _, at_rank = spec.partition(":")
        if step == int(at_step) and (not at_rank or rank == int(at_rank)):
            self.requested = True
            self.signal_name = self.signal_name or "drill"

    def request(self, reason: str) -> None:
        """Preempt for a reason other than a signal (the launcher is gone); safe from any thread."""
        self.requested = True
        self.signal_name = self.signal_name or reason

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def agreed(self, device: torch.device | str = "cpu") -> bool:
        """True on every rank if any rank was signalled; a collective, so every rank calls it every step."""
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.long, device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
