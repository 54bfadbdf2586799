"""Resume a ZeRO-3 checkpoint on a different number of ranks, optimizer state included.

DeepSpeed's own ZeRO-3 checkpoints are rigid: `load_checkpoint` refuses a checkpoint of another data-parallel size
(ZeRORuntimeException). DeepSpeed 0.19.8 supports stage 3 in its universal checkpoint (UC) path (since PR #5475), so
this module uses it and adds nothing of its own to the numerics:

1. `convert_to_universal` runs `deepspeed.checkpoint.ds_to_universal` once (rank 0), which merges the per-rank flat
   fp32 / exp_avg / exp_avg_sq partitions into one full tensor per parameter under <tag>/universal/zero/<name>/ and
   copies the model-states files (client state, lr scheduler, step counters).
2. `load_resharded` loads that folder with `engine.load_checkpoint` under DeepSpeed's `load_universal` mode, which
   re-partitions every state for the live engine's world size and sets the optimizer step.

The conversion lives inside the tag directory, so it is reused by later resumes and rotated away with its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from adakd_ds.checkpoint.manager import MARKER, CheckpointError, atomic_write_text

UNIVERSAL_DIRNAME = "universal"  # <tag_dir>/universal: the converted checkpoint, loaded as load_dir=<tag_dir>
DONE = "CONVERTED.json"  # written last, so a conversion cut short is redone, never loaded
_OPTIM_GLOB = "*zero_pp_rank_*_mp_rank_00_optim_states.pt"


def checkpoint_world_size(tag_dir: Path) -> int:
    """The number of ranks that wrote the checkpoint: COMPLETE.json's world_size, else the count of optimizer shards."""
    tag_dir = Path(tag_dir)
    marker = tag_dir / MARKER
    if marker.is_file():
        try:
            return int(json.loads(marker.read_text(encoding="utf-8"))["world_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{marker}: no integer 'world_size' ({exc})") from None
    shards = list(tag_dir.glob(_OPTIM_GLOB))
    if not shards:
        raise CheckpointError(f"{tag_dir}: neither {MARKER} nor any ZeRO optimizer shard (*_optim_states.pt)")
    return len(shards)


def universal_dir(tag_dir: Path) -> Path:
    return Path(tag_dir) / UNIVERSAL_DIRNAME


def is_converted(tag_dir: Path) -> bool:
    return (universal_dir(tag_dir) / DONE).is_file()


def convert_to_universal(tag_dir: Path, force: bool = False) -> Path:
    """Write <tag_dir>/universal with DeepSpeed's ds_to_universal (single process; call it on one rank only).

    The conversion goes to a temporary folder that is renamed into place, then marked done: a crash leaves no
    half-converted checkpoint that a resume could load.
    """
    from deepspeed.checkpoint import ds_to_universal

    tag_dir = Path(tag_dir)
    final = universal_dir(tag_dir)
    if is_converted(tag_dir) and not force:
        return final
    if not (tag_dir / MARKER).is_file():
        raise CheckpointError(f"{tag_dir}: no {MARKER}; only a complete checkpoint can be converted")
    source = checkpoint_world_size(tag_dir)
    shards = len(list(tag_dir.glob(_OPTIM_GLOB)))
    if shards != source:
        raise CheckpointError(f"{tag_dir}: {shards} ZeRO optimizer shards (*_optim_states.pt) for {source} ranks")
    for stale in tag_dir.glob(f".{UNIVERSAL_DIRNAME}.tmp*"):  # left by a conversion that crashed
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp_root = tag_dir / f".{UNIVERSAL_DIRNAME}.tmp{os.getpid()}"
    tmp = tmp_root / UNIVERSAL_DIRNAME
    args = argparse.Namespace(
        input_folder=str(tag_dir),
        output_folder=str(tmp),
        num_extract_workers=1,  # 1: in this process (no process pool); the work is file I/O bound
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    ds_to_universal.main(args)
    os.replace(tmp, final)
    shutil.rmtree(tmp_root, ignore_errors=True)  # holds only ds_to_universal's 'latest_universal' file
    atomic_write_text(final / DONE, json.dumps({"source_world_size": source, "tool": "ds_to_universal"}))
    return final


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def load_resharded(engine: Any, tag_dir: Path) -> dict[str, Any]:
    """Load a ZeRO-3 checkpoint written by any world size into the live engine; returns the client state.

    Every rank calls it, with the engine built as for a fresh run (any ds_config; the UC switch is set here for the
    duration of the load). Rank 0 converts the checkpoint (once) while the others wait. Restores the fp32 master
    params and the module's partitions, Adam's exp_avg / exp_avg_sq and step, the lr scheduler's state and
    DeepSpeed's global_steps / global_samples. Not restored: the per-rank RNG states (they do not map onto another
    world size). Always loads the optimizer: DeepSpeed 0.19.8's ZeRO-3 UC load with load_optimizer_states=False
    fails (it reads a 'latest' file that a UC folder does not have).
    """
    tag_dir = Path(tag_dir)
    if engine.zero_optimization_stage() != 3:
        raise CheckpointError(
            f"{tag_dir}: load_resharded handles ZeRO stage 3 engines, this one is stage "
            f"{engine.zero_optimization_stage()}"
        )
    error = ""
    if _rank() == 0:
        try:
            convert_to_universal(tag_dir)
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank after the barrier)
            error = f"{type(exc).__name__}: {exc}"
    error = _broadcast_text(error)
    if error:
        raise CheckpointError(f"{tag_dir}: universal checkpoint conversion failed: {error}")
    # DeepSpeed reads this switch ({"checkpoint": {"load_universal": true}}) only inside load_checkpoint, so setting it
    # for the load alone is the same as building the engine with it, and keeps later same-size loads rigid.
    config = engine._config
    previous = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        path, client_state = engine.load_checkpoint(
            str(tag_dir),
            tag=UNIVERSAL_DIRNAME,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
    finally:
        config.load_universal_checkpoint = previous
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the universal checkpoint {universal_dir(tag_dir)}")
    _unshare_step_tensors(engine)
    return client_state or {}


def _unshare_step_tensors(engine: Any) -> int:
    """Give every optimizer sub-group its own Adam step tensor; returns how many were shared.

    DeepSpeed 0.19.8's ZeRO-3 UC loader (load_hp_checkpoint_state_from_checkpoint_dir_stage3) assigns ONE step
    tensor object to every sub-group, and torch Adam/AdamW increment it in place, so with k sub-groups (more
    partitioned elements per rank than sub_group_size) the step advanced k times per optimizer step and the bias
    correction went wrong after a resume. Seen in tests/engine/test_reshard.py with sub_group_size 1500.
    """
    inner = getattr(engine.optimizer, "optimizer", None)
    states = getattr(inner, "state", {})
    seen: set[int] = set()
    shared = 0
    for state in states.values():
        step = state.get("step") if isinstance(state, dict) else None
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
                shared += 1
            seen.add(id(step))
    return shared


def _broadcast_text(text: str) -> str:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m adakd_ds.checkpoint.reshard <tag_dir>`: convert ahead of the resume, e.g. on a login node."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("tag_dir", type=Path)
    ap.add_argument("--force", action="store_true", help="convert again even if a finished conversion is there")
    ns = ap.parse_args(argv)
    try:
        out = convert_to_universal(ns.tag_dir, force=ns.force)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"universal checkpoint of {checkpoint_world_size(ns.tag_dir)} ranks written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
