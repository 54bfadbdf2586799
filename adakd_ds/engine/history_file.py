"""history.jsonl: appended per step on rank 0, and on resume cut back to the checkpoint's step, so the file shows one trajectory.

Why: after a crash the steps between the last checkpoint and the crash are trained again; their first lines used to
stay, so the file held those steps twice with different numbers. TensorBoard's `purge_step` does the same for its
event files. Rewritten atomically (temp file + rename): a crash here leaves the old file or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def truncate_history(path: Path, step: int) -> int:
    """Keep the lines of steps <= `step` (all of them for step 0: none); returns how many lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record_step = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            record_step = step + 1  # a torn last line from a crash: drop it
        if record_step <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class JsonlHistory(list):
    """A list that also appends each entry to a jsonl file (rank 0), flushed per step so a crash keeps it."""

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self.path = path

    def append(self, item: dict[str, float]) -> None:
        super().append(item)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(item) + "\n")
