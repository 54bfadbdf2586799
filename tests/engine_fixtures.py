"""Tiny, offline ingredients for real multi-rank runs: tokenizer, teacher, student config, data, DS config, launcher.

Everything is made by the test in a tmp dir; nothing is downloaded. Runs go through the real `deepspeed` CLI or
torchrun as subprocesses in their own process group, with a free port and a hard timeout, and are always killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DISTILL = str(REPO / "launch" / "distill.py")
CPU_TINY_CONFIG = REPO / "configs" / "cpu_tiny.yaml"  # the example run config that every engine test starts from


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TinySetup:
    root: Path
    tokenizer: Path
    teacher: Path
    student_config: Path
    data: Path
    ds_config: Path


def tiny_llama_config(vocab_size: int, hidden: int, layers: int, heads: int = 4) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def make_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Varied lengths, so ranks hold different numbers of valid tokens."""
    from adakd_ds.experiments.testbed.synthetic_tasks import generate_records

    return generate_records(n, seed)


def build_tiny_setup(root: Path, n_records: int = 64, teacher_vocab_pad: int = 0, seed: int = 0) -> TinySetup:
    """A teacher (hidden 64, 2 layers) and a student config (hidden 32, 1 layer) on a 200-piece tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from adakd_ds.experiments.testbed.synthetic_tasks import write_jsonl
    from tests.helpers_tokenizer import build_tiny_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / "tokenizer"
    tok = build_tiny_tokenizer(tok_dir, pad=True)
    vocab = len(tok)
    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_config(tiny_llama_config(vocab + teacher_vocab_pad, 64, 2))
    teacher_dir = root / "teacher"
    teacher.save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    student_cfg_dir = root / "student_config"
    tiny_llama_config(vocab, 32, 1, heads=2).save_pretrained(student_cfg_dir)
    data = root / "train.jsonl"
    write_jsonl(make_records(n_records, seed), str(data))
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    # partition every tensor, however small: the tests check that each rank holds ~1/world of each parameter
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    ds_path = root / "ds_zero3_test.json"
    ds_path.write_text(json.dumps(ds))
    return TinySetup(root, tok_dir, teacher_dir, student_cfg_dir, data, ds_path)


def write_run_config(setup: TinySetup, out_dir: Path, **sections: dict[str, Any]) -> Path:
    """A run config for the tiny setup; keyword sections (e.g. loss={...}) override the defaults."""
    cfg: dict[str, Any] = yaml.safe_load(CPU_TINY_CONFIG.read_text())  # the shipped example; its paths are ours
    cfg["model"].update(
        teacher=str(setup.teacher), student_config=str(setup.student_config), tokenizer=str(setup.tokenizer)
    )
    cfg["data"].update(source=str(setup.data), cache_dir=str(setup.root / "hf_cache"))
    cfg["output"]["dir"] = str(out_dir)
    cfg["deepspeed"]["student"] = str(setup.ds_config)
    for name, values in sections.items():
        if isinstance(cfg.get(name), dict):
            cfg[name].update(values)
        else:
            cfg[name] = values
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir.parent / f"{out_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            "ADAKD_DIST_TIMEOUT": env.get("ADAKD_DIST_TIMEOUT", "60"),
        }
    )
    env.update(extra or {})
    return env


def launcher_cmd(kind: str, nproc: int, script: str = DISTILL) -> list[str]:
    bindir = Path(sys.executable).parent
    if kind == "deepspeed":
        return [str(bindir / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), script]
    if kind == "torchrun":
        return [
            str(bindir / "torchrun"),
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            script,
        ]
    if kind == "python":
        return [sys.executable, script]
    if kind.startswith("adakd-"):  # adakd-deepspeed / adakd-torchrun: that launcher under adakd-launch
        return [sys.executable, str(REPO / "launch" / "supervise.py"), *launcher_cmd(kind[6:], nproc, script)]
    raise ValueError(kind)


@dataclass
class RunResult:
    returncode: int
    output: str
    seconds: float


def start_launch(
    args: list[str],
    launcher: str = "torchrun",
    nproc: int = 2,
    env: dict[str, str] | None = None,
    script: str = DISTILL,
) -> subprocess.Popen:
    """Start a launcher in its own process group (the caller kills it with kill_group); output in .stdout."""
    return subprocess.Popen(
        launcher_cmd(launcher, nproc, script) + args,
        cwd=REPO,
        env=run_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_launch(
    args: list[str],
    launcher: str = "torchrun",
    nproc: int = 2,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    script: str = DISTILL,
) -> RunResult:
    """Run a launcher in its own process group; the whole group is killed on timeout or failure."""
    t0 = time.perf_counter()
    proc = start_launch(args, launcher, nproc, env, script)
    cmd = proc.args
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"launch timed out after {timeout}s: {' '.join(cmd)}\n{out[-4000:]}") from None
    finally:
        kill_group(proc)
    return RunResult(proc.returncode, out, time.perf_counter() - t0)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_history(out_dir: Path) -> list[dict[str, float]]:
    """Per-step records of a run: step, loss, ratio (deterministic) and tokens, seconds (timing)."""
    path = out_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trajectory(history: list[dict[str, float]]) -> list[tuple[int, float, float]]:
    """The deterministic part of a history: (step, loss, r), to compare runs bit for bit."""
    return [(int(h["step"]), h["loss"], h["ratio"]) for h in history]
