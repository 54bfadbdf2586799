"""Time and peak memory of the AdaKD loss against plain fkl, TRL's generalized JSD loss and a naive unchunked rkl.

Forward + backward w.r.t. the student logits, float32, CPU. Times are interleaved round-robin over the variants (so
a noisy neighbour hurts all of them alike) and the median is reported, with the process CPU time next to the wall
time. Peak memory is measured in a FRESH subprocess per variant: the peak RSS is reset once the inputs exist
(bench_common.reset_peak), so it is the growth during one forward + backward. It includes the [T, V] gradient buffer,
the same for every variant. The floor row is one pass that reads both inputs and writes a gradient of their size.

    .venv/bin/python bench/loss_bench.py --tokens 4096 --vocab 32000 --repeats 5

The cost of loss.idts_grad = through (issue 21), with materialised logits and with the fused head (hidden size
--hidden; the fused rows time the head's matmuls too, so compare them with each other):

    .venv/bin/python bench/loss_bench.py --variants adakd_rkl adakd_rkl_through fused_rkl fused_rkl_through
Compiled chunk kernels (loss.kernel, issue 24) against eager: run once per --kernel and compare the tables
(the first call of each compiled graph, its compile, is in the untimed warm-up):

    .venv/bin/python bench/loss_bench.py --kernel compiled --variants fkl_chunked adakd_rkl floor
TRL is an optional peer (a bench-only extra: pip install -e .[bench]); without it its row is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

# run from a checkout without relying on the editable install
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import load, measure_once, missing_peer, run_json  # noqa: E402

VARIANTS = (
    "fkl_chunked",
    "adakd_rkl",
    "trl_gjsd",
    "naive_rkl",
    "floor",
    "adakd_rkl_through",
    "fused_rkl",
    "fused_rkl_through",
)
DEFAULT_VARIANTS = VARIANTS[:5]
KERNEL = "eager"  # loss.kernel of every AdaKDLoss built here (--kernel)
FUSED = {"fused_rkl": False, "fused_rkl_through": True}  # variant -> idts_grad through?
PEERS = {"trl_gjsd": ("trl", "trl")}  # variant -> (module, pip extra): optional, skipped with a note when missing
LABELS = {
    "floor": "floor: one pass reading both inputs, writing a [T, V] gradient",
    "fkl_chunked": "plain fkl, our chunked kernel (adakd=False)",
    "adakd_rkl": "AdaKD-rkl (hellinger, LATF r=0.75, IDTS c=0.5)",
    "trl_gjsd": "TRL GKDTrainer.generalized_jsd_loss (beta=1)",
    "naive_rkl": "naive unchunked PyTorch rkl",
    "adakd_rkl_through": "AdaKD-rkl, loss.idts_grad=through",
    "fused_rkl": "AdaKD-rkl, fused head (hidden -> logits per chunk)",
    "fused_rkl_through": "AdaKD-rkl, fused head, loss.idts_grad=through",
}


def make_inputs(tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(tokens, vocab, generator=g).mul_(2.0)  # in place: no temporary raises the peak
    student = torch.randn(tokens, vocab, generator=g)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    return student, teacher, labels


def _fused(through: bool, chunk_size: int, tokens: int, vocab: int, hidden: int):
    """The fused-head loss on fixed hidden states and head weights (the logits arguments are ignored)."""
    from adakd_ds.config.schema import IdtsGrad, LossConfig
    from adakd_ds.loss.adakd_loss import AdaKDLoss
    from adakd_ds.loss.fused_head import HeadInput

    grad = IdtsGrad.THROUGH if through else IdtsGrad.DETACHED
    loss_fn = AdaKDLoss(LossConfig(idts_grad=grad, chunk_size=chunk_size, kernel=KERNEL), total_steps=100)
    loss_fn.controller.ratio = 0.75
    g = torch.Generator().manual_seed(1)
    hs, ht = (torch.randn(tokens, hidden, generator=g) for _ in range(2))
    ws, wt = (torch.randn(vocab, hidden, generator=g).mul_(hidden**-0.5 * 2.0) for _ in range(2))
    cache: dict[int, tuple] = {}

    def fn(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = s.shape[0]  # the warm-up call uses fewer tokens than the measured one
        if n not in cache:
            cache.clear()
            cache[n] = (hs[:n].clone().requires_grad_(True), ws.clone().requires_grad_(True))
        h, w = cache[n]
        h.grad = w.grad = None
        return loss_fn(HeadInput(h, w), HeadInput(ht[:n], wt), y)[0]

    return fn


def build(
    variant: str, chunk_size: int, tokens: int = 0, vocab: int = 0, hidden: int = 256
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (student, teacher, labels) -> scalar loss; imports happen here, before any measurement."""
    if variant in FUSED:
        return _fused(FUSED[variant], chunk_size, tokens, vocab, hidden)
    if variant in ("fkl_chunked", "adakd_rkl", "adakd_rkl_through"):
        from adakd_ds.config.schema import Divergence, IdtsGrad, Indicator, LossConfig
        from adakd_ds.loss.adakd_loss import AdaKDLoss

        if variant == "fkl_chunked":
            cfg = LossConfig(divergence=Divergence.FKL, adakd=False, chunk_size=chunk_size, kernel=KERNEL)
        else:
            grad = IdtsGrad.THROUGH if variant == "adakd_rkl_through" else IdtsGrad.DETACHED
            cfg = LossConfig(
                divergence=Divergence.RKL,
                adakd=True,
                indicator=Indicator.HELLINGER,
                c=0.5,
                chunk_size=chunk_size,
                idts_grad=grad,
                kernel=KERNEL,
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
    if variant == "floor":
        return _floor
    raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")


class _Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D401
        ctx.grad = torch.sub(s, t)  # reads both inputs, writes one tensor of their size
        return s.new_zeros(())

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad, ctx.grad = ctx.grad, None  # handed over, not copied: autograd copies a gradient someone else holds
        return grad, None


def _floor(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _Floor.apply(s, t)


def fwd_bwd(fn, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> float:
    x = student.detach().requires_grad_(True)
    loss = fn(x, teacher, labels)
    loss.backward()
    return float(loss.detach())


def measure_memory(variant: str, tokens: int, vocab: int, chunk_size: int, threads: int, hidden: int = 256) -> dict:
    """Runs inside a fresh subprocess: peak RSS growth of one forward + backward (after a warm-up), in MiB."""
    torch.set_num_threads(threads)
    fn = build(variant, chunk_size, tokens, vocab, hidden)
    fwd_bwd(fn, *make_inputs(8, vocab))  # first-call costs (allocator, kernels) are not the variant's memory
    student, teacher, labels = make_inputs(tokens, vocab)
    m = measure_once(lambda: fwd_bwd(fn, student, teacher, labels))
    inputs_mib = 2 * student.numel() * student.element_size() / 2**20
    return {"variant": variant, "peak_delta_mib": m.peak_growth_mib, "inputs_mib": inputs_mib, "loss": m.value}


def memory_in_subprocess(variant: str, args: argparse.Namespace) -> dict:
    extra = [
        "--memory-of",
        variant,
        "--tokens",
        str(args.tokens),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
    ]
    return run_json(
        os.path.abspath(__file__),
        extra + ["--chunk-size", str(args.chunk_size), "--threads", str(args.threads), "--kernel", args.kernel],
    )


def time_all(args: argparse.Namespace, variants: list[str]) -> tuple[dict, dict, dict]:
    torch.set_num_threads(args.threads)
    fns = {v: build(v, args.chunk_size, args.tokens, args.vocab, args.hidden) for v in variants}
    student, teacher, labels = make_inputs(args.tokens, args.vocab)
    losses = {v: fwd_bwd(fns[v], student, teacher, labels) for v in variants}  # warm-up, and the values
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            fwd_bwd(fns[v], student, teacher, labels)
            times[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
    return times, cpu, losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--chunk-size", type=int, default=0, help="the AdaKD kernel's tokens per chunk (0: auto, ~2**20 logits)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of the fused-head variants")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    ap.add_argument("--kernel", choices=["eager", "compiled", "auto"], default="eager", help="loss.kernel")
    ap.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)  # the subprocess mode
    args = ap.parse_args(argv)
    global KERNEL
    KERNEL = args.kernel
    if args.memory_of:
        print(
            json.dumps(
                measure_memory(args.memory_of, args.tokens, args.vocab, args.chunk_size, args.threads, args.hidden)
            )
        )
        return

    notes = {v: missing_peer(*PEERS[v]) for v in PEERS if v in args.variants}
    variants = [v for v in args.variants if not notes.get(v)]
    for v, note in notes.items():
        if note:
            print(f"{LABELS[v]}: {note}")
    load_before = load()
    mem = {v: memory_in_subprocess(v, args) for v in variants}
    times, cpu, losses = time_all(args, variants)
    med = {v: statistics.median(times[v]) for v in variants}
    med_cpu = {v: statistics.median(cpu[v]) for v in variants}
    peer = "trl_gjsd" if "trl_gjsd" in variants else None
    print(
        f"\n{args.tokens} tokens x {args.vocab} vocab, float32, fwd+bwd, CPU, torch.set_num_threads({args.threads}), "
        f"median of {args.repeats} (interleaved), chunk_size {args.chunk_size}, "
        f"loss.kernel {args.kernel}, torch {torch.__version__}"
    )
    print(f"machine: {load_before} before, {load()} after")
    print(f"inputs (student + teacher logits): {mem[variants[0]]['inputs_mib']:.0f} MiB, not counted below\n")
    print(
        "| variant | loss | median wall s | median CPU s | vs plain fkl | vs TRL | vs floor | peak RSS growth MiB | mem vs TRL |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    base = "fkl_chunked" if "fkl_chunked" in variants else None

    def vs(v: str, ref: str | None, table: dict) -> str:
        return f"{table[v] / table[ref]:.2f}x" if ref else "n/a"

    mem_mib = {v: mem[v]["peak_delta_mib"] for v in variants}
    for v in variants:
        loss = "" if v == "floor" else f"{losses[v]:.5f}"
        print(
            f"| {LABELS[v]} | {loss} | {med[v]:.3f} | {med_cpu[v]:.3f} | {vs(v, base, med_cpu)} | "
            f"{vs(v, peer, med_cpu)} | {vs(v, 'floor' if 'floor' in variants else None, med_cpu)} | {mem_mib[v]:.0f} | {vs(v, peer, mem_mib)} |"
        )
    for detached, through in (("adakd_rkl", "adakd_rkl_through"), ("fused_rkl", "fused_rkl_through")):
        if detached in variants and through in variants:
            print(
                f"\nthrough / detached ({detached}): CPU time {med_cpu[through] / med_cpu[detached]:.2f}x, "
                f"wall {med[through] / med[detached]:.2f}x, peak RSS growth {mem_mib[through] / mem_mib[detached]:.2f}x"
            )
    print("\n| target (CPU time) | value | met |")
    print("|---|---|---|")
    if base and "adakd_rkl" in variants:
        r_fkl = med_cpu["adakd_rkl"] / med_cpu["fkl_chunked"]
        print(f"| AdaKD-rkl time <= 1.15x plain fkl | {r_fkl:.2f}x | {'yes' if r_fkl <= 1.15 else 'NO'} |")
    if peer and "adakd_rkl" in variants:
        r_trl, r_mem = med_cpu["adakd_rkl"] / med_cpu[peer], mem_mib["adakd_rkl"] / mem_mib[peer]
        print(f"| AdaKD-rkl time <= 0.8x TRL | {r_trl:.2f}x | {'yes' if r_trl <= 0.8 else 'NO'} |")
        print(f"| AdaKD-rkl peak memory <= 0.25x TRL | {r_mem:.2f}x | {'yes' if r_mem <= 0.25 else 'NO'} |")
    print("\nall wall times (s): " + json.dumps({v: [round(t, 3) for t in times[v]] for v in variants}))


if __name__ == "__main__":
    main()
