"""Rank-0 logging: a tqdm bar with loss, r and tokens/s, and TensorBoard scalars and histograms."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from adakd_ds.loss.loss_stats import LossStats

# The tags of AdaKD's parts; a run without KD (mode=sft) logs constants there, so it leaves them out.
ADAKD_TAG_PREFIXES = ("latf/", "idts/", "difficulty/")

# shown on the bar when present (the last value stays until the next one): held-out eval and the data policy
BAR_EXTRAS = {
    "eval/ce": "eval_ce",
    "eval/kd": "eval_kd",
    "policy/phi": "phi",
    "policy/generated_share": "gen",
    "policy/buffer_fill": "buf",
    "policy/gen_len": "gen_len",
}


def scalars_from(
    stats: LossStats, lr: float, grad_norm: float | None, tokens_per_s: float, adakd_tags: bool = True
) -> dict[str, float]:
    """The TensorBoard scalar tags, in one place so the tests and the README name the same ones."""
    out = {
        "loss/total": stats.loss,
        "loss/kd": stats.kd_loss,
        "loss/ce": stats.ce_loss,
        "train/lr": lr,
        "latf/r": stats.ratio,
        "latf/k_over_n": stats.k / max(stats.n, 1),
        "idts/tau_min": stats.tau_min,
        "idts/tau_mean": stats.tau_mean,
        "idts/tau_max": stats.tau_max,
        "difficulty/mean": stats.diff_mean,
        "difficulty/q10": stats.diff_q10,
        "difficulty/q50": stats.diff_q50,
        "difficulty/q90": stats.diff_q90,
        "throughput/tokens_per_s": tokens_per_s,
    }
    if grad_norm is not None:
        out["train/grad_norm"] = float(grad_norm)
    if not adakd_tags:
        out = {tag: value for tag, value in out.items() if not tag.startswith(ADAKD_TAG_PREFIXES)}
    return out


class MetricsLogger:
    """Does nothing on ranks other than 0, so callers need no rank checks."""

    def __init__(self, log_dir: str | None, total_steps: int, start_step: int, enabled: bool, desc: str = "train"):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run purges the events of the steps it trains again (they were lost with the crash)
            self.writer = SummaryWriter(log_dir=log_dir, purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        self._extras: dict[str, str] = {}
        self._t0 = time.perf_counter()

    def step(self, step: int, scalars: dict[str, float], stats: LossStats | None, write: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self._extras.update({short: f"{scalars[tag]:.4g}" for tag, short in BAR_EXTRAS.items() if tag in scalars})
            self.bar.update(step - self.bar.n)
            ratio = {"r": f"{scalars['latf/r']:.3f}"} if "latf/r" in scalars else {}
            self.bar.set_postfix(
                loss=f"{scalars['loss/total']:.4f}",
                **ratio,
                tok_s=f"{scalars['throughput/tokens_per_s']:.0f}",
                **self._extras,
            )
        if write and self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            if stats is not None and stats.taus is not None and stats.taus.numel():
                self.writer.add_histogram("idts/tau", stats.taus.float().cpu(), step)
            if stats is not None and stats.scores is not None and stats.scores.numel():
                self.writer.add_histogram("difficulty/score", stats.scores.float().cpu(), step)

    def text(self, tag: str, value: str, step: int = 0) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, value, step)

    def write(self, message: str) -> None:
        if self.enabled:
            (self.bar or tqdm).write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
