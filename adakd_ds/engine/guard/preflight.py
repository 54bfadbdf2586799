"""Preflight: every input check that needs no process group, no DeepSpeed and no model, done before any of them.

Why: a bad data file or model path used to surface after 60-120 s of imports and model setup, as tracebacks from
every rank, with an exit code that depended on which rank's error won a race. The inputs are deterministic, so every
rank runs the same checks on its own and fails the same way with no collective at all; rank 0 prints the one line
(the CLI), every rank exits 2. Global rank 0 also takes the output dir's lock here.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path

from adakd_ds.config.load import resolve_shipped_path
from adakd_ds.config.schema import DataFormat, Mode, RunConfig
from adakd_ds.engine.guard.run_lock import acquire_run_lock

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class PathKind(str, enum.Enum):
    MODEL = "model"  # a directory with config.json (and weights)
    CONFIG = "config"  # a config.json file, or a directory holding one
    TOKENIZER = "tokenizer"  # a directory with tokenizer files


# Any one of these files makes a local directory a valid source of that kind.
MARKER_FILES: dict[PathKind, tuple[str, ...]] = {
    PathKind.MODEL: ("config.json",),
    PathKind.CONFIG: ("config.json",),
    PathKind.TOKENIZER: ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json"),
}


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return False
    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def check_model_path(key: str, value: str, kind: PathKind) -> None:
    """A local path must hold the files of its kind; anything else must be a hub id (cached, when offline)."""
    path = Path(value)
    wanted = MARKER_FILES[kind]
    if path.is_file() and kind is PathKind.CONFIG:
        return
    if path.is_dir():
        if not any((path / name).is_file() for name in wanted):
            raise ValueError(f"{key}: {value} is a directory without {' or '.join(wanted)}")
        return
    looks_local = value.startswith(("/", ".", "~")) or os.sep + os.sep in value or value.count("/") > 1
    if looks_local or not HUB_ID.match(value):
        raise ValueError(f"{key}: {value}: no such directory (and not a hub model id)")
    if _offline() and not any(_in_hub_cache(value, name) for name in wanted):
        raise ValueError(f"{key}: {value} is not a local directory and not in the hub cache (offline mode)")


def check_models(cfg: RunConfig) -> None:
    from adakd_ds.engine.models import tokenizer_source

    m = cfg.model
    if cfg.mode is Mode.DISTILL and m.teacher:
        check_model_path("model.teacher", m.teacher, PathKind.MODEL)
    if m.teacher_cache:  # a missing or unfinished cache fails here; its fingerprints once the tokenizer is loaded
        from adakd_ds.data.teacher_cache import TeacherCache

        TeacherCache(m.teacher_cache)
    if m.student:
        check_model_path("model.student", m.student, PathKind.MODEL)
    elif m.student_config:
        check_model_path("model.student_config", m.student_config, PathKind.CONFIG)
    key = next(
        (
            k
            for k, v in (("model.tokenizer", m.tokenizer), ("model.student", m.student), ("model.teacher", m.teacher))
            if v
        ),
        "model.student_config",
    )
    check_model_path(key, tokenizer_source(m), PathKind.TOKENIZER)


def check_data(cfg: RunConfig) -> list[str]:
    """The data files, line by line; returns one note per source (its detected format)."""
    from adakd_ds.data.source import precheck_source

    notes = []
    for key, source in (("data.source", cfg.data.source), ("data.eval_source", cfg.data.eval_source)):
        if not source:
            continue
        fmt = precheck_source(source, DataFormat(cfg.data.format))
        notes.append(f"{key} {source}: " + (f"format '{fmt.value}'" if fmt else "checked when loaded"))
    return notes


def check_deepspeed(cfg: RunConfig) -> None:
    from adakd_ds.engine.ds_config import load_ds_config

    for path in (cfg.deepspeed.student, cfg.deepspeed.teacher):
        if path:
            load_ds_config(resolve_shipped_path(path))


def preflight(cfg: RunConfig, rank: int | None = None) -> list[str]:
    """Run every cheap check (all ranks), lock the output dir (global rank 0); returns notes for rank 0 to print."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    cfg.validate()
    check_models(cfg)
    check_deepspeed(cfg)
    notes = check_data(cfg)
    if rank == 0:
        acquire_run_lock(cfg.output.dir)
    return notes


def preflight_cache(cfg: RunConfig) -> list[str]:
    """adakd-cache-teacher's cheap checks (all ranks): the teacher, tokenizer, DeepSpeed and data paths; no run lock."""
    if not cfg.model.teacher:
        raise ValueError("model.teacher is required (the model whose distributions are cached)")
    if not cfg.data.source:
        raise ValueError("data.source is required")
    check_model_path("model.teacher", cfg.model.teacher, PathKind.MODEL)
    if cfg.model.tokenizer:
        check_model_path("model.tokenizer", cfg.model.tokenizer, PathKind.TOKENIZER)
    check_deepspeed(cfg)
    return check_data(cfg)
