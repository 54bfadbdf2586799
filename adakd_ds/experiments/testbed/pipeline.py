"""Stages that the quickstart and the experiment runner chain: train through the real launcher, then evaluate.

Each stage is a subprocess (torchrun for several ranks, plain python for one) so that it gets a fresh process group
and a fresh DeepSpeed, exactly as a user's own launch would. A stage whose result is already on disk is skipped, so
an interrupted quickstart or grid continues where it stopped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from adakd_ds.experiments.testbed.reproducible import pinned_env, pinned_threads
from adakd_ds.experiments.testbed.stage_clock import wait_child

REPO = Path(__file__).resolve().parents[3]  # adakd_ds/experiments/testbed/ -> the repository root


class StageError(RuntimeError):
    """A training or evaluation subprocess failed; the message names the stage and its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(nproc: int) -> list[str]:
    """torchrun for several ranks (starts faster than the deepspeed CLI), plain python for one."""
    if nproc <= 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
    ]


def stage_env() -> dict[str, str]:
    """The caller's environment, offline, with the thread count and hash seed pinned (reproducible.PINNED_ENV)."""
    env = pinned_env(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    if not _has_cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False


def _run(cmd: list[str], name: str, log: Path, quiet: bool) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        out = fh if quiet else subprocess.PIPE  # not quiet: the stage's progress bar to the terminal, and the log
        proc = subprocess.Popen(cmd, cwd=REPO, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            if not quiet:
                assert proc.stdout is not None
                for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    fh.write(chunk.decode("utf-8", "replace"))
            rc = wait_child(proc)  # reaped here, so that its CPU time is charged to this stage
        except BaseException:  # an interrupt: the stage had the same signal; give it time to checkpoint
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0:
        raise StageError(f"stage '{name}' failed with exit code {rc}; see {log}")


def trained(run_config: dict[str, Any]) -> bool:
    """Whether train() would find this run's exported model on disk and skip the run."""
    return (Path(run_config["output"]["dir"]) / "export" / "model.safetensors").is_file()


def evaluated(out: Path) -> bool:
    """Whether evaluate() would find its results on disk and skip the evaluation."""
    return (out / "results.json").is_file()


def train(run_config: dict[str, Any], nproc: int, name: str, quiet: bool = False) -> Path:
    """Run launch/distill.py on a run config (a dict in the YAML layout); returns the exported model directory."""
    out = Path(run_config["output"]["dir"])
    export = out / "export"
    if trained(run_config):
        return export
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config, sort_keys=False))
    cmd = [*launcher(nproc), str(REPO / "launch" / "distill.py"), "--config", str(cfg_path)]
    _run(cmd, name, out.parent / f"{out.name}.log", quiet)
    if not (export / "model.safetensors").is_file():
        raise StageError(f"stage '{name}' finished but wrote no model to {export}")
    return export


def evaluate(
    model: Path,
    data: Path,
    out: Path,
    nproc: int,
    name: str,
    *,
    greedy: bool = False,
    seeds: tuple[int, ...] = (1, 2, 3),
    max_new_tokens: int = 64,
    max_prompt_len: int = 256,
    teacher: Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Run launch/evaluate.py; returns its results.json."""
    results = out / "results.json"
    if evaluated(out):
        return json.loads(results.read_text())
    cmd = [
        *launcher(nproc),
        str(REPO / "launch" / "evaluate.py"),
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        str(max_new_tokens),
        "--max-prompt-len",
        str(max_prompt_len),
        "--batch-size",
        "64",
    ]
    cmd += ["--greedy"] if greedy else ["--seeds", *map(str, seeds)]
    if teacher is not None:
        cmd += ["--teacher", str(teacher)]
    if nproc <= 1:  # in this process: a tiny model's evaluation costs less than a fresh interpreter
        from adakd_ds.eval.evaluate import eval_main

        with pinned_threads():  # the same thread count as a stage of its own: the same bits on every machine
            eval_main(cmd[2:])
    else:
        _run(cmd, name, out.parent / f"{out.name}.log", quiet)
    return json.loads(results.read_text())
