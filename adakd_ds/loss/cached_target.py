"""The teacher's side of the loss from a cache: its top-k log-probs plus ONE tail bucket, k + 1 bins per token.

What is computed (docs/offline-teacher.md says the same, with the measured error):
- teacher bins  a = [log p_1 .. log p_k, log(1 - sum_j p_j)]: the cached top-k log-probs at T = 1 and the cached log
  of the remaining mass. With k = V (the cache holds every id) there is no tail bin: k bins only.
- student bins  b = [log q(id_1) .. log q(id_k), log(1 - sum_j q(id_j))] at T = 1, made from the student's full
  logits z (or one fused-head chunk of them): log q(id_j) = z[id_j] - logsumexp(z), and the tail is logsumexp over
  the ids NOT cached minus logsumexp(z): exact in log space, no 1 - sum cancellation. Differentiable in z.
- Every divergence, the difficulty indicator (hellinger, fkl, rkl, jsd) and hence LATF's ranking and IDTS's median
  see the bins as if they were logits of a (k + 1)-token vocabulary: the existing divergence code runs unchanged.
  The student-only indicators (ce, entropy) use the student's full logits: they need no teacher.
- IDTS tempering: both sides' bins are tempered as logits, softmax(bins / tau): the tail is treated as ONE token whose
  logit is log(tail mass). Why this choice: (1) it is exactly the live path at k = V (no tail), (2) it is the same map
  on both sides, so a student equal to the teacher still has divergence 0 at every tau, and (3) it needs nothing the
  cache does not hold. What it gets wrong: the live path tempers each tail token separately; for tau < 1 the true
  tempered tail mass is smaller than one merged token's (the mass is spread over V - k ids), for tau > 1 larger.
  Distributing the tail uniformly over the V - k ids was the alternative; it assumes a flat tail that a real teacher
  does not have either, and it differs from this one only where the tail mass is large, i.e. at a too small k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adakd_ds.config.schema import Indicator
from adakd_ds.loss.chunked_grad import ChunkKernel, RowChunk, autograd_kernel
from adakd_ds.loss.difficulty import token_difficulty
from adakd_ds.loss.divergences._common import tau_column

_STUDENT_ONLY = (Indicator.CE, Indicator.ENTROPY)


@dataclass
class CachedTarget:
    """One micro-batch's cached teacher distributions, shaped like the labels: [..., k] ids and log-probs, [...] tail.

    Rows that are not response tokens hold anything (they are never read). `has_tail` is False when the cache holds
    the whole vocab (k = V): then the k bins are the whole distribution.
    """

    ids: Tensor  # [..., k] int64
    logp: Tensor  # [..., k] log-probs at T = 1
    log_tail: Tensor  # [...] log of the mass outside the k ids
    has_tail: bool = True


class CachedRows:
    """The flat [T, k] view the loss reads per chunk of rows (the counterpart of TensorRows for a live teacher)."""

    def __init__(self, target: CachedTarget, dtype: torch.dtype) -> None:
        k = target.ids.shape[-1]
        self.ids = target.ids.reshape(-1, k).long()
        self.logp = target.logp.reshape(-1, k).to(dtype)
        low = torch.finfo(torch.float16).min  # a half-precision tail that underflowed to -inf: the lowest half value
        self.log_tail = target.log_tail.reshape(-1).to(dtype).clamp_min(low) if target.has_tail else None
        self.k = k

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    def take(self, chunk: RowChunk) -> Tensor:
        """The teacher's bins of the chunk's rows: [c, k + 1] (or [c, k] without a tail)."""
        logp = chunk.take(self.logp)
        if self.log_tail is None:
            return logp
        return torch.cat([logp, chunk.take(self.log_tail).unsqueeze(-1)], dim=-1)

    def reduce(self, student: Tensor, chunk: RowChunk) -> Tensor:
        """The student's full logits [c, V] reduced to the same bins (differentiable)."""
        ids = chunk.take(self.ids)
        x = student
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
        top = x.gather(-1, ids) - lse
        if self.log_tail is None:
            return top
        rest = x.scatter(-1, ids, float("-inf"))
        tail = torch.logsumexp(rest, dim=-1, keepdim=True) - lse
        return torch.cat([top, tail], dim=-1)


def check_ids(rows: CachedRows, valid_rows: Tensor, vocab: int) -> None:
    """Cached ids beyond the student's vocab (a cache of another tokenizer's model) fail here, not in a gather."""
    ids = rows.ids.index_select(0, valid_rows)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"teacher cache ids lie outside [0, {vocab}): the cache was made for another vocab")


@torch.no_grad()
def cached_difficulty(
    indicator: Indicator, rows: CachedRows, student: Tensor, chunk: RowChunk, labels: Tensor
) -> Tensor:
    """Per-token difficulty on the bins (teacher-dependent indicators) or on the full student (ce, entropy)."""
    if indicator in _STUDENT_ONLY:
        return token_difficulty(indicator, student, student, labels)
    return token_difficulty(indicator, rows.reduce(student, chunk), rows.take(chunk), labels)


def cached_kd_kernel(
    rows: CachedRows,
    divergence: Callable[..., Tensor],
    tau_of: Callable[[RowChunk], Tensor | float],
    weight: Callable[[Tensor], Tensor] = torch.square,
) -> ChunkKernel:
    """Chunk kernel for sum w(tau) * d(bins_student / tau, bins_teacher / tau) (w = tau^2 by default, or the
    loss.idts_weight choice); the gradient reaches the full logits."""

    def values(x: Tensor, chunk: RowChunk) -> Tensor:
        tau = tau_column(tau_of(chunk), x).squeeze(-1)
        return weight(tau) * divergence(rows.reduce(x, chunk), rows.take(chunk).to(x.dtype), tau)

    return autograd_kernel(values)


__all__ = ["CachedRows", "CachedTarget", "cached_difficulty", "cached_kd_kernel", "check_ids"]
