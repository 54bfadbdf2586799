"""Rollback: resuming from a checkpoint older than the newest complete one sets the newer ones aside.

A rollback is deliberate (`--resume` of an older checkpoint), or `auto` following `latest` after a crash between a
save's completion marker and its `latest` update. Why: after a rollback the abandoned run's later checkpoints used to stay in `checkpoints/`, where
`--resume auto` could pick them (the highest step) and rotation counted them. They are moved, whole and untouched,
to `checkpoints/abandoned/<time>/`, out of both, and the run says so in one line; `latest` is pointed at the
checkpoint the run continues from, so an interruption before the next save resumes from there.
"""

from __future__ import annotations

import time
from pathlib import Path

from adakd_ds.checkpoint.manager import LATEST, atomic_write_text, list_tags, step_of

ABANDONED_DIRNAME = "abandoned"


def set_aside_newer(resumed: Path, own_root: Path) -> str | None:
    """Move the complete checkpoints newer than `resumed` out of the run's own checkpoint folder; rank 0 only.

    A newer PARTIAL one is an interrupted save, not a rollback: it is left to be overwritten as before. A checkpoint
    resumed from another run's folder changes nothing there. Returns the line to print, or None.
    """
    root = resumed.parent
    if not root.is_dir() or root.resolve() != own_root.resolve():
        return None
    complete, _ = list_tags(root)
    newer = [p for p in complete if step_of(p) > step_of(resumed)]
    if not newer:
        return None
    dest = root / ABANDONED_DIRNAME / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for tag in sorted(newer, key=step_of):
        tag.rename(dest / tag.name)
    atomic_write_text(root / LATEST, resumed.name)
    names = ", ".join(p.name for p in sorted(newer, key=step_of))
    return f"resuming from {resumed.name}, not the newest: set aside the newer checkpoint(s) {names} in {dest}"
