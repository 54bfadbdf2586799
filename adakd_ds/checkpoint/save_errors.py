"""A save that fails on some rank (a full disk: [Errno 28]) ends as one line and exit 1, agreed by every rank.

Why: a rank whose write failed used to raise out of the middle of the save while the others waited in a barrier;
each rank then died with its own traceback. Here each write step of a save catches OSError, and the ranks agree
through collectives that every rank calls in the same order whatever happened: DeepSpeed's own closing barrier is
matched by a barrier on the ranks that left its save early, and the failure flags travel in one all-reduce that
takes the place of the save's barrier. The previous checkpoint is untouched (`latest` still names it), and the
half-written folder has no completion marker, so the next run resumes from the previous one once space is freed.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

FAULT_PREFIX = "save_enospc:"  # ADAKD_FAULT="save_enospc:<rank>:<step>": DeepSpeed's optimizer-state write fails


class CheckpointSaveError(RuntimeError):
    """A save failed; `report` is True on exactly one rank (the lowest that failed), which prints the line."""

    def __init__(self, message: str, report: bool) -> None:
        super().__init__(message)
        self.report = report


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _free_space(path: Path) -> str:
    free = _free_bytes(path)
    return "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free there"


def describe(exc: OSError, tag_dir: Path) -> str:
    where = exc.filename or tag_dir
    return f"saving checkpoint {tag_dir.name} failed: [Errno {exc.errno}] {exc.strerror}: {where} ({_free_space(Path(where))})"


# torch.save reports a failed write as RuntimeError ("iostream error", "unexpected pos"), without errno or path;
# when it comes with less than this much space left where the checkpoint goes, it is a full disk.
FULL_DISK_BYTES = 64 * 2**20


def _as_full_disk(exc: RuntimeError, where: Path) -> OSError | None:
    free = _free_bytes(where)
    if free is None or free >= FULL_DISK_BYTES:
        return None
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (torch.save: {str(exc).splitlines()[0]})", str(where))


def run_step(action: Callable[[], Any], where: Path, after_failure: Callable[[], None] | None = None) -> OSError | None:
    """Run one write step of a save into `where`; a write error is returned (after `after_failure`, which matches
    the collectives the step skipped). Any other error (a lost rank, say) propagates as before."""
    try:
        action()
    except OSError as exc:
        error: OSError | None = exc
    except RuntimeError as exc:
        error = _as_full_disk(exc, where)
        if error is None:
            raise
    else:
        return None
    if after_failure is not None:
        after_failure()
    return error


def agree(error: OSError | None, tag_dir: Path) -> None:
    """Every rank calls this at the same point: raises CheckpointSaveError on all ranks if any rank failed."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    flags = torch.zeros(world, dtype=torch.long)
    flags[rank] = int(error is not None)
    if world > 1:
        dist.all_reduce(flags)
    failed = [r for r in range(world) if flags[r]]
    if not failed:
        return
    if error is not None:
        raise CheckpointSaveError(describe(error, tag_dir) + f" on rank {rank}", report=rank == failed[0])
    raise CheckpointSaveError(f"saving checkpoint {tag_dir.name} failed on rank(s) {failed}", report=False)


def maybe_fail_writes(engine: Any, step: int, rank: int) -> None:
    """The full-disk drill: make this rank's DeepSpeed optimizer-state write raise ENOSPC at `step`."""
    spec = os.environ.get("ADAKD_FAULT", "")
    if not spec.startswith(FAULT_PREFIX):
        return
    at_rank, at_step = (int(x) for x in spec[len(FAULT_PREFIX) :].split(":"))
    if rank != at_rank or step != at_step:
        return
    original = engine.checkpoint_engine.save

    def full_disk(state_dict: Any, path: str) -> None:
        if "optim_states" in os.path.basename(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        original(state_dict, path)

    engine.checkpoint_engine.save = full_disk
