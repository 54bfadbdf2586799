#!/usr/bin/env bash
# NOT YET RUN: prepared for a session that is lent a GPU (issue 14); no number in README.md or docs/benchmarks.md comes from it yet.
# 1) the fused and unfused AdaKD-rkl loss at 8192 tokens x 151936 vocab (hidden 1536) in bf16: time and peak CUDA
#    memory, each with loss.kernel eager and compiled (Triton; issue 24: the compile is in the untimed warm-up); 2) a 20-step distillation of a small real-vocab pair on 1 GPU under ZeRO-3, fused vs unfused: tokens/s.
# Usage (from the repository root, the package installed): bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python - <<'PY'
import time

import torch

from adakd_ds.config.schema import Divergence, LossConfig
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.fused_head import HeadInput

T, H, V, dev, dt = 8192, 1536, 151936, "cuda", torch.bfloat16
g = torch.Generator(device=dev).manual_seed(0)
hs = torch.randn(T, H, device=dev, dtype=dt, generator=g)
ht = torch.randn(T, H, device=dev, dtype=dt, generator=g)
ws = (torch.randn(V, H, device=dev, dtype=dt, generator=g) * H**-0.5).to(dt)
wt = (torch.randn(V, H, device=dev, dtype=dt, generator=g) * 2 * H**-0.5).to(dt)
y = torch.randint(0, V, (T,), device=dev, generator=g)
losses = {
    k: AdaKDLoss(LossConfig(divergence=Divergence.RKL, adakd=True, kernel=k), total_steps=100)
    for k in ("eager", "compiled")
}
for f in losses.values():
    f.controller.ratio = 0.75
    print(f.kernel_note)


def step(fused: bool, kernel: str) -> float:
    loss_fn = losses[kernel]
    a, b = hs.detach().requires_grad_(True), ws.detach().requires_grad_(True)
    if fused:
        loss = loss_fn(HeadInput(a, b), HeadInput(ht, wt), y)[0]
    else:
        with torch.no_grad():
            t_logits = ht @ wt.t()
        loss = loss_fn(a @ b.t(), t_logits, y)[0]
    loss.backward()
    return float(loss)


print("| way | loss.kernel | loss | median ms | peak CUDA memory above inputs (GiB) |")
print("|---|---|---|---:|---:|")
for fused, kernel in [(f, k) for _ in range(2) for f in (True, False) for k in ("eager", "compiled")]:
    step(fused, kernel)  # warm-up (and the compile)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = step(fused, kernel)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    print(f"| {'fused' if fused else 'unfused'} | {kernel} | {value:.5f} | {sorted(times)[2] * 1e3:.1f} | {peak:.2f} |")
PY
DS_ACCELERATOR=cuda OMP_NUM_THREADS=4 python bench/realvocab_step_bench.py --micro 8 32 --steps 20 --skip 5 \
    --teacher-hidden 512 --student-hidden 256
