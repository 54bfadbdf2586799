"""The default loss's value and gradient on a few fixed batches, computed by the code at commit d4631f7 (before the
issue-21 knobs) and stored in golden_default_loss.pt; test_knobs.py checks the current code reproduces them bit for bit.

Regenerate (only when the default loss is MEANT to change): python -m tests.loss.golden_default
"""

from __future__ import annotations

from pathlib import Path

import torch

from adakd_ds.config.schema import Divergence, LossConfig
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.fused_head import HeadInput
from tests.loss import reference_loss as ref

GOLDEN = Path(__file__).with_name("golden_default_loss.pt")

# name -> (LossConfig kwargs, dtype, fused head?, LATF ratio)
CASES: dict[str, tuple[dict, torch.dtype, bool, float]] = {
    "default_fp32": ({}, torch.float32, False, 0.75),
    "default_fp64": ({}, torch.float64, False, 0.5),
    "default_fp32_chunk3": ({"chunk_size": 3}, torch.float32, False, 1.0),
    "fused_fp32": ({}, torch.float32, True, 0.75),
    "jsd_autograd_fp32": ({"divergence": Divergence.JSD}, torch.float32, False, 0.75),
    "fkl_base_t2": ({"divergence": Divergence.FKL, "adakd": False, "temperature": 2.0}, torch.float32, False, 1.0),
    "idts_only_fkl": ({"divergence": Divergence.FKL, "latf": False, "c": 0.25}, torch.float32, False, 1.0),
}


def compute(name: str) -> dict[str, torch.Tensor]:
    """Loss and gradient(s) of one case under the code imported now."""
    kwargs, dtype, fused, ratio = CASES[name]
    zs, zt, labels, mask = ref.make_batch(2, 6, 40, seed=21)
    loss_fn = AdaKDLoss(LossConfig(**kwargs), total_steps=10)
    loss_fn.controller.ratio = ratio
    if fused:
        g = torch.Generator().manual_seed(5)
        hs = torch.randn(2, 6, 8, generator=g).to(dtype).requires_grad_(True)
        ws = torch.randn(40, 8, generator=g).to(dtype).requires_grad_(True)
        ht, wt = torch.randn(2, 6, 8, generator=g).to(dtype), torch.randn(40, 8, generator=g).to(dtype)
        loss, stats = loss_fn(HeadInput(hs, ws), HeadInput(ht, wt), labels, mask)
        loss.backward()
        return {"loss": loss.detach(), "grad_h": hs.grad, "grad_w": ws.grad, "taus": stats.taus}
    x = zs.to(dtype).requires_grad_(True)
    loss, stats = loss_fn(x, zt.to(dtype), labels, mask)
    loss.backward()
    return {"loss": loss.detach(), "grad": x.grad, "taus": stats.taus}


if __name__ == "__main__":
    torch.save({name: compute(name) for name in CASES}, GOLDEN)
    print(f"wrote {GOLDEN}")
