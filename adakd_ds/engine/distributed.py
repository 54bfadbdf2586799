"""Process-group setup and teardown that works under the deepspeed CLI, torchrun, or as one plain process.

DeepSpeed's initialize and zero.Init need a process group even for one rank, so a plain `python script.py`
gets a 1-rank gloo group on a free local port. Teardown follows the exit-crash fix in
docs/deepspeed-on-cpu.md: gloo threads that outlive destroy_process_group abort the interpreter at exit.
"""

from __future__ import annotations

import datetime
import gc
import os
import random
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TIMEOUT_ENV = "ADAKD_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def free_port() -> int:
    """A port the OS says is free now (bind to 0); never a fixed port, so parallel jobs do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"environment {TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"environment {TIMEOUT_ENV}={raw!r}: must be > 0")
    return datetime.timedelta(seconds=seconds)


def _info(backend: str) -> DistInfo:
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU); idempotent."""
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        # must be set before deepspeed picks (and caches) its accelerator
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # a plain process: a 1-rank group
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return _info(torch.distributed.get_backend())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        # the shm comm op JIT-compiles for ~27 s and ZeRO training never uses it
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, timeout=_timeout())
    return _info(backend)


def _release(obj: Any) -> None:
    """Destroy DeepSpeed engines; empty containers so the caller's references to their contents go too."""
    if isinstance(obj, dict):
        for value in list(obj.values()):
            _release(value)
        obj.clear()
    elif isinstance(obj, list):
        for value in list(obj):
            _release(value)
        obj.clear()
    else:
        from deepspeed.runtime.engine import DeepSpeedEngine

        if isinstance(obj, DeepSpeedEngine):
            obj.destroy()


def shutdown_distributed(*objects: Any) -> None:
    """Tear down without the exit abort: destroy engines, gc, barrier, destroy the group.

    Pass the engines (or a dict/list holding engines, models and optimizers, which is emptied); the caller must
    hold no other references to them, or their ZeRO-3 params keep the gloo groups alive past shutdown.
    """
    for obj in objects:
        _release(obj)
    del objects
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # ZeRO-3 modules can outlive their engines (hooks hold them from C++), and with them their HfDeepSpeedConfig:
    # without this, a later from_pretrained in this process would silently build a partitioned model.
    unset_hf_deepspeed_config()
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    gc.collect()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch identically on every rank, so zero.Init's weights and data order agree."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """print on global rank 0 only (flushed, so logs from launchers interleave sanely)."""
    if get_rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)
