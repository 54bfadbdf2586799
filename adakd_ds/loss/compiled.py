"""loss.kernel: the per-chunk work of the loss compiled with torch.compile, the eager code kept as reference and fallback.

Why: each eager chunk is a chain of elementwise ops (softmax pairs, logs, the divergence, its gradient), each reading
and writing a [chunk, V] tensor, so memory traffic, not arithmetic, is the cost. Inductor (C++/OpenMP on CPU, Triton
on CUDA) fuses the chain into a few passes over the chunk's logits.

The compiled functions are the SAME Python functions as the eager path (divergences/, difficulty.py), traced by
dynamo; the few spots that would break the graph (a `bool(tensor)` host sync) take a torch.where form when
`torch.compiler.is_compiling()`, so the eager results stay bit-identical. Recompiles never happen per step: the row
dimension of every chunk is marked dynamic (a 1-row chunk is padded to 2 rows, whose padding row has weight 0),
so one graph serves every chunk height, token count and LATF selection; the vocabulary stays static.

A compile (or compiled-run) failure prints one line and that kernel runs eagerly from then on; it never crashes a run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from adakd_ds.config.schema import LossKernel

_SMOKE: tuple[bool, str] | None = None  # (the compiler works, why not), probed once per process


def compiler_works() -> tuple[bool, str]:
    """Compile and run a tiny function once per process: (ok, the reason it failed or '')."""
    global _SMOKE
    if _SMOKE is None:
        try:
            fn = torch.compile(lambda x: torch.log_softmax(x, -1).exp().sum(-1), dynamic=False)
            fn(torch.ones(2, 8))
            _SMOKE = (True, "")
        except Exception as exc:  # noqa: BLE001 - any failure of the toolchain means "no compiler here"
            _SMOKE = (False, _one_line(exc))
    return _SMOKE


def resolve_kernel(mode: LossKernel | str) -> tuple[bool, str]:
    """(compile the loss?, the one setup line saying what runs)."""
    mode = LossKernel(str(getattr(mode, "value", mode)).lower())
    if mode is LossKernel.EAGER:
        return False, "loss.kernel: eager"
    ok, why = compiler_works()
    if ok:
        backend = "Triton" if torch.cuda.is_available() else "C++/OpenMP"
        return True, f"loss.kernel: {mode.value} -> compiled (torch.compile, inductor {backend})"
    return False, f"loss.kernel: {mode.value} -> eager (torch.compile does not work here: {why})"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class CompiledFn:
    """fn compiled once with its first `rows` tensor arguments' dim 0 dynamic; one line and eager on any failure.

    Arguments after the first `rows` are passed as they are (0-d tensors, bools); a Python float there would be
    specialised into the graph and recompile when it changes, so callers pass tensors.
    """

    def __init__(self, fn: Callable[..., Any], name: str, rows: int) -> None:
        self.fn, self.name, self.rows = fn, name, rows
        self.compiled = torch.compile(fn, dynamic=False)
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.fn(*args)
        n = args[0].shape[0]
        row_args = list(args[: self.rows])
        if n == 1:  # a dynamic dim must not be 1 (dynamo specialises 0/1): pad with a second copy of the row
            row_args = [torch.cat([a, a]) for a in row_args]
        for a in row_args:
            torch._dynamo.mark_dynamic(a, 0)  # min=2 trips a sympy assertion in torch 2.13; 1 is padded away
        try:
            out = self.compiled(*row_args, *args[self.rows :])
        except Exception as exc:  # noqa: BLE001 - the fallback is the point: never crash a run on a compiler bug
            self.failed = True
            print(f"loss.kernel: compiling {self.name} failed, eager from now on ({_one_line(exc)})", file=sys.stderr)
            return self.fn(*args)
        return _unpad(out, n) if n == 1 else out


def _unpad(out: Any, n: int) -> Any:
    """Undo the 1-row padding: row outputs keep their first row, 0-d sums are halved (both rows are the same row)."""
    if isinstance(out, tuple):
        return tuple(_unpad(o, n) for o in out)
    if isinstance(out, Tensor):
        return out / 2 if out.dim() == 0 else out[:n]
    return out


_CACHE: dict[tuple, CompiledFn] = {}


def shared(key: tuple, fn: Callable[..., Any], rows: int) -> CompiledFn:
    """One CompiledFn per key for the process: every AdaKDLoss (and every test case) with that key shares its graph."""
    if key not in _CACHE:
        _CACHE[key] = CompiledFn(fn, "/".join(str(k) for k in key), rows)
    return _CACHE[key]


__all__ = ["CompiledFn", "compiler_works", "resolve_kernel", "shared"]
