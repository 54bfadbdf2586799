"""Micro-batch collation: right-pad to the longest sample of the micro-batch.

Right padding keeps every sample's tokens at positions 0..len-1, so position ids need no care; padded positions have
label -100 (never trained or distilled) and attention_mask 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from adakd_ds.data.tokenize import IGNORE_INDEX


def pad_token_id(tokenizer: Any) -> int:
    """The pad id: the tokenizer's pad, else its EOS, else 0 (masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def collate_samples(samples: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """{input_ids, attention_mask, labels} as [B, T] tensors (int64), T = the longest sample."""
    if not samples:
        raise ValueError("cannot collate an empty micro-batch")
    longest = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        if len(sample["labels"]) != n:
            raise ValueError(f"sample {row}: {len(sample['labels'])} labels for {n} input_ids")
        input_ids[row, :n] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(sample["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class Collator:
    """A picklable collate_fn for DataLoader (works in worker processes)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> Collator:
        return cls(pad_token_id(tokenizer))

    def __call__(self, samples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        return collate_samples(samples, self.pad_id)
