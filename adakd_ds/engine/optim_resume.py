"""train.lr and train.weight_decay on resume: refused when changed unless --resume_force, then really applied.

Why: DeepSpeed restores the optimizer's param groups and the scheduler's base lrs from the checkpoint, so a new lr
or weight decay used to be silently ignored while config.yaml and trainer_state.json recorded the new value. The
schedule's shape (type, warm-up, min ratio, total steps) is a function rebuilt from the config on every start, so it
always follows the config; only these values came back from the checkpoint.
"""

from __future__ import annotations

from typing import Any

from adakd_ds.config.schema import RunConfig

# Continuation keys the optimizer state would otherwise override (the recipe refuses a change unless forced).
OPTIMIZER_KEYS = (("train", "lr"), ("train", "weight_decay"))


def apply_optimizer_settings(engine: Any, cfg: RunConfig, saved_train: dict[str, Any]) -> str | None:
    """Put the config's lr and weight decay into the restored optimizer and scheduler; returns a line to print
    when they differ from the checkpoint's (None otherwise). Every rank calls it (no collective)."""
    changes = [
        f"train.{key} {saved_train.get(key)!r} -> {getattr(cfg.train, key)!r}"
        for key in ("lr", "weight_decay")
        if saved_train.get(key) != getattr(cfg.train, key)
    ]
    if not changes:
        return None
    sched = engine.lr_scheduler
    sched.base_lrs = [cfg.train.lr for _ in sched.base_lrs]
    for group, lam in zip(engine.optimizer.param_groups, sched.lr_lambdas, strict=True):
        group["initial_lr"] = cfg.train.lr
        group["lr"] = cfg.train.lr * lam(sched.last_epoch)
        group["weight_decay"] = cfg.train.weight_decay
    sched._last_lr = [group["lr"] for group in engine.optimizer.param_groups]
    return "applying the new optimizer settings (--resume_force): " + "; ".join(changes)
