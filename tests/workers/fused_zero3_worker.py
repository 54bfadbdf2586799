"""One rank of the 2-rank ZeRO-3 fused-head test (run by tests/loss/test_fused_head_zero3.py under torchrun).

For each student (tied and untied head) and each path (unfused logits, fused head), rank r runs its half of a fixed
batch through the real ZeRO-3 teacher and student engines, the AdaKD loss and engine.backward, then reads every
parameter's full gradient back from DeepSpeed's partitioned gradients (safe_get_full_grad) and steps with lr 0 to
clear them. Rank 0 saves what it saw; the parent compares with a plain float64 single-process run of the whole batch.
"""

from __future__ import annotations

import argparse
import os

import torch

from tests.workers.fused_zero3_common import RATIO, batch, loss_config


def run_student(case: str, student, ds: dict, teacher, rows: slice) -> dict:
    """Unfused then fused, on the same weights (lr 0): the loss, the selection and every full gradient."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from adakd_ds.eval.hidden_forward import call_loss, model_output
    from adakd_ds.loss.adakd_loss import AdaKDLoss

    ids, mask, targets = batch()
    engine, *_ = deepspeed.initialize(model=student, model_parameters=list(student.parameters()), config=ds)
    out = {}
    for fused in (False, True):
        loss_fn = AdaKDLoss(loss_config(), total_steps=10)
        loss_fn.controller.ratio = RATIO
        with torch.no_grad():
            t_out = model_output(teacher, ids[rows], mask[rows], fused)
        s_out = model_output(engine, ids[rows], mask[rows], fused)
        loss, stats = call_loss(engine, loss_fn, s_out, t_out, targets[rows], attention_mask=mask[rows])
        engine.backward(loss)
        grads = {n: safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()}
        engine.step()
        out[(case, fused)] = {
            "loss": stats.loss,
            "selected": stats.selected.cpu(),
            "taus": stats.taus.cpu(),
            "grads": grads,
        }
    engine.destroy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--local_rank", type=int, default=0)
    args = ap.parse_args()

    from adakd_ds.engine.distributed import init_distributed, shutdown_distributed

    info = init_distributed()
    from adakd_ds.config.schema import DType, RunConfig
    from adakd_ds.engine.ds_config import derive_teacher_config, fill_auto, load_ds_config
    from adakd_ds.engine.models import build_student, build_teacher

    rank, world = info.rank, info.world_size
    half = batch()[0].shape[0] // world
    rows = slice(rank * half, (rank + 1) * half)
    cfg = RunConfig()
    cfg.model.teacher = os.path.join(args.work, "teacher")
    cfg.train.micro_batch, cfg.train.lr, cfg.train.weight_decay = half, 0.0, 0.0  # lr 0: step() only clears grads
    raw = load_ds_config("ds_configs/zero3.json")
    ds = fill_auto(raw, cfg, world, source="ds_configs/zero3.json")
    teacher = build_teacher(cfg.model, derive_teacher_config(raw, cfg, world), DType.FP32)
    results = {}
    for case in ("tied", "untied"):
        cfg.model.student = os.path.join(args.work, f"student_{case}")
        results.update(run_student(case, build_student(cfg.model, ds, DType.FP32), ds, teacher, rows))
    if rank == 0:
        torch.save(results, os.path.join(args.work, "zero3_results.pt"))
    shutdown_distributed({"teacher": teacher})


if __name__ == "__main__":
    main()
