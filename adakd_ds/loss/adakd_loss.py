"""The AdaKD loss: difficulty -> LATF selection -> IDTS temperatures -> base divergence, over the GLOBAL batch.

Two passes over chunks of tokens: difficulty without grad first, then the loss (and its gradient) on the selected
tokens only. The statistics (N, the top-k threshold, the median) are taken over every rank's valid tokens, so N ranks
give exactly what one process holding the whole batch would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adakd_ds.config.schema import IdtsGrad, IdtsWeight, Indicator, LossConfig, MedianPool
from adakd_ds.loss import compiled_chunks
from adakd_ds.loss.cached_target import CachedRows, CachedTarget, cached_difficulty, cached_kd_kernel, check_ids
from adakd_ds.loss.chunked_grad import GradSink, RowChunk, TensorRows, autograd_kernel, row_chunks
from adakd_ds.loss.compiled import resolve_kernel
from adakd_ds.loss.difficulty import parse_indicator, token_difficulty
from adakd_ds.loss.dist_stats import all_gather_rows, all_reduce_sum, gather_variable, world_info
from adakd_ds.loss.divergences import get_divergence, get_divergence_with_grad, parse_divergence
from adakd_ds.loss.divergences._common import tau_column, work_dtype
from adakd_ds.loss.divergences.ce import cross_entropy_with_grad
from adakd_ds.loss.fused_head import HeadInput, HeadRows, gathered
from adakd_ds.loss.idts import idts_tau_partials, idts_temperatures, lower_median, token_weight, weight_and_slope
from adakd_ds.loss.idts_through import (
    TAU_GRAD,
    ThroughPlan,
    local_sums,
    score_coefficients,
    score_grad_kernel,
    through_kd_kernel,
)
from adakd_ds.loss.latf import LATFController, select_top_ratio
from adakd_ds.loss.loss_stats import LossStats, fill_plain_stats, fill_selection_stats

IGNORE_INDEX = -100


Rows = TensorRows | HeadRows  # logits [T, V]: materialised, or made per chunk from hidden states (the fused head)


@dataclass
class _Flat:
    student: Rows  # [T, Vs]
    teacher: Rows | CachedRows | None  # [T, Vs]: a wider (padded) teacher vocab is narrowed; or a cache's bins
    labels: Tensor  # [T]
    valid_rows: Tensor  # [n_local] row indices


def _rows_of(x: Tensor | HeadInput, who: str) -> tuple[Rows, tuple[int, ...]]:
    """(the rows source, the batch shape [...]) of logits or of a fused head's hidden states."""
    if isinstance(x, HeadInput):
        if x.hidden.dim() < 2:
            raise ValueError(f"{who} hidden states must be [..., H], got shape {tuple(x.hidden.shape)}")
        return HeadRows(x.hidden.reshape(-1, x.hidden.shape[-1]), x.weight, x.bias), tuple(x.hidden.shape[:-1])
    if x.dim() < 2:
        raise ValueError(f"{who} logits must be [..., V], got shape {tuple(x.shape)}")
    return TensorRows(x.reshape(-1, x.shape[-1])), tuple(x.shape[:-1])


class NonFiniteLogitsError(ValueError):
    """Raised on every rank alike (the health flags travel in the loss's collectives); the trainer's NaN guard
    turns it into a skipped step."""


def _raise_if_bad(bad: list[int]) -> None:
    if bad:
        raise NonFiniteLogitsError(
            f"non-finite (NaN/inf) logits on rank(s) {bad}: a NaN or +inf logit (or a -inf teacher logit where the "
            "student has mass) made the difficulty or the loss non-finite"
        )


def _ce_kernel(labels: Tensor, compiled: bool = False, scale: float = 1.0):
    """Chunk kernel for the label cross-entropy, with its analytic gradient (compiled: scale folded into the pass)."""

    def compiled_kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
        lab = chunk.take(labels)
        if sink is None:
            return compiled_chunks.ce_value_fn()(x, lab)
        value, g = compiled_chunks.ce_grad_fn()(x, lab, torch.tensor(scale, dtype=x.dtype, device=x.device))
        sink.add_scaled(g)
        return value

    if compiled:
        return compiled_kernel

    def kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
        vals, g = cross_entropy_with_grad(x, chunk.take(labels), sink is not None)
        if sink is not None:
            sink.add(g, torch.ones((), dtype=g.dtype, device=g.device))
        return vals.sum()

    return kernel


class AdaKDLoss(torch.nn.Module):
    """Base divergence +/- AdaKD (+ optional label CE), returning a rank-local loss that DeepSpeed can average."""

    def __init__(self, cfg: LossConfig, total_steps: int = 1, seed: int = 0) -> None:
        super().__init__()
        problems = cfg.problems()
        if problems:
            raise ValueError("invalid loss config: " + "; ".join(problems))
        self.cfg = cfg
        self.weight = IdtsWeight(cfg.idts_weight) if cfg.use_idts else IdtsWeight.TAU2  # without IDTS: T^2 as ever
        self.through = cfg.use_idts and IdtsGrad(cfg.idts_grad) is IdtsGrad.THROUGH
        self.median_pool = MedianPool(cfg.median_pool)
        self.divergence = get_divergence(parse_divergence(cfg.divergence), cfg)
        self.divergence_with_grad = get_divergence_with_grad(cfg.divergence)  # None: autograd per chunk
        self.indicator = parse_indicator(cfg.indicator)
        self.controller = LATFController(cfg, total_steps)
        self.generator = torch.Generator().manual_seed(seed)  # identical on all ranks: drives `random` only
        # loss.kernel: compiled chunk kernels, or the eager reference; kernel_note is the one setup line saying which
        self.compiled, self.kernel_note = resolve_kernel(cfg.kernel)
        self.divergence_key = (
            parse_divergence(cfg.divergence).value,
            cfg.jsd_beta,
            cfg.skew_lambda,
            cfg.ab_alpha,
            cfg.ab_beta,
        )

    # ----------------------------------------------------------------------------------------------------- checks
    def _flatten(
        self, student: Tensor | HeadInput, teacher: Tensor | HeadInput | None, labels: Tensor, mask: Tensor | None
    ) -> _Flat:
        s, batch = _rows_of(student, "student")
        what = "hidden states" if isinstance(student, HeadInput) else "logits"
        if tuple(labels.shape) != batch:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match student {what} {batch} x [V]")
        if mask is not None and mask.shape != labels.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match labels {tuple(labels.shape)}")
        vs = s.vocab
        t = None
        if isinstance(teacher, CachedTarget):  # the offline teacher: its k + 1 bins (loss/cached_target.py)
            if tuple(teacher.ids.shape[:-1]) != batch:
                raise ValueError(f"teacher cache rows {tuple(teacher.ids.shape[:-1])} do not match the batch {batch}")
            t = CachedRows(teacher, work_dtype(s.dtype))
        elif teacher is not None:
            t, t_batch = _rows_of(teacher, "teacher")
            if t_batch != batch:
                raise ValueError(f"teacher {what} {t_batch} x [V] and student {what} {batch} x [V] differ in shape")
            if t.vocab < vs:
                raise ValueError(
                    f"vocab mismatch: teacher vocab {t.vocab} is smaller than the student's {vs}; "
                    "the models must share a tokenizer (a teacher vocab padded beyond the student's is sliced)"
                )
            t = t.narrow(vs)
        flat_labels = labels.reshape(-1)
        valid = flat_labels != IGNORE_INDEX
        if mask is not None:
            valid &= mask.reshape(-1).bool()
        if bool(((flat_labels[valid] < 0) | (flat_labels[valid] >= vs)).any()):
            raise ValueError(f"labels must be -100 or in [0, {vs}), got values outside that range")
        flat = _Flat(s, t, flat_labels, valid.nonzero().squeeze(1))
        if isinstance(t, CachedRows):
            check_ids(t, flat.valid_rows, vs)
        return flat

    # ------------------------------------------------------------------------------------------------- pass one
    def _local_scores(self, flat: _Flat) -> Tensor:
        """Difficulty of every local valid token (no grad); a NaN / +inf logit leaves a non-finite score."""
        dtype = work_dtype(flat.student.dtype)
        scores = torch.zeros(flat.valid_rows.numel(), dtype=dtype, device=flat.student.device)
        for chunk in row_chunks(flat.valid_rows, flat.student.chunk_rows(self.cfg.chunk_size)):
            s = flat.student.take(chunk).to(dtype)
            if isinstance(flat.teacher, CachedRows):
                scores[chunk.pos] = cached_difficulty(self.indicator, flat.teacher, s, chunk, chunk.take(flat.labels))
                continue
            t = flat.teacher.take(chunk).to(dtype)
            if self.compiled:
                scores[chunk.pos] = compiled_chunks.score_fn(self.indicator)(s, t, chunk.take(flat.labels))
            else:
                scores[chunk.pos] = token_difficulty(self.indicator, s, t, chunk.take(flat.labels))
        return scores

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        student_logits: Tensor | HeadInput,
        teacher_logits: Tensor | HeadInput | None,
        labels: Tensor,
        attention_mask: Tensor | None = None,
        step_totals: tuple[int, int] | None = None,
        accum: int = 1,
    ) -> tuple[Tensor, LossStats]:
        """Rank-local loss and global stats, from logits, or from hidden states and head weights (the fused head).

        Given `HeadInput`s, neither model's [T, V] logits ever exist: each chunk's logits are made from the hidden
        states, with the same passes, statistics and result; the gradient reaches the hidden states and the head
        weight. ZeRO-3 head weights are gathered here, so every rank must call this (as it must anyway).

        Without accumulation the objective is normalised by this micro-batch's global k and N. With `accum` micro-steps
        per optimizer step, pass `step_totals` = (k, N) summed over the step's micro-batches: each token then weighs
        the same whatever micro-batch it fell in, and DeepSpeed's division by `accum` is undone here.
        """
        if self.cfg.kd_ratio > 0.0 and teacher_logits is None:
            raise ValueError("teacher logits (or hidden states) are required when loss.kd_ratio > 0")
        teacher = teacher_logits if self.cfg.kd_ratio > 0.0 else None
        # the fused head's ZeRO-3 weights are held whole for the duration of the loss (a no-op for logits)
        heads = [x.weight for x in (student_logits, teacher) if isinstance(x, HeadInput)]
        heads += [x.bias for x in (student_logits, teacher) if isinstance(x, HeadInput) and x.bias is not None]
        with gathered(heads):
            return self._run(self._flatten(student_logits, teacher, labels, attention_mask), step_totals, accum)

    def _run(self, flat: _Flat, step_totals: tuple[int, int] | None, accum: int) -> tuple[Tensor, LossStats]:
        cfg = self.cfg
        use_kd = cfg.kd_ratio > 0.0
        rank, world = world_info()
        dev = flat.student.device
        size = flat.student.chunk_rows(cfg.chunk_size)

        # the difficulty pass runs only when LATF or IDTS needs the scores (plain KD leaves the diff_* stats at 0)
        selective = use_kd and (cfg.use_latf or cfg.use_idts)
        computed = selective and self.indicator is not Indicator.RANDOM
        scores_local = self._local_scores(flat) if computed else None
        bad_scores = scores_local is not None and not bool(torch.isfinite(scores_local).all())
        n_local = flat.valid_rows.numel()
        # collective 1: counts and health, so a bad rank fails every rank with the same message (no hang)
        table = all_gather_rows(torch.tensor([n_local, int(bad_scores)], dtype=torch.long, device=dev))
        counts = [int(c) for c in table[:, 0]]
        _raise_if_bad([r for r in range(world) if int(table[r, 1])])
        n_global = sum(counts)
        if n_global == 0:
            raise ValueError("no valid token in the global micro-batch: every label is -100 (or masked out)")
        offset = sum(counts[:rank])

        buffer = flat.student.grad_buffer()
        stats = LossStats(loss=0.0, kd_loss=0.0, ce_loss=0.0, ratio=1.0, k=0, n=n_global)
        kd_sum = torch.zeros((), dtype=work_dtype(flat.student.dtype), device=dev)
        if use_kd:
            norm, plan = None, None
            if selective:
                rows, taus, norm, plan = self._select(flat, scores_local, counts, offset, stats, buffer.enabled)
            else:
                rows, taus = flat.valid_rows, float(cfg.temperature)
                fill_plain_stats(stats, n_global, counts, cfg.temperature, dev)
            k_den = step_totals[0] if step_totals else stats.k
            scale = cfg.kd_ratio * world * accum / k_den
            kernel = self._kd_kernel(flat, taus, norm, plan)
            kd_sum = buffer.accumulate(rows, kernel, size, scale)
            if plan is not None:  # the through terms: one more collective (every rank: the same config) and pass
                sums = all_reduce_sum(local_sums(plan, kd_sum))
                score_rows, coef = score_coefficients(plan, sums.to(plan.gtau.dtype), rows)
                buffer.accumulate(score_rows, score_grad_kernel(flat.teacher, coef), size, scale)

        k_den, n_den = step_totals if step_totals else (max(stats.k, 1), n_global)
        ce_sum = torch.zeros_like(kd_sum)
        if cfg.kd_ratio < 1.0:
            ce_scale = (1.0 - cfg.kd_ratio) * world * accum / n_den
            # compiled: the scale is folded into the kernel, so the buffer's own scale is 1
            ce_kernel = _ce_kernel(flat.labels, self.compiled, ce_scale)
            ce_sum = buffer.accumulate(flat.valid_rows, ce_kernel, size, 1.0 if self.compiled else ce_scale)

        k_norm = max(stats.k, 1)
        local_loss = world * accum * (cfg.kd_ratio * kd_sum / k_den + (1.0 - cfg.kd_ratio) * ce_sum / n_den)
        # collective 3: the global sums (for logging and the LATF step loss) and one health flag per rank: a NaN or
        # +inf logit leaves a non-finite local sum, and every rank learns which rank it was
        health = torch.zeros(world, dtype=torch.float64, device=dev)
        health[rank] = float(not bool(torch.isfinite(kd_sum + ce_sum)))
        sums = all_reduce_sum(torch.cat([torch.stack([kd_sum, ce_sum]).to(torch.float64).nan_to_num(), health]))
        _raise_if_bad([r for r in range(world) if float(sums[2 + r]) > 0])
        stats.kd_loss = float(sums[0]) / k_norm if use_kd else 0.0
        stats.ce_loss = float(sums[1]) / n_global if cfg.kd_ratio < 1.0 else 0.0
        stats.loss = cfg.kd_ratio * stats.kd_loss + (1.0 - cfg.kd_ratio) * stats.ce_loss
        stats.step_part = cfg.kd_ratio * float(sums[0]) / k_den + (1.0 - cfg.kd_ratio) * float(sums[1]) / n_den
        return buffer.attach(local_loss), stats

    def _select(
        self,
        flat: _Flat,
        scores_local: Tensor | None,
        counts: list[int],
        offset: int,
        stats: LossStats,
        wants_grad: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None, ThroughPlan | None]:
        """LATF selection and IDTS temperatures over the global batch.

        Returns (local selected rows, their taus, M = mean_S tau^2 for the normalized weight or None, the through
        plan or None).
        """
        cfg = self.cfg
        n_global, n_local = sum(counts), flat.valid_rows.numel()
        dev = flat.student.device
        if scores_local is None:  # the random indicator: one global draw, identical on every rank
            dtype = work_dtype(flat.student.dtype)
            scores = torch.rand(n_global, generator=self.generator, dtype=torch.float64).to(dtype).to(dev)
        else:
            # collective 2: every rank's scores, in rank order = global token order
            scores, _, _ = gather_variable(scores_local, counts)
        ratio = self.controller.ratio if cfg.use_latf else 1.0
        selected = select_top_ratio(scores, ratio) if cfg.use_latf else torch.ones_like(scores, dtype=torch.bool)
        taus_global = torch.full((n_global,), float(cfg.temperature), dtype=scores.dtype, device=dev)
        pool = selected if self.median_pool is MedianPool.SELECTED else torch.ones_like(selected)
        if cfg.use_idts:
            median = lower_median(scores[pool])
            stats.median = float(median)
            taus_global[selected] = idts_temperatures(
                scores[selected], median, cfg.temperature, cfg.c, cfg.inverse_sign
            )
        local_sel = selected[offset : offset + n_local]
        stats.k = int(selected.sum())
        fill_selection_stats(stats, scores, selected, taus_global, counts, ratio)
        rows, taus = flat.valid_rows[local_sel], taus_global[offset : offset + n_local][local_sel]
        norm = taus_global[selected].square().mean() if self.weight is IdtsWeight.NORMALIZED else None
        plan = None
        if self.through and wants_grad:
            pool_idx = pool.nonzero().squeeze(1)
            j = int(pool_idx[torch.sort(scores[pool]).indices[(pool_idx.numel() - 1) // 2]])  # the median's token
            d_s, d_m = idts_tau_partials(scores[selected], median, cfg.temperature, cfg.c, cfg.inverse_sign)
            local = local_sel.nonzero().squeeze(1) + offset  # global positions of the local selected tokens
            pos = torch.cumsum(selected.long(), 0) - 1  # global position -> index among the selected
            median_row = int(flat.valid_rows[j - offset]) if offset <= j < offset + n_local else None
            plan = ThroughPlan(taus, d_s[pos[local]], d_m[pos[local]], median_row, stats.k, norm)
        return rows, taus, norm, plan

    def _kd_kernel(
        self, flat: _Flat, taus: Tensor | float, norm: Tensor | None = None, plan: ThroughPlan | None = None
    ):
        """Chunk kernel for sum w(tau) * d(tau): analytic gradient where the divergence has one, else autograd.

        With a through plan, autograd also differentiates in tau (idts_through.py), whatever the divergence.
        """
        teacher = flat.teacher
        analytic = self.divergence_with_grad

        def tau_of(chunk: RowChunk) -> Tensor | float:
            return taus[chunk.pos] if isinstance(taus, Tensor) else taus

        if isinstance(teacher, CachedRows):
            if plan is not None:
                raise ValueError("loss.idts_grad=through is not supported with model.teacher_cache")
            return cached_kd_kernel(teacher, self.divergence, tau_of, lambda tau: token_weight(self.weight, tau, norm))
        if plan is not None:

            def tau_values(x: Tensor, tau: Tensor, chunk: RowChunk) -> Tensor:
                t = teacher.take(chunk).to(x.dtype)
                return token_weight(self.weight, tau, norm).squeeze(-1) * self.divergence(x, t, tau.squeeze(-1))

            tau_grad = TAU_GRAD.get(parse_divergence(self.cfg.divergence))
            return through_kd_kernel(
                tau_values, taus, plan, teacher, tau_grad, lambda tau: weight_and_slope(self.weight, tau, norm)
            )

        if self.compiled:
            return compiled_chunks.compiled_kd_kernel(
                teacher, analytic, self.divergence_key, self.divergence, tau_of, lambda tau: token_weight(self.weight, tau, norm)
            )

        if analytic is None:

            def values(x: Tensor, chunk: RowChunk) -> Tensor:
                tau = tau_column(tau_of(chunk), x)
                t = teacher.take(chunk).to(x.dtype)
                if self.weight is not IdtsWeight.TAU2:
                    return token_weight(self.weight, tau, norm).squeeze(-1) * self.divergence(x, t, tau.squeeze(-1))
                return tau.squeeze(-1).square() * self.divergence(x, t, tau.squeeze(-1))

            return autograd_kernel(values)

        def kernel(x: Tensor, chunk: RowChunk, sink: GradSink | None) -> Tensor:
            tau = tau_column(tau_of(chunk), x)
            t = teacher.take(chunk).to(x.dtype)
            vals, g, factor = analytic(x, t, tau, sink is not None)
            w = token_weight(self.weight, tau, norm)
            if sink is not None:
                sink.add(g, w * factor)
            return torch.linalg.vecdot(w.squeeze(-1), vals)

        return kernel

    # ------------------------------------------------------------------------------------------- training state
    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """LATF state and the `random` indicator's generator: everything a bit-exact resume needs from the loss."""
        return {"latf": self.controller.state_dict(), "generator": self.generator.get_state()}

    def load_state_from_checkpoint(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["latf"])
        self.generator.set_state(state["generator"])
