"""Held-out per-token loss: the student's cross-entropy on the reference responses and its KD divergence to the teacher.

Why: ROUGE-L of sampled text is noisy; the per-token CE and the divergences (rkl, fkl at temperature 1, from the same
registry the training loss uses) show directly how close the student came to the teacher on data it never trained on.
Samples are tokenised exactly like training data (``adakd_ds.data.tokenize``): [BOS] prompt response EOS, loss on the
response and EOS only. Sums are accumulated in float64 and added over ranks, so the result does not depend on the
world size beyond float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from adakd_ds.config.schema import Divergence, FusedHead
from adakd_ds.data.tokenize import IGNORE_INDEX, build_sample, encode_prompts
from adakd_ds.eval.hidden_forward import model_output, resolve_fused_head
from adakd_ds.loss.chunked_grad import row_chunks
from adakd_ds.loss.fused_head import HeadInput, HeadRows, gathered

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


def _to(x: torch.Tensor | HeadInput, device: torch.device) -> torch.Tensor | HeadInput:
    if isinstance(x, HeadInput):
        bias = x.bias.to(device) if x.bias is not None else None
        return HeadInput(x.hidden.to(device), x.weight.to(device), bias)
    return x.to(device)


def _valid_logits(
    s_out: torch.Tensor | HeadInput, t_out: torch.Tensor | HeadInput | None, labels: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """(student logits, teacher logits sliced to the student's vocab or None, targets) of the valid tokens, fp32.

    From logits: all valid rows at once. From a fused head (HeadInput): chunk by chunk, so no [T, V] tensor exists.
    """
    valid = labels != IGNORE_INDEX
    if not isinstance(s_out, HeadInput):
        t = None
        if t_out is not None:  # a padded vocab on either side: the divergence covers the shared ids, as in training
            t = t_out[valid][:, : s_out.shape[-1]].float()
        yield s_out[valid].float(), t, labels[valid]
        return
    s_rows = HeadRows(s_out.hidden.reshape(-1, s_out.hidden.shape[-1]), s_out.weight, s_out.bias)
    t_rows = None
    if t_out is not None:
        t_rows = HeadRows(t_out.hidden.reshape(-1, t_out.hidden.shape[-1]), t_out.weight, t_out.bias)
        _check_teacher_vocab(t_rows.vocab, s_rows.vocab)
        t_rows = t_rows.narrow(s_rows.vocab)
    flat = labels.reshape(-1)
    for chunk in row_chunks(valid.reshape(-1).nonzero().squeeze(1), s_rows.chunk_rows(0)):
        t = None if t_rows is None else t_rows.take(chunk).float()
        yield s_rows.take(chunk).float(), t, chunk.take(flat)


def _padded_student(model: Any, teacher: Any | None) -> bool:
    """A student vocab wider than the teacher's: its extra logits are sliced off, so it is evaluated unfused."""
    if teacher is None:
        return False
    s_vocab, t_vocab = (getattr(getattr(m, "config", None), "vocab_size", 0) for m in (model, teacher))
    return bool(s_vocab and t_vocab and s_vocab > t_vocab)


def _check_teacher_vocab(t_vocab: int, s_vocab: int) -> None:
    """A teacher's padded vocab is sliced, as in the training loss; a smaller one is an error."""
    if t_vocab < s_vocab:
        raise ValueError(f"teacher vocab {t_vocab} is smaller than the student's {s_vocab}")


@torch.no_grad()
def eval_loss_sums(
    model: Any,
    samples: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    teacher: Any | None = None,
    divergences: Sequence[Divergence | str] = DEFAULT_DIVERGENCES,
    batch_size: int = 8,
    fused_head: FusedHead | str = FusedHead.AUTO,
) -> dict[str, float]:
    """Float64 sums over this process's samples: n_tokens, ce and one entry per divergence (if a teacher is given).

    With the fused head (auto: where both models allow it) the logits are made chunk by chunk from hidden states.
    """
    from adakd_ds.loss.divergences import get_divergence, parse_divergence

    kinds = [parse_divergence(d) for d in divergences] if teacher is not None else []
    fns: dict[str, Callable] = {k.value: get_divergence(k) for k in kinds}
    sums = {"n_tokens": 0.0, "ce": 0.0, **{name: 0.0 for name in fns}}
    device = next(model.parameters()).device
    fused = resolve_fused_head(fused_head, model, teacher) and not _padded_student(model, teacher)
    for start in range(0, len(samples), batch_size):
        ids, mask, labels = _right_pad(samples[start : start + batch_size], pad_id, device)
        if not bool((labels != IGNORE_INDEX).any()):
            continue
        s_out = model_output(model, ids, mask, fused)
        t_out = None
        if teacher is not None:
            t_dev = next(teacher.parameters()).device
            t_out = _to(model_output(teacher, ids.to(t_dev), mask.to(t_dev), fused), device)
        heads = [x.weight for x in (s_out, t_out) if isinstance(x, HeadInput)]
        with gathered(heads):
            for s_logits, t_logits, target in _valid_logits(s_out, t_out, labels):
                logp = torch.log_softmax(s_logits, dim=-1)
                sums["ce"] += float(-logp.gather(-1, target.unsqueeze(-1)).double().sum())
                sums["n_tokens"] += float(target.numel())
                width = t_logits.shape[-1] if t_logits is not None else 0  # < the student's for a padded student
                for name, fn in fns.items():
                    sums[name] += float(fn(s_logits[:, :width], t_logits, 1.0).double().sum())
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
