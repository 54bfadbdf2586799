"""DistiLLM's replay buffer: the student-generated sequences of earlier steps, reused as off-policy training data.

Why per rank: each rank keeps the sequences it generated itself, so nothing crosses ranks and a buffer batch is
always a batch that this rank generated earlier. Every rank adds micro_batch sequences per generated micro-step and
has the same capacity, so all buffers fill at the same pace and "the buffer is full" is the same answer everywhere.
When full, the oldest sequences go first (FIFO). Sampling draws from a generator seeded by (seed, rank) whose state is
part of the checkpoint, so a resumed run replays exactly the batches the uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Sample = tuple[list[int], list[int]]  # (input_ids, labels UNSHIFTED), as the tokenised dataset stores them

_RANK_STRIDE = 7_919  # a prime, so (seed, rank) pairs give distinct generator seeds


class ReplayBuffer:
    """A bounded FIFO of (input_ids, labels) pairs with seeded sampling without replacement."""

    def __init__(self, capacity: int, seed: int, rank: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: list[Sample] = []
        self.generator = torch.Generator().manual_seed(seed * _RANK_STRIDE + rank)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def add(self, samples: Sequence[Sample]) -> None:
        """Append, dropping the oldest beyond capacity."""
        self.items.extend((list(ids), list(labels)) for ids, labels in samples)
        if len(self.items) > self.capacity:
            del self.items[: len(self.items) - self.capacity]

    def sample(self, n: int) -> list[Sample]:
        """n stored sequences (distinct while the buffer holds n or more, else with repeats)."""
        if not self.items:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if n <= len(self.items):
            idx = torch.randperm(len(self.items), generator=self.generator)[:n]
        else:
            idx = torch.randint(len(self.items), (n,), generator=self.generator)
        return [self.items[int(i)] for i in idx]

    def state_dict(self) -> dict[str, Any]:
        """Flat tensors (a JSON dump of the client state shows them as one word, not 1000 lists)."""
        lengths = torch.tensor([len(ids) for ids, _ in self.items], dtype=torch.long)
        flat_ids = torch.tensor([t for ids, _ in self.items for t in ids], dtype=torch.long)
        flat_labels = torch.tensor([t for _, labels in self.items for t in labels], dtype=torch.long)
        return {
            "capacity": self.capacity,
            "lengths": lengths,
            "input_ids": flat_ids,
            "labels": flat_labels,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lengths = state["lengths"].tolist()
        ids, labels = state["input_ids"].tolist(), state["labels"].tolist()
        self.items, start = [], 0
        for n in lengths:
            self.items.append((ids[start : start + n], labels[start : start + n]))
            start += n
        if len(self.items) > self.capacity:  # a smaller capacity now: keep the newest
            del self.items[: len(self.items) - self.capacity]
        self.generator.set_state(state["generator"])
