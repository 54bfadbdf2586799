"""The base divergences, chosen by an explicit name from a registry (never by substring)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from adakd_ds.config import Divergence, LossConfig
from adakd_ds.losses.ab import alpha_beta
from adakd_ds.losses.fkl import forward_kl
from adakd_ds.losses.jsd import jensen_shannon
from adakd_ds.losses.rkl import reverse_kl
from adakd_ds.losses.skew import skew_forward_kl, skew_reverse_kl
from adakd_ds.losses.tvd import total_variation

DivergenceFn = Callable[[Tensor, Tensor, "Tensor | float"], Tensor]

_REGISTRY: dict[Divergence, Callable[..., Tensor]] = {
    Divergence.FKL: forward_kl,
    Divergence.RKL: reverse_kl,
    Divergence.JSD: jensen_shannon,
    Divergence.TVD: total_variation,
    Divergence.SFKL: skew_forward_kl,
    Divergence.SRKL: skew_reverse_kl,
    Divergence.AB: alpha_beta,
}


def parse_divergence(name: Divergence | str) -> Divergence:
    """Exact-name lookup; an unknown name lists the choices instead of guessing."""
    if isinstance(name, Divergence):
        return name
    try:
        return Divergence(str(name).strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown divergence {name!r}; choose one of: {', '.join(d.value for d in Divergence)}"
        ) from None


def get_divergence(name: Divergence | str, cfg: LossConfig | None = None) -> DivergenceFn:
    """The per-token divergence fn(student_logits, teacher_logits, tau) -> [T], with its parameters bound from cfg."""
    kind = parse_divergence(name)
    cfg = cfg or LossConfig()
    params: dict[Divergence, dict[str, float]] = {
        Divergence.JSD: {"beta": cfg.jsd_beta},
        Divergence.SFKL: {"lam": cfg.skew_lambda},
        Divergence.SRKL: {"lam": cfg.skew_lambda},
        Divergence.AB: {"alpha": cfg.ab_alpha, "beta": cfg.ab_beta},
    }
    fn = _REGISTRY[kind]
    return functools.partial(fn, **params[kind]) if kind in params else fn


__all__ = ["Divergence", "DivergenceFn", "get_divergence", "parse_divergence"]
