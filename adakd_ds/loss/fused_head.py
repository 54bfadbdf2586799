"""The fused output head: logits made chunk by chunk from a model's last hidden states, never as a [T, V] tensor.

Why: at a real vocab (Qwen2's 151936) the student's logits, their gradient and the teacher's logits are each one
fp32 [T, V] tensor (1.16 GB at 2048 tokens), which is what limits the micro-batch. Here the loss's two passes
(difficulty without grad, then the loss with its gradient) ask a `HeadRows` for the logits of one chunk of rows at a
time: hidden[rows] @ W.T. The gradient of each chunk goes at once into the hidden states' gradient ([T, H]) and the
head weight's gradient ([V, H], which backward has to produce anyway), and the chunk is freed.

Under ZeRO-3 the head weights are partitioned: `gathered` holds a head weight whole for the duration of the loss
(the teacher's). The student's weight gradient must reach autograd while its parameter is whole (autograd copies a
gradient into the parameter's current shape), so the engine runs this loss AS the student's lm_head module's forward
(eval/hidden_forward.call_loss): ZeRO-3's own module hooks then gather the weight for the forward and again for the
backward, and DeepSpeed's gradient hook reduce-scatters it, exactly as after a plain lm_head. A tied head (the input
embedding) is the same parameter: autograd adds this gradient to the embedding's own before the hook runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from adakd_ds.loss.chunked_grad import ChunkKernel, RowChunk, row_chunks
from adakd_ds.loss.divergences._common import work_dtype

# logits per [chunk, V] working tensor for the fused head when chunk_size is 0 ("auto"): 128 MiB in fp32. Larger than
# the unfused default because each chunk also multiplies by the whole head weight, and grad_W += g.T @ h reads and
# writes all of the [V, H] weight gradient once per chunk: fewer, taller chunks (about 220 rows at a 151936 vocab)
# keep those matmuls compute-bound, at the price of a larger working set (measured in bench/head_bench.py).
FUSED_AUTO_CHUNK_ELEMENTS = 2**25


@dataclass
class HeadInput:
    """One model's last hidden states (after the final norm) and its output head: logits = hidden @ weight.T + bias."""

    hidden: Tensor  # [..., H]
    weight: Tensor  # [V, H]; under ZeRO-3 a partitioned parameter (gathered by the loss)
    bias: Tensor | None = None  # [V] or None


@contextlib.contextmanager
def gathered(params: list[Tensor]) -> Iterator[None]:
    """Hold ZeRO-3 partitioned parameters whole (read-only) inside the block; plain tensors pass through.

    One GatheredParameters per distinct parameter, in the given order, so every rank gathers the same ones in the
    same order (a tied head named twice is gathered once). A parameter that is already whole (its module's ZeRO-3
    hook gathered it, see eval/hidden_forward.call_loss) is left alone, so that its module releases it as usual.
    """
    zero: list[Tensor] = []
    for p in params:
        if p is not None and hasattr(p, "ds_id") and all(p is not q for q in zero):
            zero.append(p)
    if not zero:
        yield
        return
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    zero = [p for p in zero if p.ds_status is not ZeroParamStatus.AVAILABLE]  # the same on every rank

    with contextlib.ExitStack() as stack:
        for p in zero:
            stack.enter_context(deepspeed.zero.GatheredParameters([p], modifier_rank=None))
        yield


class HeadRows:
    """Logits [T, V] that exist one chunk of rows at a time: F.linear(hidden[rows], weight, bias)."""

    def __init__(self, hidden_flat: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        if weight.dim() != 2 or weight.shape[1] != hidden_flat.shape[-1]:
            raise ValueError(
                f"head weight {tuple(weight.shape)} does not match hidden states {tuple(hidden_flat.shape)}: "
                "expected [V, H] with H the hidden size (is the ZeRO-3 weight gathered?)"
            )
        self.hidden, self.weight, self.bias = hidden_flat, weight, bias
        self.h_data, self.w_data = hidden_flat.detach(), weight.detach()
        self.b_data = bias.detach() if bias is not None else None
        self.vocab = int(weight.shape[0])
        self.dtype, self.device = hidden_flat.dtype, hidden_flat.device

    def narrow(self, vocab: int) -> HeadRows:
        """The first `vocab` output rows of the head (a teacher's padded vocab): no logit beyond them is computed."""
        bias = self.b_data[:vocab] if self.b_data is not None else None
        return HeadRows(self.h_data, self.w_data[:vocab], bias)

    def project(self, h: Tensor) -> Tensor:
        """Logits of hidden rows h, in the model's dtype (as its lm_head would make them)."""
        with torch.no_grad():
            return F.linear(h, self.w_data, self.b_data)

    def take(self, chunk: RowChunk) -> Tensor:
        return self.project(chunk.take(self.h_data))

    def chunk_rows(self, chunk_size: int) -> int:
        return chunk_size if chunk_size > 0 else max(1, FUSED_AUTO_CHUNK_ELEMENTS // self.vocab)

    def grad_buffer(self) -> HeadGradBuffer:
        return HeadGradBuffer(self)


class HeadGradSink:
    """One chunk's logit gradient g, sent on at once: grad_h[rows] += g W, grad_W += g.T h[rows], grad_b += sum g."""

    def __init__(self, buffer: HeadGradBuffer, h: Tensor, chunk: RowChunk, scale: float) -> None:
        self.buffer, self.h, self.chunk, self.scale = buffer, h, chunk, scale

    def add(self, g: Tensor, coef: Tensor) -> None:
        """g is a temporary the caller gives up (it is scaled in place)."""
        self.add_scaled(g.mul_(coef * self.scale))

    def add_scaled(self, g: Tensor) -> None:
        """g already holds scale * coef * the logit gradient (a compiled kernel folded the scaling into its pass)."""
        buf, rows = self.buffer, self.chunk.rows
        g = g.to(buf.head.w_data.dtype)  # the lm_head's backward runs in the model's dtype
        gh = torch.mm(g, buf.head.w_data).to(buf.grad_h.dtype)
        if isinstance(rows, slice):
            buf.grad_h[rows] += gh
        else:
            buf.grad_h.index_add_(0, rows, gh)
        if buf.grad_w is not None:
            if g.dtype == buf.grad_w.dtype:
                buf.grad_w.addmm_(g.t(), self.h)
            else:
                buf.grad_w += torch.mm(g.t(), self.h).to(buf.grad_w.dtype)
        if buf.grad_b is not None:
            buf.grad_b += g.sum(0).to(buf.grad_b.dtype)


class HeadGradBuffer:
    """The gradients of the hidden states and the head, filled chunk by chunk (GradBuffer's fused counterpart)."""

    def __init__(self, head: HeadRows) -> None:
        self.head = head
        grad_on = torch.is_grad_enabled()
        wants = [t is not None and t.requires_grad for t in (head.hidden, head.weight, head.bias)]
        self.enabled = grad_on and any(wants)
        dt = work_dtype(head.dtype)
        self.grad_h = torch.zeros(head.hidden.shape, dtype=dt, device=head.device) if self.enabled else None
        self.grad_w = (
            torch.zeros(head.weight.shape, dtype=dt, device=head.device) if self.enabled and wants[1] else None
        )
        self.grad_b = torch.zeros(head.bias.shape, dtype=dt, device=head.device) if self.enabled and wants[2] else None

    def accumulate(self, rows: Tensor, kernel: ChunkKernel, size: int, scale: float) -> Tensor:
        """Sum of the kernel over chunks of `rows` (a detached scalar); adds scale * its gradient to the buffers."""
        dtype = work_dtype(self.head.dtype)
        total = torch.zeros((), dtype=dtype, device=self.head.device)
        for chunk in row_chunks(rows, size):
            h = chunk.take(self.head.h_data)
            x = self.head.project(h).to(dtype)
            sink = HeadGradSink(self, h, chunk, scale) if self.enabled else None
            total += kernel(x, chunk, sink)
        return total

    def attach(self, loss: Tensor) -> Tensor:
        """`loss` as a tensor whose backward hands out the buffered gradients (in each input's own dtype)."""
        if not self.enabled:
            return loss
        head = self.head

        def cast(g: Tensor | None, like: Tensor | None) -> Tensor | None:
            return None if g is None or like is None else g.to(like.dtype)

        return _HeadGrad.apply(
            loss,
            head.hidden,
            head.weight,
            head.bias,
            cast(self.grad_h, head.hidden),
            cast(self.grad_w, head.weight),
            cast(self.grad_b, head.bias),
        )


class _HeadGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, hidden, weight, bias, grad_h, grad_w, grad_b):  # noqa: D401
        ctx.grads = (grad_h, grad_w, grad_b)
        return loss.detach().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        grads = ctx.grads
        ctx.grads = None  # the [V, H] weight gradient is freed as soon as autograd has taken it
        if not (grad_out.numel() == 1 and float(grad_out) == 1.0):
            grads = tuple(None if g is None else g * grad_out.to(g.dtype) for g in grads)
        return (None, *grads, None, None, None)


__all__ = ["FUSED_AUTO_CHUNK_ELEMENTS", "HeadGradBuffer", "HeadInput", "HeadRows", "gathered"]
