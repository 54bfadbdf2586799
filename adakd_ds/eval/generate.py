"""Batched, left-padded generation with a KV cache, where each sample draws from its OWN seeded generator.

Why not ``model.generate``: its sampling draws from the global RNG, so a sample's text would depend on which other
prompts share its batch, on the batch size and on the number of ranks. Here sample ``i`` under seed ``s`` uses one
uniform per step from ``torch.Generator(seed=sample_seed(s, i))`` and inverse-CDF sampling, so its text is the same
whatever the sharding, up to the float noise of different padding (which only matters when a uniform lands exactly on
a CDF boundary). Greedy decoding is argmax.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

_SEED_STRIDE = 1_000_003  # a prime, so (seed, index) pairs map to distinct generator seeds


@dataclass(frozen=True)
class Decoding:
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling (use --greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` (a global index, so it does not depend on the shard) under ``seed``."""
    return (seed * _SEED_STRIDE + index) % (2**63 - 1)


def stop_ids(tokenizer: Any, model: Any) -> set[int]:
    """eos of the tokenizer and of the model's generation config (which may list several)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an eos token; generation could not stop")
    return ids


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """input_ids, attention_mask and position_ids (counting real tokens only) of a left-padded batch."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        if not p:
            raise ValueError("cannot generate from an empty prompt (no token at all)")
        ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _choose(logits: torch.Tensor, decoding: Decoding, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Next token per row: argmax, or inverse-CDF sampling (temperature, nucleus) with one uniform per row."""
    logits = logits.float()
    if decoding.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits / decoding.temperature, dim=-1).double()
    order = None
    if decoding.top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        cum = probs.cumsum(-1)
        probs = probs.masked_fill(cum - probs >= decoding.top_p, 0.0)  # keeps the first token always
    cdf = probs.cumsum(-1)
    assert generators is not None
    u = torch.tensor([torch.rand((), generator=g, dtype=torch.float64).item() for g in generators], dtype=torch.float64)
    u = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    return order.gather(-1, idx.unsqueeze(-1)).squeeze(-1) if order is not None else idx


def _cache_names(model: Any) -> tuple[str, str]:
    """(forward kwarg, output attribute) of the KV cache: transformers 5.x renamed past_key_values to cache."""
    params = inspect.signature(model.forward).parameters
    return ("cache", "cache") if "cache" in params else ("past_key_values", "past_key_values")


@torch.no_grad()
def generate_batch(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    pad_id: int,
    eos_ids: set[int],
    decoding: Decoding,
    seeds: Sequence[int] | None = None,
    vocab_limit: int | None = None,
    budgets: Sequence[int] | None = None,
    all_done: Callable[[bool], bool] | None = None,
) -> list[list[int]]:
    """Generated token ids per prompt (eos excluded). ``seeds`` gives one generator seed per prompt when sampling.

    ``vocab_limit`` masks logits beyond the tokenizer's vocab (models often pad their embedding matrix).
    ``budgets`` caps each row's new tokens (at most ``decoding.max_new_tokens``). ``all_done(local)`` turns this
    process's "every row finished" into the decision of all ranks: ZeRO-3 gathers parameters in every forward, so
    under it every rank must run the same number of forwards (the synced-GPU mode of HF generate).
    """
    device = next(model.parameters()).device
    ids, mask, pos = left_pad(prompt_ids, pad_id, device)
    generators = None
    if not decoding.greedy:
        if seeds is None or len(seeds) != len(prompt_ids):
            raise ValueError("sampling needs one seed per prompt")
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    cache_kw, cache_attr = _cache_names(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, logits = getattr(out, cache_attr), out.logits[:, -1, :]
    next_pos = pos[:, -1] + 1
    eos = torch.tensor(sorted(eos_ids), device=device)
    done = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    result: list[list[int]] = [[] for _ in prompt_ids]
    budget = torch.tensor(list(budgets) if budgets is not None else [decoding.max_new_tokens] * len(prompt_ids))
    for step in range(decoding.max_new_tokens):
        if vocab_limit is not None and logits.shape[-1] > vocab_limit:
            logits = logits[:, :vocab_limit]
        token = _choose(logits, decoding, generators)
        finished_now = torch.isin(token, eos)
        for row, (t, d, f) in enumerate(zip(token.tolist(), done.tolist(), finished_now.tolist(), strict=True)):
            if not d and not f:
                result[row].append(t)
        done |= finished_now | (torch.tensor([len(r) for r in result]) >= budget).to(device)
        finished = bool(done.all()) if all_done is None else all_done(bool(done.all()))
        if finished or step == decoding.max_new_tokens - 1:
            break
        token = token.masked_fill(done, pad_id)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = model(
            input_ids=token.unsqueeze(-1),
            attention_mask=mask,
            position_ids=next_pos.unsqueeze(-1),
            use_cache=True,
            **{cache_kw: past},
        )
        past, logits = getattr(out, cache_attr), out.logits[:, -1, :]
        next_pos = next_pos + 1
    return result
