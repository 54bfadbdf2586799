"""Rank-global statistics over torch.distributed; every call is a no-op in a single process.

Every rank must call these in the same order, including a rank with no valid tokens, or the job hangs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(t: Tensor) -> torch.device:
    """gloo works on CPU tensors; NCCL needs CUDA ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_gather_rows(local: Tensor) -> Tensor:
    """Stack one equal-length 1-D tensor per rank into [world, n]."""
    rank, world = world_info()
    if world == 1:
        return local.unsqueeze(0)
    x = local.to(_comm_device(local))
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x)
    return torch.stack(out).to(local.device)


def gather_variable(local: Tensor, counts: list[int] | None = None) -> tuple[Tensor, list[int], int]:
    """All-gather ragged 1-D vectors in rank order: (global [N], counts per rank, this rank's offset)."""
    rank, world = world_info()
    if world == 1:
        return local, [local.numel()], 0
    if counts is None:
        counts = [int(c) for c in all_gather_rows(torch.tensor([local.numel()], device=local.device)).flatten()]
    width = max(max(counts), 1)
    padded = torch.zeros(width, dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    rows = all_gather_rows(padded)
    pieces = [rows[r, : counts[r]] for r in range(world)]
    return torch.cat(pieces), counts, sum(counts[:rank])


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks (returns a new tensor on the input's device)."""
    _, world = world_info()
    if world == 1:
        return t.clone()
    x = t.to(_comm_device(t)).clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)
