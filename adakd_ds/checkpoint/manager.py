"""Crash-safe checkpoints: a checkpoint counts only once every rank has written it and rank 0 has marked it complete.

Layout under <output.dir>/checkpoints/:
    step_00000008/                    one DeepSpeed tag: the sharded ZeRO-3 model and optimizer states of every rank
        COMPLETE.json                 written by rank 0 after a barrier: step, world size, time (the completion marker)
        rng_rank{r}.pt                python / numpy / torch RNG states of rank r
        trainer_state.json            the shared training state, human-readable
    latest                            the newest complete tag, replaced atomically after the marker
The teacher is never saved: it is an input of the run, like the data.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from adakd_ds.checkpoint import save_errors

CKPT_DIRNAME = "checkpoints"
MARKER = "COMPLETE.json"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
FAULT_ENV = "ADAKD_FAULT"  # "save_kill:<rank>:<step>": that rank os._exit(13)s mid-save at that step (tests only)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from, with the reason in one line."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _rank_world() -> tuple[int, int]:
    """(rank, world_size), (0, 1) without a process group; kept here so checkpoint/ needs nothing from loss/."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, then rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _maybe_inject_fault(step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith("save_kill:"):
        return
    _, rank, at_step = spec.split(":")
    if _rank_world()[0] == int(rank) and step == int(at_step):
        os._exit(13)


def _maybe_kill_job(step: int, moment: str) -> None:
    """ADAKD_FAULT="job_kill:<moment>:<step>": rank 0 SIGKILLs its whole process group (launcher and ranks: kill -9
    of the job) at that moment of that step's save (tests only). Moments: shards, marker, latest."""
    if os.environ.get(FAULT_ENV, "") == f"job_kill:{moment}:{step}" and _rank_world()[0] == 0:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / MARKER).is_file()


def _step_of(tag_dir: Path) -> int:
    try:
        return int(tag_dir.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


step_of = _step_of  # the step number in a tag dir's name (-1 for anything else)


def list_tags(root: Path) -> tuple[list[Path], list[Path]]:
    """(complete, partial) tag dirs under root, each sorted by step."""
    if not root.is_dir():
        return [], []
    tags = sorted((p for p in root.iterdir() if p.is_dir() and _step_of(p) >= 0), key=_step_of)
    return [p for p in tags if is_complete(p)], [p for p in tags if not is_complete(p)]


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """The tag dir to resume from: `auto` (newest complete, or a fresh start), `none`, or a path."""
    if spec == "none":
        return None
    if spec == "auto":
        complete, partial = list_tags(Path(output_dir) / CKPT_DIRNAME)
        newest = followed_latest(Path(output_dir) / CKPT_DIRNAME, complete)
        skipped = [p.name for p in partial if newest is None or _step_of(p) > _step_of(newest)]
        if skipped:
            warnings.warn(f"ignoring partial checkpoint(s) {skipped} (interrupted while saving)", stacklevel=2)
        return newest
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"--resume {spec}: no such checkpoint directory")
    if is_complete(path):
        return path
    complete, partial = list_tags(path / CKPT_DIRNAME if (path / CKPT_DIRNAME).is_dir() else path)
    if complete:
        return complete[-1]
    if partial or path.name.startswith("step_"):
        raise CheckpointError(
            f"--resume {spec}: only a partial checkpoint is there (no {MARKER}; it was interrupted while saving)"
        )
    raise CheckpointError(f"--resume {spec}: no checkpoint found in this directory")


def followed_latest(root: Path, complete: list[Path]) -> Path | None:
    """The tag `latest` names when it is complete (after a rollback it is NOT the highest step); else the newest
    complete one, with a warning when `latest` pointed somewhere unusable."""
    latest = root / LATEST
    if latest.is_file():
        tag = root / latest.read_text(encoding="utf-8").strip()
        if tag in complete:
            return tag
        warnings.warn(
            f"{latest} names {tag.name}, which is missing or incomplete: using the newest complete one", stacklevel=3
        )
    return complete[-1] if complete else None


def read_marker(tag_dir: Path) -> dict[str, Any]:
    return json.loads((tag_dir / MARKER).read_text(encoding="utf-8"))


class CheckpointManager:
    """Saves, marks, rotates and loads the DeepSpeed checkpoints of one run."""

    def __init__(self, output_dir: str | Path, keep_last: int) -> None:
        self.root = Path(output_dir) / CKPT_DIRNAME
        self.keep_last = max(1, keep_last)

    def save(
        self,
        engine: Any,
        step: int,
        client_state: dict[str, Any],
        write_extras: Callable[[Path], None] | None = None,
    ) -> Path:
        """Every rank calls this; it returns only once the checkpoint is complete everywhere.

        `write_extras(tag_dir)` runs on rank 0 before the marker (the model config and tokenizer, so that
        `adakd-export` can turn the checkpoint into a HF model on its own).
        """
        rank, world = _rank_world()
        tag_dir = self.root / tag_for(step)
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists() and not is_complete(tag_dir):
                shutil.rmtree(tag_dir)  # a leftover of a crashed save: stale shards must not mix with new ones
        _barrier()
        save_errors.maybe_fail_writes(engine, step, rank)
        # a rank that leaves DeepSpeed's save early (a full disk) still matches its closing barrier
        error = save_errors.run_step(
            lambda: engine.save_checkpoint(
                str(self.root), tag=tag_dir.name, client_state=client_state, save_latest=False
            ),
            tag_dir,
            after_failure=_barrier,
        )
        _maybe_kill_job(step, "shards")
        error = error or save_errors.run_step(lambda: torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt"), tag_dir)
        _maybe_inject_fault(step)
        save_errors.agree(error, tag_dir)  # in place of a barrier: every rank learns whether any write failed
        if rank == 0:
            error = save_errors.run_step(
                lambda: self._finish(tag_dir, step, world, client_state, write_extras), tag_dir
            )
        save_errors.agree(error if rank == 0 else None, tag_dir)
        return tag_dir

    def _finish(
        self,
        tag_dir: Path,
        step: int,
        world: int,
        client_state: dict[str, Any],
        write_extras: Callable[[Path], None] | None,
    ) -> None:
        """Rank 0, once every shard is on disk: metadata, the completion marker, then `latest`, then rotation."""
        if write_extras is not None:
            write_extras(tag_dir)
        atomic_write_text(tag_dir / STATE_FILE, json.dumps(_jsonable(client_state), indent=2, sort_keys=True))
        marker = {"step": step, "world_size": world, "time": time.time()}
        atomic_write_text(tag_dir / MARKER, json.dumps(marker))
        _maybe_kill_job(step, "marker")
        atomic_write_text(self.root / LATEST, tag_dir.name)
        _maybe_kill_job(step, "latest")
        self._rotate()

    def _rotate(self) -> None:
        complete, partial = list_tags(self.root)
        newest = complete[-1]
        for old in complete[: -self.keep_last]:
            if old != newest:
                shutil.rmtree(old, ignore_errors=True)
        for stale in partial:
            if _step_of(stale) < _step_of(newest):
                shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def load(engine: Any, tag_dir: Path, load_optimizer: bool = True) -> dict[str, Any]:
        """Restore the engine (model, optimizer, lr scheduler) and this rank's RNG; returns the client state."""
        path, client_state = engine.load_checkpoint(
            str(tag_dir.parent),
            tag=tag_dir.name,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=load_optimizer,
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {tag_dir}")
        rank, _ = _rank_world()
        rng_file = tag_dir / f"rng_rank{rank}.pt"
        if rng_file.is_file() and read_marker(tag_dir).get("world_size") == _rank_world()[1]:
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state or {}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, int | float | str | bool) or obj is None:
        return obj
    return repr(type(obj).__name__)
