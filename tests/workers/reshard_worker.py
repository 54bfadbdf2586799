"""A tiny ZeRO-3 Llama run for tests/engine/test_reshard.py: train, save, go on; or load a checkpoint of another world size.

phase=train: 3 optimizer steps, a checkpoint at step 3 (CheckpointManager, the recipe's layout), the fp32 params
gathered at save time, then 3 more steps. phase=resume: a fresh engine on this world size loads the step-3 checkpoint
through adakd_ds.checkpoint.reshard, records the fp32 params right after loading, and runs the same 3 steps. Every step sees
the same 4 global samples whatever the world size (world x micro_batch x grad_accum = 4); rank 0 writes the losses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from adakd_ds.checkpoint.manager import CheckpointManager, tag_for  # noqa: E402
from adakd_ds.engine.distributed import init_distributed, seed_everything, shutdown_distributed  # noqa: E402

GLOBAL_BATCH = 4
SEQ_LEN = 12
VOCAB = 64
SAVE_AT = 3
STEPS = 6
BASE_LR = 3e-2


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--phase", choices=("train", "resume"), required=True)
    ap.add_argument("--micro_batch", type=int, required=True)
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--offload", action="store_true", help="optimizer offload to CPU (torch AdamW kept)")
    ap.add_argument("--cpu_adam", action="store_true", help="with --offload: DeepSpeedCPUAdam (JIT-compiles ~40 s)")
    ap.add_argument("--tied", action="store_true", help="tie the input and output embeddings")
    ap.add_argument("--persist", type=int, default=20, help="stage3_param_persistence_threshold")
    ap.add_argument("--sub_group", type=int, default=1500, help="sub_group_size")
    ap.add_argument("--from_step", type=int, default=SAVE_AT, help="resume: the checkpoint to load")
    ap.add_argument("--save_at", type=int, default=0, help="resume: also checkpoint after this step")
    ap.add_argument("--tag", default="")
    ap.add_argument("--local_rank", type=int, default=0)
    return ap.parse_args()


def ds_config(args: argparse.Namespace, world: int) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": args.grad_accum,
        "train_batch_size": args.micro_batch * args.grad_accum * world,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": args.dtype == "bf16"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": BASE_LR, "weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True},
        },
        "zero_optimization": {
            "stage": 3,
            "contiguous_gradients": True,
            # the norm weights (16) stay gathered, as in real runs; the rest is partitioned
            "stage3_param_persistence_threshold": args.persist,
            # several optimizer sub-groups, laid out differently on 1 and 2 ranks
            "sub_group_size": args.sub_group,
        },
        "steps_per_print": 10**9,
    }
    if args.offload:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        cfg["zero_force_ds_cpu_optimizer"] = False
        if args.cpu_adam:
            del cfg["optimizer"]["params"]["torch_adam"]
    return cfg


def build_engine(args: argparse.Namespace, world: int):
    import deepspeed
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.integrations import HfDeepSpeedConfig

    cfg = ds_config(args, world)
    keep = HfDeepSpeedConfig(cfg)  # noqa: F841  (zero.Init while it lives: params are born partitioned)
    model_cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=args.tied,
    )
    model = AutoModelForCausalLM.from_config(model_cfg, dtype=torch.float32)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=list(model.parameters()),
        config=cfg,
        # the lr changes every step, so a lost scheduler state would show in the losses
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)),
    )
    engine.train()
    return engine


def samples() -> torch.Tensor:
    """Learnable sequences (start + stride * t), so a few steps move the loss and any lost state shows."""
    g = torch.Generator().manual_seed(1234)
    n = STEPS * GLOBAL_BATCH
    start = torch.randint(0, VOCAB - 3, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return 3 + (start + stride * torch.arange(SEQ_LEN)) % (VOCAB - 3)


def train_step(engine, data: torch.Tensor, step: int, rank: int, world: int, micro: int, accum: int) -> float:
    """Optimizer step `step` (1-based) over global samples [4(step-1), 4 step); returns the global mean loss."""
    total = torch.zeros(1, dtype=torch.float64)
    for k in range(accum):
        start = (step - 1) * GLOBAL_BATCH + k * world * micro + rank * micro
        ids = data[start : start + micro]
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        total += float(loss.detach())
    torch.distributed.all_reduce(total)
    return float(total) / (world * accum)


def gather_state(engine) -> dict:
    """Full fp32 params and Adam moments per parameter (collectives: every rank calls it), the lr and Adam's step."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    state: dict = {"fp32": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for name, p in engine.module.named_parameters():
        state["fp32"][name] = safe_get_full_fp32_param(p).detach().clone().cpu()
        for key in ("exp_avg", "exp_avg_sq"):
            state[key][name] = safe_get_full_optimizer_state(p, key).detach().clone().cpu()
    state["lr"] = [float(x) for x in engine.get_lr()]
    state["adam_step"] = sorted({int(s["step"]) for s in engine.optimizer.optimizer.state.values()})
    state["global_steps"] = engine.global_steps
    state["optimizer"] = type(engine.optimizer.optimizer).__name__
    return state


def save(engine, out: Path, step: int, rank: int, suffix: str) -> None:
    """A checkpoint in the recipe's layout, and the full state of the saving engine for the test to compare."""
    CheckpointManager(out, keep_last=5).save(engine, step, {"global_step": step, "note": "reshard"})
    state = gather_state(engine)
    if rank == 0:
        torch.save(state, out / f"state_at_save{suffix}.pt")


def main() -> int:
    args = parse_args()
    info = init_distributed()
    rank, world = info.rank, info.world_size
    assert args.micro_batch * args.grad_accum * world == GLOBAL_BATCH, "the global batch must stay 4"
    seed_everything(0)
    out = Path(args.out)
    engine = build_engine(args, world)
    assert bool(engine.zero_offload_optimizer()) == args.offload
    data = samples()
    losses: dict[int, float] = {}
    if args.phase == "train":
        first, save_at, suffix = 1, SAVE_AT, ""
    else:
        from adakd_ds.checkpoint.reshard import load_resharded

        client_state = load_resharded(engine, out / "checkpoints" / tag_for(args.from_step))
        state = gather_state(engine)
        if rank == 0:
            torch.save(state, out / f"state_after_load_{args.tag}.pt")
            (out / f"client_state_{args.tag}.json").write_text(json.dumps(client_state, default=repr))
        first, save_at, suffix = int(client_state["global_step"]) + 1, args.save_at, f"_{args.tag}"
    for step in range(first, STEPS + 1):
        losses[step] = train_step(engine, data, step, rank, world, args.micro_batch, args.grad_accum)
        if step == save_at:
            save(engine, out, step, rank, suffix)
    if rank == 0:
        name = "losses_train.json" if args.phase == "train" else f"losses_resume_{args.tag}.json"
        (out / name).write_text(json.dumps(losses))
    holders = {"engine": engine}
    del engine
    shutdown_distributed(holders)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.exit(main())
