"""Label cross-entropy with its analytic gradient, for the (1 - kd_ratio) part of the objective."""

from __future__ import annotations

import torch
from torch import Tensor

from adakd_ds.loss.divergences._common import tempered_log_probs


@torch.no_grad()
def cross_entropy_with_grad(logits: Tensor, labels: Tensor, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(-log softmax(z)[label] per row, d/dz = softmax(z) - onehot(label))."""
    log_q = tempered_log_probs(logits, 1.0)
    idx = labels.long().unsqueeze(-1)
    values = -log_q.gather(-1, idx).squeeze(-1)
    if not want_grad:
        return values, None
    g = log_q.exp_()
    g.scatter_add_(-1, idx, torch.full_like(idx, -1, dtype=g.dtype))
    return values, g
