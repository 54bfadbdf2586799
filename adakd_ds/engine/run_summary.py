"""The last words of a run: where its checkpoint, export, TensorBoard logs, history and config went.

Why: a run writes to five places under output.dir, and a user who just watched the progress bar should not have to
know the layout to find the model to evaluate or the logs to open. Printed once, by rank 0, at the end of train().
"""

from __future__ import annotations

from pathlib import Path

from adakd_ds.checkpoint.manager import CKPT_DIRNAME, list_tags
from adakd_ds.config.schema import RunConfig
from adakd_ds.engine.guard.preemption import EXIT_PREEMPTED

EXPORT_DIRNAME = "export"
TENSORBOARD_DIRNAME = "tensorboard"
HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "config.yaml"


def _newest_checkpoint(out: Path) -> Path | None:
    complete, _ = list_tags(out / CKPT_DIRNAME)
    return complete[-1] if complete else None


def run_summary(cfg: RunConfig, exit_code: int, global_step: int) -> str:
    """Several lines: the outcome, then one `  <what>  <path>  (how to use it)` line per output that exists."""
    out = Path(cfg.output.dir)
    if exit_code == EXIT_PREEMPTED:
        head = f"run preempted at step {global_step} (exit {exit_code}): run the same command again to resume"
    else:
        head = f"run finished at step {global_step} (exit {exit_code}); outputs:"
    rows: list[tuple[str, Path | None, str]] = [
        ("checkpoint", _newest_checkpoint(out), "resume: the same command; or adakd-export --checkpoint"),
        ("export", out / EXPORT_DIRNAME if cfg.output.export and exit_code == 0 else None, "adakd-eval --model"),
        ("tensorboard", out / TENSORBOARD_DIRNAME if cfg.output.tensorboard else None, "tensorboard --logdir"),
        ("history", out / HISTORY_FILE, "one JSON line per optimizer step"),
        ("config", out / CONFIG_FILE, "the resolved run config"),
    ]
    lines = [head]
    for what, path, how in rows:
        if path is not None and path.exists():
            lines.append(f"  {what:<12} {path}  ({how})")
    return "\n".join(lines)
