"""Chunked loss with the gradient taken inside the forward pass.

A per-token loss over [T, V] logits built with plain autograd keeps several fp32 [T, V] intermediates alive until
backward: at a 152k vocab that is many GB. Here each chunk of rows is differentiated at once (analytically for the
hot divergences, else with a local autograd graph) and freed; only the gradient buffer (one tensor shaped like the
logits, which backward must produce anyway) outlives the chunk.

Chunks are small on purpose (about 2**20 logits by default): a handful of [chunk, V] temporaries then stay in the
CPU cache and are recycled by the allocator instead of being page-faulted in afresh for every chunk. Contiguous runs
of rows are taken as views; only scattered rows (e.g. after LATF selection) are gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from adakd_ds.loss.divergences._common import work_dtype

AUTO_CHUNK_ELEMENTS = 2**20  # logits per [chunk, V] working tensor when chunk_size is 0 ("auto"): 4 MiB in fp32


def chunk_rows(chunk_size: int, vocab: int) -> int:
    """Rows per chunk: chunk_size itself, or (chunk_size <= 0) as many rows as fit AUTO_CHUNK_ELEMENTS."""
    if chunk_size > 0:
        return chunk_size
    return max(1, AUTO_CHUNK_ELEMENTS // max(vocab, 1))


@dataclass(frozen=True)
class RowChunk:
    """Positions [start, stop) of a row list and the [T, V] rows they name: a slice when contiguous, else indices."""

    start: int
    stop: int
    rows: slice | Tensor

    @property
    def pos(self) -> slice:
        return slice(self.start, self.stop)

    def take(self, src: Tensor) -> Tensor:
        """The chunk's rows of src: a view for a contiguous run, a gathered copy otherwise."""
        if isinstance(self.rows, slice):
            return src[self.rows]
        return src.index_select(0, self.rows)


def row_chunks(rows: Tensor, size: int) -> list[RowChunk]:
    """Split a strictly increasing row list into chunks of `size`, marking the contiguous ones (one host sync)."""
    n = rows.numel()
    if n == 0:
        return []
    starts = torch.arange(0, n, size, device=rows.device)
    stops = (starts + size).clamp_max(n)
    first, last = rows[starts], rows[stops - 1]
    contiguous = (last - first) == (stops - starts - 1)
    out = []
    for a, b, f, c in zip(starts.tolist(), stops.tolist(), first.tolist(), contiguous.tolist(), strict=True):
        out.append(RowChunk(a, b, slice(f, f + (b - a)) if c else rows[a:b]))
    return out


class GradSink:
    """Where one chunk's gradient goes: grad[rows] (+)= scale * coef * g (coef one factor per row, [c, 1]).

    The first accumulate call over a row writes it (the buffer starts uninitialised, so no 4 bytes/logit memset);
    later calls add.
    """

    def __init__(self, grad: Tensor, chunk: RowChunk, scale: float, write: bool) -> None:
        self.grad, self.chunk, self.scale, self.write = grad, chunk, scale, write

    def direct_out(self, like: Tensor) -> Tensor | None:
        """The gradient rows themselves, where a compiled kernel may write its result straight in: a contiguous run
        of rows written for the first time (a fallback that reruns eagerly then overwrites them, never adds twice)."""
        rows = self.chunk.rows
        if self.write and isinstance(rows, slice) and self.grad.dtype == like.dtype and rows.stop - rows.start > 1:
            return self.grad[rows]
        return None

    def add_scaled(self, g: Tensor) -> None:
        """g already holds scale * coef * gradient (a compiled kernel folded the scaling into its pass)."""
        rows = self.chunk.rows
        g = g.to(self.grad.dtype)
        if isinstance(rows, slice):
            if self.write:
                self.grad[rows].copy_(g)
            else:
                self.grad[rows].add_(g)
        elif self.write:
            self.grad.index_copy_(0, rows, g)
        else:
            self.grad.index_add_(0, rows, g)

    def add(self, g: Tensor, coef: Tensor) -> None:
        """g is a temporary the caller gives up (it may be scaled in place)."""
        rows = self.chunk.rows
        if isinstance(rows, slice) and g.dtype == self.grad.dtype:
            if self.write:
                torch.mul(g, coef * self.scale, out=self.grad[rows])
            else:
                self.grad[rows].addcmul_(g, coef, value=self.scale)
            return
        self.add_scaled(g.mul_(coef * self.scale))


# (student rows in the work dtype, the chunk, a sink or None when no gradient is wanted) -> sum of the chunk's values
ChunkKernel = Callable[[Tensor, RowChunk, "GradSink | None"], Tensor]


def autograd_kernel(values: Callable[[Tensor, RowChunk], Tensor]) -> ChunkKernel:
    """A kernel from a differentiable per-token function: the gradient comes from a local autograd graph."""

    def kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
        if sink is None:
            with torch.no_grad():
                return values(x, chunk).sum()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = values(x, chunk).sum()
            (g,) = torch.autograd.grad(value, x)
        sink.add(g, torch.ones((), dtype=g.dtype, device=g.device))
        return value.detach()

    return kernel


class GradBuffer:
    """The student-logit gradient, filled chunk by chunk; allocated only when the logits need a gradient."""

    def __init__(self, logits_flat: Tensor) -> None:
        self.logits = logits_flat
        self.enabled = logits_flat.requires_grad and torch.is_grad_enabled()
        # uninitialised: rows are written by the first accumulate call that covers them, the rest zeroed in attach
        self.grad = torch.empty_like(logits_flat, requires_grad=False) if self.enabled else None
        self.filled = torch.zeros(logits_flat.shape[0], dtype=torch.bool, device=logits_flat.device)

    def accumulate(self, rows: Tensor, kernel: ChunkKernel, size: int, scale: float) -> Tensor:
        """Sum of the kernel over chunks of `rows` (a detached scalar); adds scale * d(sum)/d(logits) to the buffer.

        `rows` must be strictly increasing (each row once per call).
        """
        dtype = work_dtype(self.logits)
        total = torch.zeros((), dtype=dtype, device=self.logits.device)
        logits = self.logits.detach()
        # rows never written before can be overwritten; a call over a mix of new and old rows adds everywhere
        fresh = rows.numel() > 0 and not bool(self.filled[rows].any())
        if self.enabled and not fresh:
            self._zero_unfilled()
        for chunk in row_chunks(rows, size):
            x = chunk.take(logits).to(dtype)
            sink = GradSink(self.grad, chunk, scale, fresh) if self.enabled else None
            total += kernel(x, chunk, sink)
        self.filled[rows] = True
        return total

    def _zero_unfilled(self) -> None:
        if self.grad is not None:
            self.grad[~self.filled] = 0
            self.filled.fill_(True)

    def attach(self, loss: Tensor) -> Tensor:
        """Return `loss` as a tensor whose backward hands out the buffered gradient."""
        if not self.enabled:
            return loss
        self._zero_unfilled()
        return _BufferedGrad.apply(self.logits, loss, self.grad)


class _BufferedGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, loss: Tensor, grad: Tensor) -> Tensor:  # noqa: D401
        ctx.save_for_backward(grad)
        return loss.detach().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        if not (grad_out.numel() == 1 and float(grad_out) == 1.0):
            grad = grad * grad_out.to(grad.dtype)
        return grad, None, None


class TensorRows:
    """Logits that the model has already materialised ([T, V]): a chunk is a view (or a gather) of its rows.

    The fused head (loss/fused_head.HeadRows) offers the same four members and makes each chunk's logits on demand.
    """

    def __init__(self, logits_flat: Tensor) -> None:
        self.logits = logits_flat  # kept with its graph: the gradient buffer attaches to it
        self.data = logits_flat.detach()
        self.vocab = int(logits_flat.shape[-1])
        self.dtype, self.device = logits_flat.dtype, logits_flat.device

    def narrow(self, vocab: int) -> TensorRows:
        """The first `vocab` columns (a teacher's padded vocab is sliced to the student's)."""
        return TensorRows(self.data[:, :vocab])

    def take(self, chunk: RowChunk) -> Tensor:
        return chunk.take(self.data)

    def chunk_rows(self, chunk_size: int) -> int:
        return chunk_rows(chunk_size, self.vocab)

    def grad_buffer(self) -> GradBuffer:
        return GradBuffer(self.logits)
