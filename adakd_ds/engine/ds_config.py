"""DeepSpeed config files: load them, fill their "auto" values from the RunConfig, derive the teacher's.

The RunConfig is the single source of truth for batch sizes, lr, clipping and dtype; a DeepSpeed JSON may say
"auto" for them or repeat them, but a value that contradicts the RunConfig is an error, never silently used.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

from adakd_ds.config.schema import DType, RunConfig

AUTO = "auto"

# Hidden-size dependent ZeRO-3 buckets, filled like TRL's prepare_deepspeed (trl/models/utils.py).
BUCKET_KEYS = ("reduce_bucket_size", "stage3_param_persistence_threshold", "stage3_prefetch_bucket_size")

_STAGES_TEACHER = (0, 3)  # 0: replicated teacher (fits in memory), 3: partitioned like TRL's reference model


class DSConfigError(ValueError):
    """A DeepSpeed config that is missing, unreadable, or contradicts the RunConfig."""


def load_ds_config(path: str) -> dict[str, Any]:
    """Read a DeepSpeed JSON file; a missing file or bad JSON names the file (and line) at fault."""
    if not os.path.isfile(path):
        raise DSConfigError(f"DeepSpeed config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DSConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DSConfigError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def _where(source: str | None) -> str:
    return source or "DeepSpeed config"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _fill(node: dict[str, Any], key: str, value: Any, where: str, dotted: str, rc_name: str) -> None:
    """Replace "auto" by `value`; an explicit value must equal it."""
    if key not in node:
        node[key] = value
        return
    current = node[key]
    if current == AUTO:
        node[key] = value
    elif not _same(current, value):
        raise DSConfigError(f"{where}: '{dotted}' = {current!r} contradicts {rc_name} = {value!r}; set it to \"auto\"")


def find_auto(ds: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value still equal to "auto"."""
    found: list[str] = []
    if isinstance(ds, dict):
        for key, value in ds.items():
            found += find_auto(value, f"{prefix}{key}.")
    elif isinstance(ds, list):
        for i, value in enumerate(ds):
            found += find_auto(value, f"{prefix}{i}.")
    elif ds == AUTO:
        found.append(prefix.rstrip("."))
    return found


def assert_no_auto(ds: dict[str, Any], source: str | None = None) -> None:
    """DeepSpeed itself rejects "auto"; say which key is left, and where, before it does."""
    left = find_auto(ds)
    if left:
        hint = " (pass hidden_size to fill_auto or use fill_bucket_sizes)" if set(left) & _bucket_paths() else ""
        raise DSConfigError(f"{_where(source)}: still 'auto' after filling: {', '.join(left)}{hint}")


def _bucket_paths() -> set[str]:
    return {f"zero_optimization.{k}" for k in BUCKET_KEYS}


def fill_bucket_sizes(ds: dict[str, Any], hidden_size: int) -> dict[str, Any]:
    """Return a copy with the "auto" ZeRO-3 bucket sizes set from the model's hidden size (TRL's formula)."""
    out = copy.deepcopy(ds)
    zero = out.get("zero_optimization", {})
    values = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_param_persistence_threshold": 10 * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
    }
    for key, value in values.items():
        if zero.get(key) == AUTO:
            zero[key] = value
    return out


def fill_auto(
    ds: dict[str, Any],
    run_cfg: RunConfig,
    world_size: int,
    *,
    hidden_size: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Return a copy with every RunConfig-owned "auto" filled; raise if an explicit value contradicts the RunConfig.

    Bucket sizes ("auto" in BUCKET_KEYS) are filled only when `hidden_size` is given; any other "auto" left over
    (in a section we do not own, e.g. a scheduler) is an error, since DeepSpeed would fail on it later.
    """
    where = _where(source)
    if world_size < 1:
        raise DSConfigError(f"{where}: world_size must be >= 1, got {world_size}")
    tr = run_cfg.train
    out = copy.deepcopy(ds)
    _fill(
        out,
        "train_micro_batch_size_per_gpu",
        tr.micro_batch,
        where,
        "train_micro_batch_size_per_gpu",
        "train.micro_batch",
    )
    _fill(out, "gradient_accumulation_steps", tr.grad_accum, where, "gradient_accumulation_steps", "train.grad_accum")
    _fill(
        out,
        "train_batch_size",
        tr.micro_batch * tr.grad_accum * world_size,
        where,
        "train_batch_size",
        f"train.micro_batch * train.grad_accum * world_size ({world_size})",
    )
    _fill(out, "gradient_clipping", float(tr.grad_clip), where, "gradient_clipping", "train.grad_clip")
    if "optimizer" in out:  # absent for the teacher, and for a client optimizer
        params = out["optimizer"].setdefault("params", {})
        _fill(params, "lr", float(tr.lr), where, "optimizer.params.lr", "train.lr")
        _fill(
            params, "weight_decay", float(tr.weight_decay), where, "optimizer.params.weight_decay", "train.weight_decay"
        )

    bf16 = tr.dtype is DType.BF16
    section = out.setdefault("bf16", {})
    if not isinstance(section, dict):
        raise DSConfigError(f'{where}: \'bf16\' must be an object like {{"enabled": "auto"}}, got {section!r}')
    _fill(section, "enabled", bf16, where, "bf16.enabled", f"train.dtype == bf16 ({tr.dtype.value})")
    fp16 = out.get("fp16")
    if isinstance(fp16, dict):
        if fp16.get("enabled") == AUTO:
            fp16["enabled"] = False
        elif fp16.get("enabled"):
            raise DSConfigError(f"{where}: 'fp16.enabled' is true, but adakd-ds trains in fp32 or bf16 (train.dtype)")

    zero = out.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        raise DSConfigError(f"{where}: needs a 'zero_optimization' object with a 'stage'")
    if hidden_size is not None:
        out = fill_bucket_sizes(out, hidden_size)
    left = [p for p in find_auto(out) if p not in _bucket_paths()]
    if left:
        raise DSConfigError(f"{where}: 'auto' is not supported for: {', '.join(left)}")
    return out


def check_student_config(ds: dict[str, Any], source: str | None = None) -> None:
    """The student must be ZeRO-3: its params are born partitioned, and export gathers them from partitions."""
    where = _where(source)
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise DSConfigError(f"{where}: 'zero_optimization.stage' must be 3 for the student, got {stage!r}")


def derive_teacher_config(student_ds: dict[str, Any], run_cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The teacher's inference config: stage 3, no optimizer/scheduler, same dtype and batch numbers.

    DeepSpeed checks train_batch_size = micro * accum * world even for an engine that never steps, so the
    teacher repeats the student's numbers. Bucket sizes stay "auto" unless already numbers; build_teacher fills
    them from the teacher's hidden size. With RunConfig.deepspeed.teacher set, that file is loaded and filled.
    """
    path = run_cfg.deepspeed.teacher
    if path:
        ds = fill_auto(load_ds_config(path), run_cfg, world_size, source=path)
        source = path
    else:
        source = "derived teacher config"
        student = fill_auto(student_ds, run_cfg, world_size, source=run_cfg.deepspeed.student)
        ds = {
            key: copy.deepcopy(student[key])
            for key in (
                "train_micro_batch_size_per_gpu",
                "gradient_accumulation_steps",
                "train_batch_size",
                "bf16",
                "fp16",
                "steps_per_print",
                "wall_clock_breakdown",
            )
            if key in student
        }
        zero: dict[str, Any] = {"stage": 3, **{k: AUTO for k in BUCKET_KEYS}}
        offload = student.get("zero_optimization", {}).get("offload_param")
        if offload:  # a student that cannot hold its params on device will not hold the teacher's either
            zero["offload_param"] = copy.deepcopy(offload)
        ds["zero_optimization"] = zero
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise DSConfigError(f"{source}: the teacher config must not have an '{key}' section (it never steps)")
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage not in _STAGES_TEACHER:
        raise DSConfigError(
            f"{source}: teacher 'zero_optimization.stage' must be one of {_STAGES_TEACHER}, got {stage!r}"
        )
    return ds
