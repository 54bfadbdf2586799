"""The base divergences, chosen by an explicit name from a registry (never by substring)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from adakd_ds.config.schema import Divergence, LossConfig
from adakd_ds.loss.divergences.ab import alpha_beta
from adakd_ds.loss.divergences.fkl import forward_kl, forward_kl_with_grad
from adakd_ds.loss.divergences.jsd import jensen_shannon
from adakd_ds.loss.divergences.rkl import reverse_kl, reverse_kl_with_grad
from adakd_ds.loss.divergences.skew import skew_forward_kl, skew_reverse_kl
from adakd_ds.loss.divergences.tvd import total_variation

DivergenceFn = Callable[[Tensor, Tensor, "Tensor | float"], Tensor]
# (student, teacher, tau, want_grad) -> (values [T], g [T, V] or None, f [T, 1]) with d values / d student = f * g
GradDivergenceFn = Callable[[Tensor, Tensor, "Tensor | float", bool], "tuple[Tensor, Tensor | None, Tensor]"]

_REGISTRY: dict[Divergence, Callable[..., Tensor]] = {
    Divergence.FKL: forward_kl,
    Divergence.RKL: reverse_kl,
    Divergence.JSD: jensen_shannon,
    Divergence.TVD: total_variation,
    Divergence.SFKL: skew_forward_kl,
    Divergence.SRKL: skew_reverse_kl,
    Divergence.AB: alpha_beta,
}

# divergences with an analytic student gradient (no autograd graph in the chunked loss); the rest use autograd
_WITH_GRAD: dict[Divergence, GradDivergenceFn] = {
    Divergence.FKL: forward_kl_with_grad,
    Divergence.RKL: reverse_kl_with_grad,
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


def get_divergence_with_grad(name: Divergence | str) -> GradDivergenceFn | None:
    """The analytic value-and-gradient form of a divergence, or None where only the autograd form exists."""
    return _WITH_GRAD.get(parse_divergence(name))


__all__ = [
    "Divergence",
    "DivergenceFn",
    "GradDivergenceFn",
    "get_divergence",
    "get_divergence_with_grad",
    "parse_divergence",
]
