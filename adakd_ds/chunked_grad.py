"""Chunked loss with the gradient taken inside the forward pass.

A per-token loss over [T, V] logits built with plain autograd keeps several fp32 [T, V] intermediates alive until
backward: at a 152k vocab that is many GB. Here each chunk of rows is upcast, differentiated with a local autograd
graph and freed at once; only the gradient buffer (one tensor shaped like the logits, which backward must produce
anyway) outlives the chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from adakd_ds.losses._common import work_dtype

ChunkLoss = Callable[[Tensor, Tensor], Tensor]  # (student rows upcast, row positions in the chunk list) -> scalar


class GradBuffer:
    """The student-logit gradient, filled chunk by chunk; allocated only when the logits need a gradient."""

    def __init__(self, logits_flat: Tensor) -> None:
        self.logits = logits_flat
        self.enabled = logits_flat.requires_grad and torch.is_grad_enabled()
        self.grad = torch.zeros_like(logits_flat, requires_grad=False) if self.enabled else None

    def accumulate(self, rows: Tensor, fn: ChunkLoss, chunk_size: int, scale: float) -> Tensor:
        """Sum of fn over chunks of `rows` (a detached scalar); adds scale * d(sum)/d(logits) into the buffer."""
        total = torch.zeros((), dtype=work_dtype(self.logits), device=self.logits.device)
        for start in range(0, rows.numel(), chunk_size):
            idx = rows[start : start + chunk_size]
            positions = torch.arange(start, start + idx.numel(), device=idx.device)
            x = self.logits.detach().index_select(0, idx).to(work_dtype(self.logits))
            if self.enabled:
                with torch.enable_grad():
                    x.requires_grad_(True)
                    value = fn(x, positions)
                    (g,) = torch.autograd.grad(value, x)
                self.grad.index_add_(0, idx, (g * scale).to(self.grad.dtype))
            else:
                with torch.no_grad():
                    value = fn(x, positions)
            total = total + value.detach()
        return total

    def attach(self, loss: Tensor) -> Tensor:
        """Return `loss` as a tensor whose backward hands out the buffered gradient."""
        if not self.enabled:
            return loss
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
