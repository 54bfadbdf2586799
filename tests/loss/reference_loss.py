"""A plain float64 reference for the AdaKD loss, written from docs/adakd-method.md and the loss API spec.

It deliberately shares no code with ``adakd_ds``: python loops over tokens, explicit formulas over the vocab,
so a reader can check each line against the method doc. Everything is torch float64 so autograd on it gives the
reference gradient. Nothing here is fast; tests keep the shapes tiny.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Default divergence parameters from the method doc, section 4.
DEFAULT_PARAMS = {"jsd_beta": 0.5, "skew_lambda": 0.1, "ab_alpha": 0.2, "ab_beta": 0.7}

DIVERGENCE_NAMES = ("fkl", "rkl", "jsd", "tvd", "sfkl", "srkl", "ab")
INDICATOR_NAMES = ("hellinger", "fkl", "rkl", "jsd", "ce", "entropy")


def log_softmax_1d(x: torch.Tensor) -> torch.Tensor:
    """log softmax of one vector, written out: x - max - log(sum(exp(x - max)))."""
    m = x.max()
    return x - m - torch.log(torch.exp(x - m).sum())


def kl(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum p (log p - log q) for one token."""
    return (p * (logp - logq)).sum()


def divergence_one(
    name: str, zs: torch.Tensor, zt: torch.Tensor, tau: float | torch.Tensor, params: dict | None = None
) -> torch.Tensor:
    """Section 4 divergence of ONE token, p = softmax(zt / tau) (teacher), q = softmax(zs / tau) (student)."""
    prm = dict(DEFAULT_PARAMS, **(params or {}))
    logp = log_softmax_1d(zt / tau)
    logq = log_softmax_1d(zs / tau)
    p, q = logp.exp(), logq.exp()
    if name == "fkl":
        return kl(p, logp, logq)
    if name == "rkl":
        return kl(q, logq, logp)
    if name == "jsd":
        b = prm["jsd_beta"]
        m = b * p + (1 - b) * q
        logm = torch.log(m)
        return b * kl(p, logp, logm) + (1 - b) * kl(q, logq, logm)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum()
    if name == "sfkl":
        lam = prm["skew_lambda"]
        return kl(p, logp, torch.log(lam * p + (1 - lam) * q))
    if name == "srkl":
        lam = prm["skew_lambda"]
        return kl(q, logq, torch.log(lam * q + (1 - lam) * p))
    if name == "ab":
        a, b = prm["ab_alpha"], prm["ab_beta"]
        s = a + b
        inner = p**a * q**b - a / s * p**s - b / s * q**s
        return -1.0 / (a * b) * inner.sum()
    raise KeyError(name)


def divergence_per_token(
    name: str, zs: torch.Tensor, zt: torch.Tensor, tau: float | torch.Tensor, params: dict | None = None
) -> torch.Tensor:
    """[T] values: a python loop over tokens; tau is a float or a [T] tensor."""
    out = []
    for i in range(zs.shape[0]):
        t = tau[i] if isinstance(tau, torch.Tensor) and tau.dim() > 0 else tau
        out.append(divergence_one(name, zs[i], zt[i], t, params))
    return torch.stack(out)


def indicator_one(name: str, zs: torch.Tensor, zt: torch.Tensor, label: int) -> torch.Tensor:
    """Section 1 difficulty of ONE token at temperature 1."""
    logp = log_softmax_1d(zt)
    logq = log_softmax_1d(zs)
    p, q = logp.exp(), logq.exp()
    if name == "hellinger":
        return torch.sqrt(((p.sqrt() - q.sqrt()) ** 2).sum()) / math.sqrt(2.0)
    if name == "fkl":
        return kl(p, logp, logq)
    if name == "rkl":
        return kl(q, logq, logp)
    if name == "jsd":
        m = 0.5 * (p + q)
        logm = torch.log(m)
        return 0.5 * kl(p, logp, logm) + 0.5 * kl(q, logq, logm)
    if name == "ce":
        return -logq[label]
    if name == "entropy":
        return -(q * logq).sum()
    raise KeyError(name)


def indicator_per_token(name: str, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([indicator_one(name, zs[i], zt[i], int(labels[i])) for i in range(zs.shape[0])])


def select_top(scores: list[float] | torch.Tensor, ratio: float) -> list[bool]:
    """k = max(1, floor(N * ratio)) largest scores; ties go to the lower global index."""
    vals = [float(s) for s in scores]
    n = len(vals)
    k = max(1, math.floor(n * ratio))
    order = sorted(range(n), key=lambda i: (-vals[i], i))
    chosen = set(order[:k])
    return [i in chosen for i in range(n)]


def lower_median(values: list[float] | torch.Tensor):
    """sorted(values)[(n - 1) // 2]; keeps a tensor (and its graph) when given a tensor."""
    if isinstance(values, torch.Tensor):
        return torch.sort(values).values[(values.numel() - 1) // 2]
    return sorted(values)[(len(values) - 1) // 2]


def idts_tau_one(score, median, tau_base: float, c: float, inverse_sign: bool = True):
    """Section 3 for one token: tau = tau_base * exp(-/+ c * tanh(log(max(s / median, 1e-8))))."""
    tiny = torch.finfo(torch.float64).tiny
    if isinstance(score, torch.Tensor):
        ratio = torch.clamp(score / torch.clamp(median, min=tiny), min=1e-8)
        s_hat = torch.tanh(torch.log(ratio))
        sign = -1.0 if inverse_sign else 1.0
        return tau_base * torch.exp(sign * c * s_hat)
    ratio = max(score / max(median, tiny), 1e-8)
    s_hat = math.tanh(math.log(ratio))
    return tau_base * math.exp((-c if inverse_sign else c) * s_hat)


@dataclass
class RefCfg:
    """The LossConfig fields the reference reads (strings, not enums, so it stays independent)."""

    divergence: str = "rkl"
    adakd: bool = True
    latf: bool = True
    idts: bool = True
    indicator: str = "hellinger"
    temperature: float = 1.0
    c: float = 0.5
    inverse_sign: bool = True
    kd_ratio: float = 1.0
    params: dict = field(default_factory=dict)
    idts_weight: str = "tau2"  # tau2 | none | normalized (tau^2 / mean over the selected of tau^2)
    median_pool: str = "selected"  # selected | valid
    idts_through: bool = False  # the score, the median and tau stay in the graph (loss.idts_grad = through)

    @classmethod
    def from_loss_config(cls, cfg) -> RefCfg:
        return cls(
            divergence=getattr(cfg.divergence, "value", cfg.divergence),
            adakd=cfg.adakd,
            latf=cfg.latf,
            idts=cfg.idts,
            indicator=getattr(cfg.indicator, "value", cfg.indicator),
            temperature=cfg.temperature,
            c=cfg.c,
            inverse_sign=cfg.inverse_sign,
            kd_ratio=cfg.kd_ratio,
            idts_weight=getattr(cfg.idts_weight, "value", cfg.idts_weight),
            median_pool=getattr(cfg.median_pool, "value", cfg.median_pool),
            idts_through=getattr(cfg.idts_grad, "value", cfg.idts_grad) == "through",
            params={
                "jsd_beta": cfg.jsd_beta,
                "skew_lambda": cfg.skew_lambda,
                "ab_alpha": cfg.ab_alpha,
                "ab_beta": cfg.ab_beta,
            },
        )


@dataclass
class RefResult:
    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor | None
    n: int
    k: int
    valid_index: list[int]  # flat positions of the valid tokens, in global order
    scores: torch.Tensor  # [N] over valid tokens
    selected: list[bool]  # [N]
    median: float | None
    taus: torch.Tensor  # [k], over the selected tokens in global order


def adakd_reference(
    cfg: RefCfg,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    ratio: float = 1.0,
    random_scores: torch.Tensor | None = None,
    detach_tau: bool = True,
) -> RefResult:
    """The whole objective L of the API spec, for one process holding the whole batch.

    student_logits may require grad (float64); its gradient through this function is the reference gradient.
    With detach_tau=False the temperatures keep their graph (the released code's bug), for the detach test;
    cfg.idts_through=True does the same (loss.idts_grad = through).
    """
    detach_tau = detach_tau and not cfg.idts_through
    v = student_logits.shape[-1]
    zs_all = student_logits.reshape(-1, v)
    zt_all = teacher_logits.reshape(-1, teacher_logits.shape[-1])[:, :v]
    lab = labels.reshape(-1)
    mask = attention_mask.reshape(-1) if attention_mask is not None else None
    valid = [i for i in range(lab.numel()) if int(lab[i]) != -100 and (mask is None or int(mask[i]) == 1)]
    n = len(valid)

    # Section 1: scores on every valid token, temperature 1.
    if cfg.indicator == "random":
        score_list = [random_scores[j] for j in range(n)]
    else:
        score_list = []
        for i in valid:
            zs_i = zs_all[i] if not detach_tau else zs_all[i].detach()
            score_list.append(indicator_one(cfg.indicator, zs_i, zt_all[i], int(lab[i])))
    scores = torch.stack(score_list)

    use_latf = cfg.adakd and cfg.latf
    use_idts = cfg.adakd and cfg.idts
    selected = select_top(scores.detach(), ratio) if use_latf else [True] * n
    sel_pos = [j for j in range(n) if selected[j]]
    k = len(sel_pos)

    median = None
    taus = []
    if use_idts:
        pool = sel_pos if cfg.median_pool == "selected" else list(range(n))
        med_t = lower_median(torch.stack([scores[j] for j in pool]))
        median = float(med_t.detach())
        for j in sel_pos:
            taus.append(idts_tau_one(scores[j], med_t, cfg.temperature, cfg.c, cfg.inverse_sign))
    else:
        taus = [torch.tensor(cfg.temperature, dtype=torch.float64) for _ in sel_pos]

    kd = torch.zeros((), dtype=torch.float64)
    used = [tau.detach() if detach_tau else tau for tau in taus]
    mean_sq = sum(t**2 for t in used) / k
    for j, tau_used in zip(sel_pos, used, strict=True):
        i = valid[j]
        if not use_idts or cfg.idts_weight == "tau2":
            weight = tau_used**2
        elif cfg.idts_weight == "none":
            weight = 1.0
        elif cfg.idts_weight == "normalized":
            weight = tau_used**2 / mean_sq
        else:
            raise KeyError(cfg.idts_weight)
        kd = kd + weight * divergence_one(cfg.divergence, zs_all[i], zt_all[i], tau_used, cfg.params)
    kd = kd / k

    ce = None
    loss = kd
    if cfg.kd_ratio < 1.0:
        ce = torch.zeros((), dtype=torch.float64)
        for i in valid:
            ce = ce - log_softmax_1d(zs_all[i])[int(lab[i])]
        ce = ce / n
        loss = cfg.kd_ratio * kd + (1.0 - cfg.kd_ratio) * ce
    return RefResult(
        loss=loss,
        kd=kd,
        ce=ce,
        n=n,
        k=k,
        valid_index=valid,
        scores=scores.detach(),
        selected=selected,
        median=median,
        taus=torch.stack([t.detach() for t in taus]),
    )


class RefLATF:
    """The ratio controller of section 2 / the API spec, written as plain python."""

    def __init__(self, ratio_init=1.0, r_min=0.1, beta=0.99, eps=0.05, delta=0.05, warmup_frac=0.05, total_steps=1):
        self.ratio, self.r_min, self.beta, self.eps, self.delta = ratio_init, r_min, beta, eps, delta
        self.warmup_steps = int(warmup_frac * total_steps)
        self.ema = None
        self.ref = None
        self.step = 0

    def update(self, loss: float) -> float:
        self.step += 1
        self.ema = loss if self.ema is None else self.beta * self.ema + (1 - self.beta) * loss
        if self.step <= self.warmup_steps:
            self.ratio = 1.0
            if self.step == self.warmup_steps:
                self.ref = self.ema
            return self.ratio
        if self.ref is None:
            self.ref = self.ema
            return self.ratio
        if self.ema > self.ref * (1 + self.eps):
            self.ratio = min(1.0, self.ratio * (1 + self.delta))
            self.ref = self.ema
        elif self.ema < self.ref * (1 - self.eps):
            self.ratio = max(self.r_min, self.ratio * (1 - self.delta))
            self.ref = self.ema
        return self.ratio


def make_batch(
    b: int,
    length: int,
    v: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    prompt_len: int = 1,
    pad_tail: bool = True,
    teacher_extra_vocab: int = 0,
    spread: float = 1.0,
):
    """Student / teacher logits [b, length, v] with a spread of per-token difficulty, labels aligned with logits.

    The first `prompt_len` positions of each row are -100 (prompt); with pad_tail, row r (r odd) has its last
    positions masked out by attention_mask while their labels stay VALID numbers, so only the mask can exclude them.
    """
    g = torch.Generator().manual_seed(seed)
    zt = 2.0 * torch.randn(b, length, v + teacher_extra_vocab, generator=g, dtype=torch.float64)
    # per-token noise scale: some tokens near the teacher (easy), some far (hard)
    scale = spread * 3.0 * torch.rand(b, length, 1, generator=g, dtype=torch.float64)
    zs = zt[..., :v] + scale * torch.randn(b, length, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (b, length), generator=g)
    labels[:, :prompt_len] = -100
    mask = torch.ones(b, length, dtype=torch.long)
    if pad_tail:
        for r in range(1, b, 2):
            n_pad = min(length - 1, 1 + r % 3)
            mask[r, length - n_pad :] = 0
    return zs.to(dtype), zt.to(dtype), labels, mask
