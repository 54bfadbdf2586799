"""Console entry points. Each turns bad input into ONE clear line and a non-zero exit, on rank 0 only."""

from __future__ import annotations

import os
import sys
import warnings

from adakd_ds.engine.guard.preemption import EXIT_BAD_INPUT, EXIT_INTERRUPTED

USAGE = """adakd-distill --config RUN.yaml [--section.key value ...]

Launch with `deepspeed --num_gpus N launch/distill.py ...`, `torchrun --nproc_per_node N launch/distill.py ...`,
or run `adakd-distill ...` as one process. Every config key can be overridden (e.g. --loss.divergence fkl);
--resume auto|none|PATH and --resume-force choose how to continue. Exit codes: 0 done, 75 preempted
(a checkpoint was written: run the same command to resume), 2 bad input, 1 failure, 130 a Ctrl-C during setup
(before the first step: nothing to save)."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _fail(prog: str, exc: BaseException) -> int:
    if _rank() == 0:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def _normalise_flags(argv: list[str]) -> list[str]:
    """--resume-force (a bare flag) is --resume_force true; everything else is --key value."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in ("--resume-force", "--resume_force") and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out[-1] = "--resume_force=true"
    return out


def _quiet_library_warnings() -> None:
    """torch's c10d deprecation notes fire on every ZeRO-3 gather and bury the progress bar."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


def distill_main(argv: list[str] | None = None) -> int:
    """`adakd-distill` (and every rank of launch/distill.py): the exit code of the run.

    A SIGINT before the preemption watch is installed (imports, model setup) would be a KeyboardInterrupt traceback
    on every rank; it is one line and exit 130 instead (issue 25). From the first step on, a signal checkpoints and
    exits 75."""
    try:
        return _distill(argv)
    except KeyboardInterrupt:
        if _rank() == 0:
            print(
                "adakd-distill: interrupted (SIGINT) during setup, before the first step: nothing was saved; "
                f"exit {EXIT_INTERRUPTED} (the same command starts again, or resumes from an earlier checkpoint)",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_INTERRUPTED


def _distill(argv: list[str] | None) -> int:
    from adakd_ds.checkpoint.manager import CheckpointError
    from adakd_ds.config.load import ConfigError, load_config

    _quiet_library_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            return _fail("adakd-distill", ConfigError("--config needs a path"))
        config_path = argv[i + 1]
        del argv[i : i + 2]
    from adakd_ds.engine.guard.preflight import preflight

    try:
        cfg = load_config(config_path, _normalise_flags(argv))
        cfg.validate()
        notes = preflight(cfg)  # paths, data files line by line, the output-dir lock: before any heavy import
    except (ConfigError, ValueError) as exc:
        return _fail("adakd-distill", exc)
    if _rank() == 0:
        print("preflight ok: " + "; ".join(notes), flush=True)

    from adakd_ds.checkpoint.save_errors import CheckpointSaveError
    from adakd_ds.engine.guard.nan_guard import NonFiniteAbort
    from adakd_ds.engine.guard.peers import exit_if_peer_lost
    from adakd_ds.engine.guard.preemption import EXIT_FAILED
    from adakd_ds.engine.recipe import DistillRecipe

    recipe = DistillRecipe(cfg)
    try:
        recipe.setup()
        return recipe.train()
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        return _fail("adakd-distill", exc)
    except NonFiniteAbort as exc:  # agreed on every rank: one line, exit 1
        _fail("adakd-distill", exc)
        return EXIT_FAILED
    except CheckpointSaveError as exc:  # agreed on every rank; the lowest rank that failed names the path
        if exc.report:
            print(f"adakd-distill: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except RuntimeError as exc:  # a collective broken by a lost node: one line naming it, exit 1 at once
        exit_if_peer_lost(exc, _rank())
        raise
    finally:
        recipe.close()
