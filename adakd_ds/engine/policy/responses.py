"""The recipe's hook for `policy.data_policy`: replace a step's dataset micro-batches with student-made ones.

One object per run. `step_batches()` is called by every rank once per optimizer step, before the step's token counts
are taken, so LATF, IDTS and the rank-global statistics see the new responses exactly as they would see dataset ones
(the AdaKD loss is unchanged whatever the source). The dataset micro-batches are always read first, so the sample
order, and with it the resume position, does not depend on the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adakd_ds.config.schema import DataPolicy, RunConfig, ValMetric
from adakd_ds.data import Collator, GlobalBatchSampler
from adakd_ds.engine.models import unwrap
from adakd_ds.engine.policy.data_policy import PolicyDraw, Source
from adakd_ds.engine.policy.replay_buffer import ReplayBuffer
from adakd_ds.engine.policy.student_generate import generate_samples
from adakd_ds.eval.generate import stop_ids

Batch = dict[str, torch.Tensor]


class ResponseProvider:
    """Draws the step's source, generates (all ranks in lockstep) or replays, and keeps the numbers to log."""

    def __init__(
        self,
        cfg: RunConfig,
        tokenizer: Any,
        collate: Collator,
        sampler: GlobalBatchSampler,
        rank: int,
        total_steps: int,
    ) -> None:
        self.cfg = cfg.policy
        self.seed, self.max_len = cfg.train.seed, cfg.data.max_len
        self.micro_batch = cfg.train.micro_batch
        self.tokenizer, self.collate, self.sampler = tokenizer, collate, sampler
        self.draw = PolicyDraw(cfg.policy, cfg.train.seed, total_steps)
        distillm = cfg.policy.data_policy is DataPolicy.DISTILLM
        self.buffer = ReplayBuffer(cfg.policy.capacity, cfg.train.seed, rank) if distillm else None
        self.last_source = Source.DATASET
        self.gen_len = 0.0  # mean generated length (over all ranks) of the last generation

    @property
    def active(self) -> bool:
        return self.draw.active

    def step_batches(self, engine: Any, step: int, epoch: int, micro: int, batches: list[Batch]) -> list[Batch]:
        """The micro-batches optimizer step `step` trains on; `batches` are its dataset micro-batches from `micro`."""
        if not self.active:
            return batches
        full = self.buffer is not None and self.buffer.full  # every rank's buffer fills at the same pace
        source = self.draw.choose(step, full)
        self.last_source = source
        if source is Source.GENERATED:
            indices = [self.sampler.rank_indices(epoch, micro + j) for j in range(len(batches))]
            return self._generate(engine, step, batches, indices)
        if source is Source.REPLAY:
            assert self.buffer is not None
            return [self._collate(self.buffer.sample(self.micro_batch)) for _ in batches]
        return batches

    def _generate(self, engine: Any, step: int, batches: list[Batch], indices: list[list[int]]) -> list[Batch]:
        student = unwrap(engine)  # the bare module: its ZeRO-3 hooks gather the parameters of each forward
        eos_ids = stop_ids(self.tokenizer, student)
        eos_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else min(eos_ids)
        out, lengths = [], []
        engine.eval()
        try:
            for batch, idx in zip(batches, indices, strict=True):
                samples, lens = generate_samples(
                    student,
                    batch,
                    idx,
                    self.seed,
                    step,
                    self.max_len,
                    self.collate.pad_id,
                    eos_ids,
                    eos_id,
                    vocab_limit=len(self.tokenizer),
                )
                if self.buffer is not None:
                    self.buffer.add(samples)
                out.append(self._collate(samples))
                lengths += lens
        finally:
            engine.train()
        self.gen_len = _global_mean(lengths)
        return out

    def _collate(self, samples: Sequence[tuple[list[int], list[int]]]) -> Batch:
        return self.collate([{"input_ids": ids, "labels": labels} for ids, labels in samples])

    def observe_validation(self, metrics: dict[str, float]) -> None:
        """distillm's threshold follows the held-out loss (`policy.val_metric`)."""
        if self.cfg.data_policy is DataPolicy.DISTILLM:
            self.draw.threshold.observe(metrics["kd" if self.cfg.val_metric is ValMetric.KD else "ce"])

    def scalars(self) -> dict[str, float]:
        """TensorBoard / history numbers (empty for `dataset`)."""
        if not self.active:
            return {}
        out = {
            "policy/generated_share": self.draw.generated_share,
            "policy/gen_len": self.gen_len,
            "policy/source": float(list(Source).index(self.last_source)),
        }
        if self.buffer is not None:
            out["policy/phi"] = self.draw.threshold.phi
            out["policy/buffer_fill"] = len(self.buffer) / self.buffer.capacity
        return out

    def state_dict(self) -> dict[str, Any]:
        """The shared draw state, and this rank's buffer (DeepSpeed's ZeRO-3 client state is stored per rank)."""
        state: dict[str, Any] = {"draw": self.draw.state_dict(), "gen_len": self.gen_len}
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any] | None, same_world: bool = True) -> None:
        """A checkpoint without these fields (written before data policies existed) starts them fresh; so does the
        replay buffer of a checkpoint re-sharded to another world size (per-rank buffers do not map onto it)."""
        if not state:  # a dataset run continued as gkd / distillm starts its draws and buffer here
            return
        self.draw.load_state_dict(state["draw"])
        self.gen_len = float(state.get("gen_len", 0.0))
        if self.buffer is not None and "buffer" in state and same_world:
            self.buffer.load_state_dict(state["buffer"])


def _global_mean(values: list[int]) -> float:
    total = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return float(total[0] / max(float(total[1]), 1.0))
