"""Held-out per-token loss: the student's cross-entropy on the reference responses and its KD divergence to the teacher.

Why: ROUGE-L of sampled text is noisy; the per-token CE and the divergences (rkl, fkl at temperature 1, from the same
registry the training loss uses) show directly how close the student came to the teacher on data it never trained on.
Samples are tokenised exactly like training data (``adakd_ds.data.tokenize``): [BOS] prompt response EOS, loss on the
response and EOS only. Sums are accumulated in float64 and added over ranks, so the result does not depend on the
world size beyond float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from adakd_ds.config import Divergence
from adakd_ds.data.tokenize import IGNORE_INDEX, build_sample, encode_prompts

DEFAULT_DIVERGENCES: tuple[Divergence, ...] = (Divergence.RKL, Divergence.FKL)


def tokenize_pairs(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_prompt_len: int, max_len: int
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels UNSHIFTED) per pair, as the training pipeline builds them; pairs with no label are dropped."""
    prompt_ids = encode_prompts(tokenizer, list(prompts), max_prompt_len)
    eos = tokenizer.eos_token_id
    out = []
    for p_ids, response in zip(prompt_ids, responses, strict=True):
        r_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        if eos is not None and (not r_ids or r_ids[-1] != eos):
            r_ids.append(eos)
        sample = build_sample(p_ids, r_ids, max_len)
        if sample is not None:
            out.append(sample)
    return out


def _right_pad(
    batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (i, lab) in enumerate(batch):
        ids[row, : len(i)] = torch.tensor(i)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(i)] = 1
    # aligned labels: the target of logits[b, t] is token t + 1
    aligned = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
    return ids.to(device), mask.to(device), aligned.to(device)


@torch.no_grad()
def eval_loss_sums(
    model: Any,
    samples: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    teacher: Any | None = None,
    divergences: Sequence[Divergence | str] = DEFAULT_DIVERGENCES,
    batch_size: int = 8,
) -> dict[str, float]:
    """Float64 sums over this process's samples: n_tokens, ce and one entry per divergence (if a teacher is given)."""
    from adakd_ds.loss.divergences import get_divergence, parse_divergence

    kinds = [parse_divergence(d) for d in divergences] if teacher is not None else []
    fns: dict[str, Callable] = {k.value: get_divergence(k) for k in kinds}
    sums = {"n_tokens": 0.0, "ce": 0.0, **{name: 0.0 for name in fns}}
    device = next(model.parameters()).device
    for start in range(0, len(samples), batch_size):
        ids, mask, labels = _right_pad(samples[start : start + batch_size], pad_id, device)
        valid = labels != IGNORE_INDEX
        if not bool(valid.any()):
            continue
        s_logits = model(input_ids=ids, attention_mask=mask).logits[valid].float()
        target = labels[valid]
        logp = torch.log_softmax(s_logits, dim=-1)
        sums["ce"] += float(-logp.gather(-1, target.unsqueeze(-1)).double().sum())
        sums["n_tokens"] += float(valid.sum())
        if teacher is not None:
            t_logits = (
                teacher(
                    input_ids=ids.to(next(teacher.parameters()).device),
                    attention_mask=mask.to(next(teacher.parameters()).device),
                )
                .logits.to(device)[valid]
                .float()
            )
            width = min(t_logits.shape[-1], s_logits.shape[-1])  # a padded vocab on either side, as in training
            s_kd, t_kd = s_logits[:, :width], t_logits[:, :width]
            for name, fn in fns.items():
                sums[name] += float(fn(s_kd, t_kd, 1.0).double().sum())
    return sums


def finish_eval_loss(sums: dict[str, float]) -> dict[str, Any]:
    """Per-token means from summed totals (summed over ranks by the caller)."""
    n = sums["n_tokens"]
    if n == 0:
        return {"n_tokens": 0, "ce": None, "ppl": None, "kd": {}}
    ce = sums["ce"] / n
    kd = {k: v / n for k, v in sums.items() if k not in ("n_tokens", "ce")}
    return {"n_tokens": int(n), "ce": ce, "ppl": math.exp(min(ce, 700.0)), "kd": kd}


def eval_loss(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    teacher: Any | None = None,
    divergences: Sequence[Divergence | str] = DEFAULT_DIVERGENCES,
    batch_size: int = 8,
    max_prompt_len: int = 256,
    max_len: int = 512,
) -> dict[str, Any]:
    """Single-process per-token CE (and KD divergences to ``teacher``, temperature 1) on (prompt, response) pairs."""
    pairs = tokenize_pairs(tokenizer, prompts, responses, max_prompt_len, max_len)
    return finish_eval_loss(eval_loss_sums(model, pairs, tokenizer.pad_token_id, teacher, divergences, batch_size))
