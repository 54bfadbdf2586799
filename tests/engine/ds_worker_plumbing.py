"""One rank of the 2-rank DeepSpeed plumbing test (run by tests/engine/test_ds_plumbing.py under torchrun).

Builds a ZeRO-3 student (fresh, from a config) and teacher (from disk) through adakd_ds, checks partitioning
and the teacher's weights, trains a few steps, exports from the live engine and saves a checkpoint. The parent
test compares what this writes against plain, non-DeepSpeed reloads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil

import torch


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def check_partitioned(model: torch.nn.Module, world: int, what: str) -> int:
    """Every param: this rank's partition holds ceil(numel / world) elements (half of it on 2 ranks)."""
    n = 0
    for name, p in model.named_parameters():
        check(hasattr(p, "ds_tensor"), f"{what}.{name} is not a ZeRO-3 parameter")
        check(
            p.ds_tensor.numel() == math.ceil(p.ds_numel / world),
            f"{what}.{name}: local partition {p.ds_tensor.numel()} of {p.ds_numel} on {world} ranks",
        )
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--ds", default="ds_configs/zero3.json")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--local_rank", type=int, default=0)  # passed by the deepspeed CLI
    args = ap.parse_args()

    from adakd_ds.engine.distributed import init_distributed, rank_zero_print, seed_everything, shutdown_distributed

    info = init_distributed()
    import deepspeed
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from adakd_ds.checkpoint.export import export_hf
    from adakd_ds.config.schema import DType, RunConfig
    from adakd_ds.engine.ds_config import derive_teacher_config, fill_auto, load_ds_config
    from adakd_ds.engine.models import build_student, build_teacher, check_vocab

    seed_everything(1234)
    w = args.work
    cfg = RunConfig()
    cfg.model.student_config = os.path.join(w, "student_cfg")
    cfg.model.teacher = os.path.join(w, "teacher")
    cfg.model.tokenizer = os.path.join(w, "tok")
    cfg.train.micro_batch, cfg.train.grad_accum, cfg.train.lr, cfg.train.weight_decay = 2, 1, 1e-2, 0.01
    cfg.train.dtype = DType.FP32
    world = info.world_size
    check(world == 2, f"expected 2 ranks, got {world}")

    raw = load_ds_config(args.ds)
    ds = fill_auto(raw, cfg, world, source=args.ds)
    student = build_student(cfg.model, ds, DType.FP32)
    n_student = check_partitioned(student, world, "student")
    engine, optimizer, _, _ = deepspeed.initialize(model=student, model_parameters=student.parameters(), config=ds)

    teacher = build_teacher(cfg.model, derive_teacher_config(raw, cfg, world), DType.FP32)
    n_teacher = check_partitioned(teacher.module, world, "teacher")
    on_disk = load_file(os.path.join(w, "teacher", "model.safetensors"))
    params = dict(teacher.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        for name, p in params.items():
            check(torch.equal(p.detach().cpu(), on_disk[name]), f"teacher {name} differs from the file on disk")

    tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    sliced = check_vocab(engine, teacher, tok)  # teacher 320 (padded) vs student 256: allowed, teacher sliced
    check(sliced.student_width is None and "from 320 to 256" in (sliced.note or ""), f"padded teacher: {sliced}")
    padded_student = check_vocab(teacher, engine, tok)  # a padded student (320) with an exact teacher (256)
    check(padded_student.student_width == 256, f"padded student: {padded_student}")
    for bad in ((engine, teacher, _grown(tok, 300)), (teacher, engine, _grown(tok, 300))):
        try:
            check_vocab(*bad)
        except ValueError as exc:
            rank_zero_print("check_vocab raised as expected:", exc)
        else:
            raise AssertionError("check_vocab accepted a mismatched vocabulary")

    sparams = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(sparams.values())):
        initial = {k: v.detach().cpu().clone() for k, v in sparams.items()}

    gen = torch.Generator().manual_seed(100 + info.rank)  # different data per rank, as in real training
    v_s = 256
    losses = []
    engine.train()
    for _ in range(args.steps):
        ids = torch.randint(4, 200, (cfg.train.micro_batch, 16), generator=gen)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits[..., :v_s]
        out = engine(input_ids=ids, labels=ids)
        kd = torch.nn.functional.kl_div(
            out.logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True, reduction="batchmean"
        )
        loss = out.loss + 0.1 * kd
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    check(all(math.isfinite(x) for x in losses), f"non-finite losses {losses}")

    engine.eval()
    probe = torch.arange(4, 36).view(2, 16)
    with torch.no_grad():
        logits = engine(input_ids=probe).logits.float()
    with deepspeed.zero.GatheredParameters(list(sparams.values())):
        gathered = {k: v.detach().cpu().clone() for k, v in sparams.items()}
    unchanged = [k for k in gathered if torch.equal(gathered[k], initial[k])]
    check(not unchanged, f"optimizer steps left these student params unchanged: {unchanged}")
    if info.rank == 0:
        torch.save(
            {
                "logits": logits,
                "gathered": gathered,
                "losses": losses,
                "probe": probe,
                "n_student": n_student,
                "n_teacher": n_teacher,
            },
            os.path.join(w, "engine_out.pt"),
        )

    export_hf(engine, os.path.join(w, "export_live"), cfg.model.student_config, tok)
    engine.save_checkpoint(os.path.join(w, "ckpt"), tag="step3")
    if info.rank == 0:  # what the trainer is expected to do: keep config + tokenizer next to the checkpoints
        shutil.copy(os.path.join(w, "student_cfg", "config.json"), os.path.join(w, "ckpt", "config.json"))
        tok.save_pretrained(os.path.join(w, "ckpt"))
        with open(os.path.join(w, "worker_done.json"), "w") as fh:
            json.dump({"losses": losses}, fh)

    holder = {"engine": engine, "teacher": teacher, "optimizer": optimizer, "student": student}
    del engine, teacher, optimizer, student, params, sparams
    shutdown_distributed(holder)


def _grown(tok, n: int):
    """A copy of the tokenizer with extra tokens up to n, larger than the student's 256 rows."""
    import copy

    big = copy.deepcopy(tok)
    big.add_tokens([f"extra{i}" for i in range(n - len(big))])
    return big


if __name__ == "__main__":
    main()
