"""Responses sampled from the current ZeRO-3 student, in lockstep on all ranks, for on-policy distillation.

Why lockstep: a ZeRO-3 forward gathers every parameter collectively, so a rank whose prompts finish early must keep
running forwards until every rank is done (HF generate's synced-GPU mode does the same). One all-reduce per new token
decides it. Why per-sample generators: sample i of step t draws from a generator seeded by (seed, t, i) with i the
sample's index in the dataset, so its text does not depend on the world size or on which rank holds it.

Decoding is the papers' (GKD, DistiLLM): temperature 1, top-p 1, no top-k, up to max_len - prompt length new tokens,
stop at EOS. The sample is laid out as training data is: prompt tokens keep label -100, the generated tokens are the
labels, and an EOS is appended (and trained on) when the student stopped by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adakd_ds.data.tokenize import IGNORE_INDEX, build_sample
from adakd_ds.eval.generate import Decoding, generate_batch, sample_seed

Sample = tuple[list[int], list[int]]


def prompt_of(input_ids: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """The prompt of one collated row (labels UNSHIFTED): the tokens before the first label."""
    valid = (labels != IGNORE_INDEX).nonzero()
    if not len(valid):
        raise ValueError("a training sample without any response token has no prompt boundary")
    return input_ids[: int(valid[0])].tolist()


def generation_seeds(seed: int, step: int, indices: Sequence[int]) -> list[int]:
    """One generator seed per sample from (run seed, optimizer step, dataset index): independent of the sharding."""
    step_seed = sample_seed(seed, step)
    return [sample_seed(step_seed, int(i)) for i in indices]


def all_ranks_done(local_done: bool) -> bool:
    """True once every rank's rows are finished (one all-reduce of a flag; the local answer without a group)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local_done
    flag = torch.tensor([0 if local_done else 1], dtype=torch.long)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag) == 0


def generate_samples(
    model: Any,
    batch: dict[str, torch.Tensor],
    indices: Sequence[int],
    seed: int,
    step: int,
    max_len: int,
    pad_id: int,
    eos_ids: set[int],
    eos_id: int,
    vocab_limit: int | None = None,
) -> tuple[list[Sample], list[int]]:
    """(samples, generated lengths) for one collated micro-batch; every rank must call it at the same time.

    `model` is the bare HF module of a ZeRO-3 engine (its hooks gather the parameters); the caller puts it in eval
    mode. Returned samples are (input_ids, labels) as in the tokenised dataset, ready for the collator.
    """
    prompts = [prompt_of(ids, labels) for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)]
    budgets = [max_len - len(p) for p in prompts]
    if min(budgets) < 1:
        raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room under max_len {max_len}")
    decoding = Decoding(greedy=False, temperature=1.0, top_p=1.0, max_new_tokens=max_len - 1)
    generated = generate_batch(
        model,
        prompts,
        pad_id,
        eos_ids,
        decoding,
        seeds=generation_seeds(seed, step, indices),
        vocab_limit=vocab_limit,
        budgets=budgets,
        all_done=all_ranks_done,
    )
    samples = [layout(p, t, max_len, eos_id) for p, t in zip(prompts, generated, strict=True)]
    return samples, [len(t) for t in generated]


def layout(prompt: list[int], tokens: list[int], max_len: int, eos_id: int) -> Sample:
    """(input_ids, labels) of a generated response: EOS appended when the student stopped before its budget."""
    stopped_by_eos = len(prompt) + len(tokens) < max_len  # generation stops at the budget or at EOS (not kept)
    sample = build_sample(prompt, tokens + [eos_id] if stopped_by_eos else tokens, max_len)
    if sample is None:
        raise ValueError(f"a prompt of {len(prompt)} tokens leaves no response under max_len {max_len}")
    return sample
