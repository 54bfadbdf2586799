"""`adakd-cache-teacher`: the console entry of the cache writer; bad input is one line and exit 2, on rank 0."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from adakd_ds.engine.guard.preemption import EXIT_BAD_INPUT, EXIT_FAILED

USAGE = """adakd-cache-teacher --config RUN.yaml --out DIR [--k 32] [--shard-samples 256] [--batch 4]
                    [--placement zero3|replicated] [--section.key value ...]

Runs the run config's model.teacher over its data (the trainer's formats, prompt masking, lengths and tokenizer) and
writes, per response token, the teacher's top-k ids, log-probs at T = 1 and the log of the remaining mass to DIR.
Launch on N ranks with `torchrun --nproc_per_node N launch/cache_teacher.py ...` or `deepspeed --num_gpus N ...`.
Killed or stopped, run the same command again: complete shards are kept and the rest is written. Train from it with
--model.teacher_cache DIR. Exit codes: 0 done, 75 stopped by a signal (rerun to continue), 2 bad input, 1 failure."""

FLAGS = {"--out": str, "--k": int, "--shard-samples": int, "--batch": int, "--placement": str}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _fail(exc: BaseException, code: int = EXIT_BAD_INPUT) -> int:
    if _rank() == 0:
        print(f"adakd-cache-teacher: error: {exc}", file=sys.stderr, flush=True)
    return code


def _take_flags(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """Our own flags out of argv (the rest are config overrides), each converted and range-checked."""
    found: dict[str, object] = {}
    rest = []
    i = 0
    while i < len(argv):
        name, _, inline = argv[i].partition("=")
        if name in FLAGS or name == "--config":
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is None:
                raise ValueError(f"{name} needs a value")
            try:
                found[name] = FLAGS.get(name, str)(value)
            except ValueError:
                raise ValueError(f"{name}: expected an integer, got {value!r}") from None
            i += 1 if inline else 2
            continue
        rest.append(argv[i])
        i += 1
    for name in ("--k", "--shard-samples", "--batch"):
        if name in found and int(found[name]) < 1:  # type: ignore[call-overload]
            raise ValueError(f"{name} must be >= 1, got {found[name]}")
    if "--out" not in found:
        raise ValueError("--out DIR is required (where the cache is written)")
    return found, rest


def cache_main(argv: list[str] | None = None) -> int:
    from adakd_ds.config.load import ConfigError, load_config
    from adakd_ds.data.teacher_cache import CacheError
    from adakd_ds.engine.guard import preflight

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        flags, overrides = _take_flags(argv)
        from adakd_ds.engine.teacher_cache.writer import CacheSettings, CacheWriter, Placement, manifest_summary

        cfg = load_config(flags.get("--config"), overrides)  # type: ignore[arg-type]
        try:
            placement = Placement(str(flags.get("--placement", "zero3")))
        except ValueError:
            raise ValueError(f"--placement: choose one of {', '.join(p.value for p in Placement)}") from None
        preflight.preflight_cache(cfg)  # looked up at call time: the docs checker stops here, as at the trainer's
        settings = CacheSettings(
            out=Path(str(flags["--out"])),
            k=int(flags.get("--k", 32)),  # type: ignore[call-overload]
            shard_samples=int(flags.get("--shard-samples", 256)),  # type: ignore[call-overload]
            batch=int(flags.get("--batch", 4)),  # type: ignore[call-overload]
            placement=placement,
        )
    except (ConfigError, ValueError) as exc:
        return _fail(exc)
    writer = CacheWriter(cfg, settings)
    try:
        writer.setup()
        code = writer.run()
        if code == 0 and _rank() == 0:
            print(f"adakd-cache-teacher: {settings.out}: {manifest_summary(settings.out)}", flush=True)
        elif _rank() == 0:
            print("adakd-cache-teacher: stopped by a signal; run the same command to continue", flush=True)
        return code
    except (CacheError, ConfigError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    except OSError as exc:
        return _fail(exc, EXIT_FAILED)
    finally:
        writer.close()
