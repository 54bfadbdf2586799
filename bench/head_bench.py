"""Real-vocab loss from hidden states: the fused head against the unfused one and the peers, time and peak memory.

Forward + backward from the student's and the teacher's last hidden states and head weights (the head of Qwen2-1.5B
by default: hidden 1536, vocab 151936), float32, CPU. Every (variant, repeat) runs in a FRESH subprocess, the
variants interleaved repeat by repeat: after a small warm-up and once the inputs exist the peak RSS is reset, so the
peak growth counts only the run (bench_common). Medians over repeats; CPU time next to wall time.

    .venv/bin/python bench/head_bench.py --tokens 2048 --repeats 3
Compiled chunk kernels (loss.kernel, issue 24): --kernel compiled (each fresh process compiles in its untimed
warm-up, at the real vocab; the row dimension is dynamic, so the measured run does not recompile).
Peers are optional bench-only extras (pip install -e .[bench]); a missing or failing one is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import load, measure_once, missing_peer, run_json  # noqa: E402

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # hs, ws, ht, wt, labels
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

LABELS = {
    "floor": "floor: the 4 head matmuls of one fused pass, an elementwise op between",
    "fused_fkl": "ours, fused head, plain fkl",
    "fused_adakd_rkl": "ours, fused head, AdaKD-rkl (LATF r=0.75)",
    "unfused_fkl": "ours, unfused (full logits), plain fkl",
    "unfused_adakd_rkl": "ours, unfused (full logits), AdaKD-rkl",
    "liger_jsd_b0": "Liger fused linear JSD, beta 0",
    "liger_jsd_b1": "Liger fused linear JSD, beta 1",
    "torchtune_kd": "torchtune ForwardKLWithChunkedOutputLoss (8 chunks)",
    "trl_gjsd": "TRL generalized_jsd_loss (beta 1, full logits)",
}
VARIANTS = tuple(LABELS)
COMPILED = {"liger_jsd_b0", "liger_jsd_b1"}  # peers that torch.compile on first use
PEERS = {  # variant -> (module, pip extra)
    "liger_jsd_b0": ("liger_kernel", "liger-kernel"),
    "liger_jsd_b1": ("liger_kernel", "liger-kernel"),
    "torchtune_kd": ("torchtune", "torchtune torchao"),
    "trl_gjsd": ("trl", "trl"),
}


def make_inputs(tokens: int, hidden: int, vocab: int) -> Inputs:
    """Built without temporaries (in-place scaling), so nothing raises the peak before it is reset."""
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(tokens, hidden, generator=g)
    ht = torch.randn(tokens, hidden, generator=g)
    ws = torch.randn(vocab, hidden, generator=g).mul_(hidden**-0.5)
    wt = torch.randn(vocab, hidden, generator=g).mul_(2.0 * hidden**-0.5)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    return hs, ws, ht, wt, labels


KERNEL = "eager"  # loss.kernel of our variants (--kernel)


def _ours(fused: bool, adakd: bool, chunk_size: int) -> LossFn:
    from adakd_ds.config.schema import Divergence, LossConfig
    from adakd_ds.loss.adakd_loss import AdaKDLoss
    from adakd_ds.loss.fused_head import HeadInput

    div = Divergence.RKL if adakd else Divergence.FKL
    cfg = LossConfig(divergence=div, adakd=adakd, chunk_size=chunk_size, kernel=KERNEL)
    loss_fn = AdaKDLoss(cfg, total_steps=100)
    loss_fn.controller.ratio = 0.75
    if fused:
        return lambda hs, ws, ht, wt, y: loss_fn(HeadInput(hs, ws), HeadInput(ht, wt), y)[0]

    def unfused(hs, ws, ht, wt, y):
        with torch.no_grad():
            t_logits = ht @ wt.t()
        return loss_fn(hs @ ws.t(), t_logits, y)[0]

    return unfused


def _floor(hs, ws, ht, wt, y):
    """The irreducible compute of one fused pass: both heads' logits, then grad_h and grad_W, chunk by chunk."""
    from adakd_ds.loss.fused_head import FUSED_AUTO_CHUNK_ELEMENTS

    rows = max(1, FUSED_AUTO_CHUNK_ELEMENTS // ws.shape[0])
    gh, gw = torch.zeros_like(hs), torch.zeros_like(ws)
    with torch.no_grad():
        for a in range(0, hs.shape[0], rows):
            h = hs[a : a + rows].detach()
            g = torch.mm(h, ws.detach().t()).sub_(torch.mm(ht[a : a + rows], wt.t()))
            gh[a : a + rows] = torch.mm(g, ws.detach())
            gw.addmm_(g.t(), h)
    hs.grad, ws.grad = gh, gw
    return torch.zeros(())


def build(variant: str, chunk_size: int = 0) -> LossFn:
    if variant == "floor":
        return _floor
    if variant in ("fused_fkl", "fused_adakd_rkl", "unfused_fkl", "unfused_adakd_rkl"):
        return _ours(variant.startswith("fused"), variant.endswith("adakd_rkl"), chunk_size)
    if variant.startswith("liger_jsd"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=float(variant[-1]))
        return lambda hs, ws, ht, wt, y: loss(hs, ws, ht, wt, y)
    if variant == "torchtune_kd":
        from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

        kd = ForwardKLWithChunkedOutputLoss(num_output_chunks=8)

        def torchtune_kd(hs, ws, ht, wt, y):  # torchtune's models emit their logits as a list of chunks
            s_chunks = [h @ ws.t() for h in hs[None].chunk(8, dim=1)]
            with torch.no_grad():
                t_chunks = [h @ wt.t() for h in ht[None].chunk(8, dim=1)]
            return kd(s_chunks, t_chunks, y[None])

        return torchtune_kd
    if variant == "trl_gjsd":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        def trl(hs, ws, ht, wt, y):
            with torch.no_grad():
                t_logits = ht @ wt.t()
            return GKDTrainer.generalized_jsd_loss((hs @ ws.t())[None], t_logits[None], labels=y[None], beta=1.0)

        return trl
    raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")


def fwd_bwd(fn: LossFn, inputs: Inputs) -> float:
    hs, ws, ht, wt, y = inputs
    hs, ws = hs.detach().requires_grad_(True), ws.detach().requires_grad_(True)
    loss = fn(hs, ws, ht, wt, y)
    if loss.requires_grad:
        loss.backward()
    return float(loss.detach())


def one_run(variant: str, tokens: int, hidden: int, vocab: int, threads: int, chunk_size: int = 0) -> dict:
    """Inside a fresh subprocess: a warm-up, then one measured forward + backward."""
    torch.set_num_threads(threads)
    fn = build(variant, chunk_size)
    inputs = make_inputs(tokens, hidden, vocab)
    # torch.compile (Liger) specialises on the shapes: its warm-up runs the real shapes, so no compile is timed
    warm_vocab = vocab if KERNEL != "eager" else 4096  # our compiled graphs are static in the vocab
    fwd_bwd(fn, inputs if variant in COMPILED else make_inputs(16, hidden, warm_vocab))
    m = measure_once(lambda: fwd_bwd(fn, inputs))
    return {"wall": m.wall_s, "cpu": m.cpu_s, "peak": m.peak_growth_mib, "loss": m.value}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=0, help="our loss's rows per chunk (0: auto)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--kernel", choices=["eager", "compiled", "auto"], default="eager", help="our loss.kernel")
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # the subprocess mode
    args = ap.parse_args(argv)
    shape = ["--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
    shape += ["--chunk-size", str(args.chunk_size), "--kernel", args.kernel]
    global KERNEL
    KERNEL = args.kernel
    if args.one:
        import json

        print(json.dumps(one_run(args.one, args.tokens, args.hidden, args.vocab, args.threads, args.chunk_size)))
        return
    notes = {v: missing_peer(*PEERS[v]) for v in args.variants if v in PEERS}
    runs: dict[str, list[dict]] = {v: [] for v in args.variants if not notes.get(v)}
    load_before = load()
    for _ in range(args.repeats):
        for v in list(runs):
            try:
                runs[v].append(
                    run_json(os.path.abspath(__file__), ["--one", v, "--threads", str(args.threads), *shape])
                )
            except RuntimeError as exc:  # e.g. a peer that cannot compile or run on this machine
                notes[v] = "skipped: failed here: " + str(exc).strip().splitlines()[-1][:200]
                del runs[v]
    med = {
        v: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "peak", "loss")} for v, rs in runs.items()
    }
    peers = [v for v in med if v in PEERS]
    best_mem = min(peers, key=lambda v: med[v]["peak"]) if peers else None
    best_cpu = min(peers, key=lambda v: med[v]["cpu"]) if peers else None
    print(
        f"\n{args.tokens} tokens, hidden {args.hidden}, vocab {args.vocab}, float32, fwd+bwd from hidden states, CPU, "
        f"{args.threads} thread(s), median of {args.repeats} fresh-process runs (interleaved), our chunk_size "
        f"{args.chunk_size or 'auto'}, loss.kernel {args.kernel}, torch {torch.__version__}"
    )
    print(f"machine: {load_before} before, {load()} after; inputs not counted in the peak\n")
    print("| variant | loss | wall s | CPU s | CPU vs floor | CPU vs best peer | peak growth MiB | mem vs best peer |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def ratio(v: str, ref: str | None, key: str) -> str:
        return f"{med[v][key] / med[ref][key]:.2f}x" if ref and ref in med else "n/a"

    for v, m in med.items():
        print(
            f"| {LABELS[v]} | {m['loss']:.5f} | {m['wall']:.1f} | {m['cpu']:.1f} | {ratio(v, 'floor', 'cpu')} | "
            f"{ratio(v, best_cpu, 'cpu')} | {m['peak']:.0f} | {ratio(v, best_mem, 'peak')} |"
        )
    for v, note in notes.items():
        if note:
            print(f"| {LABELS[v]} | {note} |  |  |  |  |  |  |")
    print(f"\nbest peer by memory: {best_mem}; by CPU time: {best_cpu}")


if __name__ == "__main__":
    main()
