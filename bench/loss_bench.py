"""Time and peak memory of the AdaKD loss against plain fkl, TRL's generalized JSD loss and a naive unchunked rkl.

Forward + backward w.r.t. the student logits, float32, CPU. Times are interleaved round-robin over the variants (so
a noisy neighbour hurts all of them alike) and the median is reported. Peak memory is measured in a FRESH subprocess
per variant as the growth of the process's peak RSS (ru_maxrss) during one forward + backward, after the inputs exist
(torch allocations are invisible to tracemalloc). It includes the [T, V] gradient buffer, the same for every variant.

    .venv/bin/python bench/loss_bench.py --tokens 4096 --vocab 32000 --repeats 5
TRL is needed only here: `.venv/bin/pip install trl` (check with --dry-run that it does not touch torch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

# run from a checkout without relying on the editable install
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = ("fkl_chunked", "adakd_rkl", "trl_gjsd", "naive_rkl")
LABELS = {
    "fkl_chunked": "plain fkl, our chunked kernel (adakd=False)",
    "adakd_rkl": "AdaKD-rkl (hellinger, LATF r=0.75, IDTS c=0.5)",
    "trl_gjsd": "TRL GKDTrainer.generalized_jsd_loss (beta=1)",
    "naive_rkl": "naive unchunked PyTorch rkl",
}


def make_inputs(tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    teacher = 2.0 * torch.randn(tokens, vocab, generator=g)
    student = torch.randn(tokens, vocab, generator=g)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    return student, teacher, labels


def build(variant: str, chunk_size: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (student, teacher, labels) -> scalar loss; imports happen here, before any measurement."""
    if variant in ("fkl_chunked", "adakd_rkl"):
        from adakd_ds.config import Divergence, Indicator, LossConfig
        from adakd_ds.loss.adakd_loss import AdaKDLoss

        if variant == "fkl_chunked":
            cfg = LossConfig(divergence=Divergence.FKL, adakd=False, chunk_size=chunk_size)
        else:
            cfg = LossConfig(
                divergence=Divergence.RKL, adakd=True, indicator=Indicator.HELLINGER, c=0.5, chunk_size=chunk_size
            )
        loss_fn = AdaKDLoss(cfg, total_steps=100)
        loss_fn.controller.ratio = 0.75
        return lambda s, t, y: loss_fn(s, t, y)[0]
    if variant == "trl_gjsd":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        return lambda s, t, y: GKDTrainer.generalized_jsd_loss(s[None], t[None], labels=y[None], beta=1.0)
    if variant == "naive_rkl":

        def naive(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logq = torch.log_softmax(s, dim=-1)
            logp = torch.log_softmax(t, dim=-1)
            return (logq.exp() * (logq - logp)).sum(-1).mean()

        return naive
    raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")


def fwd_bwd(fn, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> float:
    x = student.detach().requires_grad_(True)
    loss = fn(x, teacher, labels)
    loss.backward()
    return float(loss.detach())


def measure_memory(variant: str, tokens: int, vocab: int, chunk_size: int, threads: int) -> dict:
    """Runs inside a fresh subprocess: peak RSS growth of one forward + backward, in MiB."""
    torch.set_num_threads(threads)
    fn = build(variant, chunk_size)
    student, teacher, labels = make_inputs(tokens, vocab)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = fwd_bwd(fn, student, teacher, labels)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs_mib = 2 * student.numel() * student.element_size() / 2**20
    return {"variant": variant, "peak_delta_mib": (peak_kib - base_kib) / 1024, "inputs_mib": inputs_mib, "loss": loss}


def memory_in_subprocess(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-of", variant, "--tokens", str(args.tokens)]
    cmd += ["--vocab", str(args.vocab), "--chunk-size", str(args.chunk_size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess for {variant} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_all(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    torch.set_num_threads(args.threads)
    fns = {v: build(v, args.chunk_size) for v in VARIANTS}
    student, teacher, labels = make_inputs(args.tokens, args.vocab)
    losses = {v: fwd_bwd(fns[v], student, teacher, labels) for v in VARIANTS}  # warm-up, and the values
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for v in VARIANTS:
            t0 = time.perf_counter()
            fwd_bwd(fns[v], student, teacher, labels)
            times[v].append(time.perf_counter() - t0)
    return times, losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--chunk-size", type=int, default=0, help="the AdaKD kernel's tokens per chunk (0: auto, ~2**20 logits)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    ap.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)  # the subprocess mode
    args = ap.parse_args(argv)
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args.tokens, args.vocab, args.chunk_size, args.threads)))
        return

    mem = {v: memory_in_subprocess(v, args) for v in VARIANTS}
    times, losses = time_all(args)
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    print(
        f"\n{args.tokens} tokens x {args.vocab} vocab, float32, fwd+bwd, CPU, torch.set_num_threads({args.threads}), "
        f"median of {args.repeats}, chunk_size {args.chunk_size}, torch {torch.__version__}"
    )
    print(f"inputs (student + teacher logits): {mem[VARIANTS[0]]['inputs_mib']:.0f} MiB, not counted below\n")
    print("| variant | loss | median s | vs plain fkl | vs TRL | peak RSS growth MiB | mem vs TRL |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        print(
            f"| {LABELS[v]} | {losses[v]:.5f} | {med[v]:.3f} | {med[v] / med['fkl_chunked']:.2f}x | "
            f"{med[v] / med['trl_gjsd']:.2f}x | {mem[v]['peak_delta_mib']:.0f} | "
            f"{mem[v]['peak_delta_mib'] / mem['trl_gjsd']['peak_delta_mib']:.2f}x |"
        )
    r_fkl = med["adakd_rkl"] / med["fkl_chunked"]
    r_trl = med["adakd_rkl"] / med["trl_gjsd"]
    r_mem = mem["adakd_rkl"]["peak_delta_mib"] / mem["trl_gjsd"]["peak_delta_mib"]
    print("\n| target | value | met |")
    print("|---|---|---|")
    print(f"| AdaKD-rkl time <= 1.15x plain fkl | {r_fkl:.2f}x | {'yes' if r_fkl <= 1.15 else 'NO'} |")
    print(f"| AdaKD-rkl time <= 0.8x TRL | {r_trl:.2f}x | {'yes' if r_trl <= 0.8 else 'NO'} |")
    print(f"| AdaKD-rkl peak memory <= 0.25x TRL | {r_mem:.2f}x | {'yes' if r_mem <= 0.25 else 'NO'} |")
    print("\nall times (s): " + json.dumps({v: [round(t, 3) for t in times[v]] for v in VARIANTS}))


if __name__ == "__main__":
    main()
