"""Learning-rate schedule: linear warm-up, then cosine decay (or flat), stepped once per optimizer step."""

from __future__ import annotations

import math

import torch

from adakd_ds.config.schema import Schedule, TrainConfig


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr after `step` optimizer steps."""
    warmup = int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.schedule is Schedule.CONSTANT:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that DeepSpeed steps at each accumulation boundary and saves in its checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
