"""The sample order: one global permutation per epoch, cut into global micro-batches, each split across ranks.

- Epoch e's order is torch.randperm(num_samples) from a CPU torch.Generator seeded with seed * 1000003 + e
  (1000003 is a prime larger than any epoch count, so (seed, epoch) pairs never collide for small seeds).
- Global micro-step t of an epoch takes perm[t*G : (t+1)*G], G = world_size * micro_batch; rank r takes the r-th
  contiguous slice of length micro_batch. A sample's place in the order therefore does not depend on the world size:
  2 ranks x micro_batch m and 1 rank x micro_batch 2m see the same global batches.
- The incomplete last global batch of an epoch is dropped, so every rank has exactly micro_batch samples at every
  step (a rank that skipped a forward would hang ZeRO-3).
- Resume jumps straight to (epoch, micro_step) by slicing; nothing before it is iterated. The trainer consumes
  grad_accum consecutive micro-steps per optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

SEED_EPOCH_STRIDE = 1000003


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch (documented above; checkpoints need not store the permutation)."""
    return seed * SEED_EPOCH_STRIDE + epoch


class GlobalBatchSampler:
    """Yields this rank's micro-batch indices; usable as a DataLoader batch_sampler after set_epoch()."""

    def __init__(self, num_samples: int, global_batch: int, micro_batch: int, rank: int, seed: int) -> None:
        if micro_batch < 1 or global_batch < 1 or global_batch % micro_batch:
            raise ValueError(
                f"global_batch ({global_batch}) must be a positive multiple of micro_batch ({micro_batch}): "
                "it is world_size * micro_batch"
            )
        self.world_size = global_batch // micro_batch
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside [0, {self.world_size}) for world_size {self.world_size}")
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global micro-batch of {global_batch} "
                f"(world_size {self.world_size} x micro_batch {micro_batch}): no step could run"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.rank = rank
        self.seed = seed
        self._cached: tuple[int, torch.Tensor] | None = None
        self._epoch = 0
        self._start = 0

    @property
    def steps_per_epoch(self) -> int:
        """Micro-steps per epoch (the last incomplete global batch is dropped)."""
        return self.num_samples // self.global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The global order of epoch `epoch` (the same on every rank and for every world size)."""
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(epoch_seed(self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.num_samples, generator=gen))
        return self._cached[1]

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"micro-step {step} is outside [0, {self.steps_per_epoch}) of an epoch")

    def global_indices(self, epoch: int, step: int) -> list[int]:
        """All ranks' samples of global micro-step `step`, in rank order."""
        self._check_step(step)
        start = step * self.global_batch
        return self.permutation(epoch)[start : start + self.global_batch].tolist()

    def rank_indices(self, epoch: int, step: int) -> list[int]:
        """This rank's micro-batch at global micro-step `step` of `epoch`."""
        self._check_step(step)
        start = step * self.global_batch + self.rank * self.micro_batch
        return self.permutation(epoch)[start : start + self.micro_batch].tolist()

    def iter_micro_batches(self, epoch: int, start_micro_step: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches of `epoch` from `start_micro_step` to the end of the epoch, without replaying."""
        if not 0 <= start_micro_step <= self.steps_per_epoch:
            raise IndexError(f"start_micro_step {start_micro_step} is outside [0, {self.steps_per_epoch}]")
        for step in range(start_micro_step, self.steps_per_epoch):
            yield self.rank_indices(epoch, step)

    def locate(self, consumed_micro_steps: int) -> tuple[int, int]:
        """(epoch, micro_step) of the next micro-step after `consumed_micro_steps` in total.

        A run that stopped exactly at an epoch end resumes at (epoch + 1, 0), never at an empty remainder.
        """
        if consumed_micro_steps < 0:
            raise ValueError(f"consumed_micro_steps must be >= 0, got {consumed_micro_steps}")
        return divmod(consumed_micro_steps, self.steps_per_epoch)

    # DataLoader batch_sampler protocol
    def set_epoch(self, epoch: int, start_micro_step: int = 0) -> None:
        """Choose what __iter__ yields next: `epoch` from `start_micro_step`."""
        if not 0 <= start_micro_step <= self.steps_per_epoch:
            raise IndexError(f"start_micro_step {start_micro_step} is outside [0, {self.steps_per_epoch}]")
        self._epoch, self._start = epoch, start_micro_step

    def __iter__(self) -> Iterator[list[int]]:
        return self.iter_micro_batches(self._epoch, self._start)

    def __len__(self) -> int:
        return self.steps_per_epoch - self._start
