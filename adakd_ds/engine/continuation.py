"""Is a checkpoint a continuation of this run? The settings a resumed run must share with it, checked before loading.

Why: resuming another model, data set or global batch from a checkpoint trains on, with no error, a run that is
neither the old one nor a fresh one. `--resume_force true` continues anyway (optimizer settings then take effect).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adakd_ds.checkpoint.manager import CheckpointError
from adakd_ds.config.load import config_to_dict
from adakd_ds.config.schema import RunConfig
from adakd_ds.engine.optim_resume import OPTIMIZER_KEYS

# Settings that a resumed run must share with the checkpoint, or it is not a continuation (--resume_force overrides).
CONTINUATION_KEYS = (
    ("mode",),
    ("model", "teacher"),
    ("model", "student"),
    ("model", "student_config"),
    ("data", "source"),
    ("data", "max_prompt_len"),
    ("data", "max_len"),
    ("train", "seed"),
    *OPTIMIZER_KEYS,  # restored from the optimizer state: a change is refused, or applied when forced
)


def check_continuation(tag_dir: Path, cfg: RunConfig, data_hash: str, global_batch: int) -> None:
    """Refuse to continue a checkpoint of another model, data or global batch unless forced."""
    state_file = tag_dir / "trainer_state.json"
    saved = json.loads(state_file.read_text(encoding="utf-8"))
    saved_cfg, now = saved.get("config", {}), config_to_dict(cfg)
    problems = []
    for path in CONTINUATION_KEYS:
        old, new = _dig(saved_cfg, path), _dig(now, path)
        if old != new:
            problems.append(f"{'.'.join(path)}: {old!r} -> {new!r}")
    if saved.get("data_hash") != data_hash:
        problems.append("the data source's content or the tokenizer changed")
    if saved.get("global_batch") != global_batch:
        problems.append(f"global batch: {saved.get('global_batch')} -> {global_batch}")
    if problems and not cfg.resume_force:
        raise CheckpointError(
            f"cannot continue {tag_dir}: " + "; ".join(problems) + " (pass --resume_force true to continue anyway)"
        )


def _dig(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree.get(key, {}) if isinstance(tree, dict) else {}
    return tree if tree != {} else None
