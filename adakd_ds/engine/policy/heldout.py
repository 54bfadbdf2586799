"""The trainer's periodic held-out evaluation on `data.eval_source`: label CE and KD divergence to the teacher.

Why here and not only in the experiment runner: DistiLLM's threshold follows the validation loss during training, and
everyone wants to see it. Every `train.eval_interval` optimizer steps (and at the end) all ranks evaluate their
strided shard of the held-out samples with the ZeRO-3 student and teacher, and the float64 sums are all-reduced, so
the numbers are the whole set's per-token means whatever the world size. Every rank runs the same number of
forwards: a rank whose shard is shorter evaluates a stand-in sample and throws the result away (ZeRO-3 would hang
on a skipped forward).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from adakd_ds.config.schema import Divergence, RunConfig
from adakd_ds.data import build_dataset
from adakd_ds.eval.heldout_loss import eval_loss_sums, finish_eval_loss

Sample = tuple[list[int], list[int]]


def shard_batches(samples: list[Sample], rank: int, world: int, batch_size: int) -> list[list[Sample] | None]:
    """This rank's batches, padded with None to the count of the rank with the most (the same on every rank)."""
    mine = samples[rank::world]
    longest = -(-len(samples) // world)
    count = -(-longest // batch_size)
    batches: list[list[Sample] | None] = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    return batches + [None] * (count - len(batches))


class HeldoutEval:
    """Loads the held-out set once; `run()` gives {"ce", "kd", "n_tokens"} (kd only with a teacher)."""

    def __init__(self, cfg: RunConfig, tokenizer: Any, pad_id: int, rank: int, world: int, barrier: Any) -> None:
        self.interval = cfg.train.eval_interval
        self.divergence: Divergence = cfg.loss.divergence
        self.batch_size = cfg.train.micro_batch
        self.pad_id = pad_id
        self.rank, self.world = rank, world
        self.samples: list[Sample] = []
        if cfg.data.eval_source:
            data_cfg = dataclasses.replace(cfg.data, source=cfg.data.eval_source)
            if rank != 0:  # rank 0 fills the datasets cache first, as for the training data
                barrier()
            data = build_dataset(data_cfg, tokenizer)
            if rank == 0:
                barrier()
            self.samples = [(list(r["input_ids"]), list(r["labels"])) for r in data]

    @property
    def enabled(self) -> bool:
        return bool(self.samples)

    def due(self, step: int, total_steps: int) -> bool:
        """Every `interval` steps and at the last step (the same answer on every rank)."""
        if not self.enabled:
            return False
        return step == total_steps or (self.interval > 0 and step % self.interval == 0)

    def run(self, student: Any, teacher: Any | None) -> dict[str, float]:
        """Data-parallel held-out CE (and KD divergence) of the bare student / teacher modules; all ranks call it."""
        keys = ["n_tokens", "ce"] + ([self.divergence.value] if teacher is not None else [])
        totals = torch.zeros(len(keys), dtype=torch.float64)
        for batch in shard_batches(self.samples, self.rank, self.world, self.batch_size):
            sums = eval_loss_sums(
                student, batch or self.samples[:1], self.pad_id, teacher, [self.divergence], len(batch or [0])
            )
            if batch is not None:
                totals += torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        result = finish_eval_loss(dict(zip(keys, totals.tolist(), strict=True)))
        out = {"ce": float(result["ce"]), "n_tokens": float(result["n_tokens"])}
        if teacher is not None:
            out["kd"] = float(result["kd"][self.divergence.value])
        return out
