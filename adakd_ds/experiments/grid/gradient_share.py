"""Where does the distillation gradient go? The share of the gradient on the student's logits that each difficulty
decile (and task family) receives, under a loss config, along a training run (issue 21.1).

Why squared norms: the gradient on the logits of a batch is a [tokens, V] matrix whose rows are disjoint coordinates,
so its squared norm is exactly the sum of the per-token squared norms, and "decile d's share" = sum over its tokens
of |dL/dz_i|^2 / |dL/dz|^2 adds up to 1 over the deciles. The loss is the project's own AdaKDLoss (the trainer's
module, float64 here), with LATF's ratio set to the run's r at that step, so the shares are what the optimizer saw at
those weights. The deciles are of the Hellinger difficulty (AdaKD's own score) within each probe batch: decile 0 is
the easiest tenth of the batch's tokens, decile 9 the hardest.

Along a run: the SFT init (step 0) and every checkpoint of a grid cell (output.save_interval), the same probe
batches of the distillation split at each; the held-out KL in both directions on the val split at each too.

    python launch/gradient_share.py --cells runs/sensitivity/choose/paper/cells --out bench/results
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adakd_ds.config.schema import Indicator, LossConfig
from adakd_ds.data.collate import collate_samples
from adakd_ds.data.tokenize import IGNORE_INDEX
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.difficulty import token_difficulty

N_DECILES = 10


@dataclass
class BatchGrad:
    """One probe batch at one checkpoint: per valid token (row-major), its squared gradient norm and difficulty."""

    grad_sq: torch.Tensor  # [n] float64, |dL/dz_i|^2 on the student's logits
    difficulty: torch.Tensor  # [n] Hellinger(teacher, student) at temperature 1
    family: list[str]  # [n] the token's record's task


def token_grad_sq(cfg: LossConfig, ratio: float, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(|dL/dz_i|^2, difficulty_i) of every valid token (targets != -100, row-major), L = the trainer's loss.

    ``targets`` are aligned (the target of logits[b, t]), as the trainer passes them; LATF uses ``ratio``."""
    loss_fn = AdaKDLoss(cfg, total_steps=1)
    loss_fn.controller.ratio = float(ratio)
    z = student_logits.detach().clone().requires_grad_(True)
    loss, _ = loss_fn(z, teacher_logits.detach(), targets)
    (grad,) = torch.autograd.grad(loss, z)
    valid = targets != IGNORE_INDEX
    g = grad[valid].to(torch.float64)
    scores = token_difficulty(Indicator.HELLINGER, student_logits.detach()[valid], teacher_logits.detach()[valid],
                              targets[valid])  # fmt: skip
    return (g * g).sum(-1), scores.to(torch.float64)


def deciles(difficulty: torch.Tensor, n: int = N_DECILES) -> torch.Tensor:
    """Each token's difficulty decile within its batch: by rank (ties by order), decile = floor(n * rank / N)."""
    order = torch.argsort(difficulty, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return torch.div(rank * n, max(order.numel(), 1), rounding_mode="floor")


def batch_shares(b: BatchGrad, families: Sequence[str]) -> dict[str, Any]:
    """{"decile": [10 shares], "family": {f: share}, "family_decile": {f: [10 shares of the batch's total]},
    "total": |dL/dz|^2}; the shares of one batch sum to 1."""
    total = float(b.grad_sq.sum())
    dec = deciles(b.difficulty)
    denom = total if total > 0 else 1.0
    out: dict[str, Any] = {
        "total": total,
        "decile": [float(b.grad_sq[dec == d].sum()) / denom for d in range(N_DECILES)],
    }
    fam = torch.tensor([families.index(f) for f in b.family])
    out["family"] = {f: float(b.grad_sq[fam == k].sum()) / denom for k, f in enumerate(families)}
    out["family_decile"] = {f: [float(b.grad_sq[(fam == k) & (dec == d)].sum()) / denom for d in range(N_DECILES)]
                            for k, f in enumerate(families)}  # fmt: skip
    out["token_family_decile"] = {f: [float(((fam == k) & (dec == d)).sum()) / max(len(b.family), 1)
                                      for d in range(N_DECILES)] for k, f in enumerate(families)}  # fmt: skip
    return out


def average(shares: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The plain mean of batch_shares dicts (over batches and checkpoints: every batch weighs the same)."""
    n = len(shares)

    def mean(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: mean([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], list):
            return [sum(v[i] for v in values) / n for i in range(len(values[0]))]
        return sum(values) / n

    return mean(list(shares))


# ------------------------------------------------------------------------------------------------ along a run
def load_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def probe_batches(records: list[dict[str, Any]], tok: Any, max_prompt_len: int, max_len: int, batch: int,
                  n_batches: int) -> list[tuple[dict[str, torch.Tensor], list[str]]]:  # fmt: skip
    """The first n_batches x batch records of a split, tokenised as training does, with each record's task."""
    import tempfile

    from adakd_ds.experiments.grid.token_analysis import load_samples

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        for r in records[: batch * n_batches]:
            fh.write(json.dumps(r) + "\n")
    samples, tasks = load_samples(fh.name, tok, max_len, max_prompt_len)
    Path(fh.name).unlink()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return [(collate_samples(samples[i : i + batch], pad), tasks[i : i + batch]) for i in range(0, len(samples), batch)]


def aligned_targets(labels: torch.Tensor) -> torch.Tensor:
    """The trainer's targets: the target of logits[b, t] is labels[b, t + 1]."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


@torch.no_grad()
def logits_of(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.to(torch.float64)


def checkpoint_shares(cfg: LossConfig, ratio: float, student: Any, teacher: Any,
                      batches: list[tuple[dict[str, torch.Tensor], list[str]]], families: Sequence[str]) -> dict:  # fmt: skip
    """The shares averaged over the probe batches at one set of student weights."""
    out = []
    for batch, tasks in batches:
        targets = aligned_targets(batch["labels"])
        g, d = token_grad_sq(cfg, ratio, logits_of(student, batch), logits_of(teacher, batch), targets)
        rows = (targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
        out.append(batch_shares(BatchGrad(g, d, [tasks[int(r)] for r in rows]), families))
    return average(out)


@torch.no_grad()
def heldout_kl(
    student: Any, teacher: Any, batches: list[tuple[dict[str, torch.Tensor], list[str]]]
) -> dict[str, float]:
    """Token-mean KL(teacher || student) ("fkl") and KL(student || teacher) ("rkl") at temperature 1."""
    sums = {"fkl": 0.0, "rkl": 0.0}
    n = 0
    for batch, _ in batches:
        targets = aligned_targets(batch["labels"])
        valid = targets != IGNORE_INDEX
        lp_t = torch.log_softmax(logits_of(teacher, batch)[valid], -1)
        lp_s = torch.log_softmax(logits_of(student, batch)[valid], -1)
        sums["fkl"] += float((lp_t.exp() * (lp_t - lp_s)).sum())
        sums["rkl"] += float((lp_s.exp() * (lp_s - lp_t)).sum())
        n += int(valid.sum())
    return {k: v / max(n, 1) for k, v in sums.items()}


# --------------------------------------------------------------------------------------------------- the tool
def _steps(cell_dir: Path) -> list[tuple[int, str | None]]:
    """(step, checkpoint tag) along the run: (0, None) is the SFT init the cell started from."""
    tags = sorted(p.name for p in (cell_dir / "checkpoints").glob("step_*") if p.is_dir())
    return [(0, None)] + [(int(t.split("_")[1]), t) for t in tags]


def _ratios(cell_dir: Path) -> dict[int, float]:
    """r after each step (what the next step uses), from history.jsonl; 1.0 before the first."""
    out = {0: 1.0}
    for line in (cell_dir / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "ratio" in row:
            out[int(row["step"])] = float(row["ratio"])
    return out


def _eval_curve(cell_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (cell_dir / "history.jsonl").read_text().splitlines() if x.strip()]
    return [(int(r["step"]), float(r["eval/kd"])) for r in rows if "eval/kd" in r]


def analyse_cell(cell_dir: Path, n_batches: int, batch: int) -> dict[str, Any]:
    """Shares and held-out KL at the SFT init and every checkpoint of one grid cell, and their mean over the run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adakd_ds.checkpoint.export import _state_from_checkpoint
    from adakd_ds.config.load import load_config

    cfg = load_config(str(cell_dir.parent / f"{cell_dir.name}.yaml"))
    tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer, local_files_only=True)
    teacher = AutoModelForCausalLM.from_pretrained(cfg.model.teacher, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(cfg.model.student, dtype=torch.float32).eval()
    train = load_records(Path(cfg.data.source))
    families = sorted({str(r.get("task", "unknown")) for r in train})
    probes = probe_batches(train, tok, cfg.data.max_prompt_len, cfg.data.max_len, batch, n_batches)
    val = probe_batches(load_records(Path(cfg.data.eval_source)), tok, cfg.data.max_prompt_len, cfg.data.max_len,
                        batch, 10**6) if cfg.data.eval_source else []  # fmt: skip
    ratios = _ratios(cell_dir)
    points = []
    for step, tag in _steps(cell_dir):
        if tag is not None:
            state = _state_from_checkpoint(str(cell_dir / "checkpoints"), tag)
            student.load_state_dict(state, strict=False)
        r = ratios.get(step, 1.0)
        point = {"step": step, "ratio": r, **checkpoint_shares(cfg.loss, r, student, teacher, probes, families)}
        point["heldout"] = heldout_kl(student, teacher, val) if val else {}
        points.append(point)
    trained = [p for p in points if p["step"] > 0] or points
    return {"cell": cell_dir.name, "families": families, "points": points, "eval_kd": _eval_curve(cell_dir),
            "mean": average([{k: p[k] for k in ("decile", "family", "family_decile", "token_family_decile", "total")}
                             for p in trained])}  # fmt: skip


def markdown(cells: list[dict[str, Any]]) -> str:
    """Per cell: the decile shares (mean over the trained checkpoints), the top-decile share per family, the KL path."""
    head = "| cell | " + " | ".join(f"d{d}" for d in range(N_DECILES)) + " | top 3 deciles | total |g|^2 |"
    lines = [head, "|" + "---|" * (N_DECILES + 3)]
    for c in cells:
        dec = c["mean"]["decile"]
        lines.append(f"| {c['cell']} | " + " | ".join(f"{100 * x:.1f}" for x in dec)
                     + f" | {100 * sum(dec[7:]):.1f} | {c['mean']['total']:.3g} |")  # fmt: skip
    fams = cells[0]["families"] if cells else []
    lines += ["", "Per family: its share of the gradient (and of the tokens), and the share of the family's own gradient "
              "in the batch's hardest 3 deciles:", "",
              "| cell | " + " | ".join(fams) + " |", "|" + "---|" * (len(fams) + 1)]  # fmt: skip
    for c in cells:
        m = c["mean"]
        row = []
        for f in fams:
            fd, tok = m["family_decile"][f], m["token_family_decile"][f]
            top = sum(fd[7:]) / max(sum(fd), 1e-30)
            row.append(f"{100 * sum(fd):.1f} % ({100 * sum(tok):.0f} % tok), top-3 {100 * top:.0f} %")
        lines.append(f"| {c['cell']} | " + " | ".join(row) + " |")
    lines += ["", "Held-out KL on the val split along the run (FKL = KL(teacher||student), RKL = KL(student||teacher)):",
              "", "| cell | " + " | ".join(f"step {p['step']}" for p in cells[0]["points"]) + " |",
              "|" + "---|" * (len(cells[0]["points"]) + 1)] if cells else []  # fmt: skip
    for c in cells:
        lines.append(f"| {c['cell']} | " + " | ".join(
            f"{p['heldout'].get('fkl', float('nan')):.3f} / {p['heldout'].get('rkl', float('nan')):.3f}"
            for p in c["points"]) + " |")  # fmt: skip
    return "\n".join(lines)


def chart(cells: list[dict[str, Any]], path: Path) -> None:
    """Left: the decile shares of each cell; right: the held-out eval/kd (the run's divergence, val) over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(cells), 1)
    for k, c in enumerate(cells):
        xs = [d + (k - (len(cells) - 1) / 2) * width for d in range(N_DECILES)]
        a.bar(xs, [100 * x for x in c["mean"]["decile"]], width, label=c["cell"])
        curve = c["eval_kd"]
        b.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=c["cell"])
    a.set_xticks(range(N_DECILES), [f"d{d}" for d in range(N_DECILES)])
    a.set_xlabel("difficulty decile within the batch (d0 easiest, d9 hardest)")
    a.set_ylabel("% of |dL/dz|^2 on the student's logits")
    a.set_title("where the gradient goes (mean over the run's checkpoints)")
    a.axhline(10, color="grey", lw=0.8, ls="--")
    a.legend(fontsize=7)
    b.set_xlabel("optimizer step")
    b.set_ylabel("held-out eval/kd (val split)")
    b.set_title("held-out divergence to the teacher over training")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", required=True, help="a grid's cells/ folder (each cell with checkpoints/)")
    p.add_argument("--names", nargs="*", default=None, help="cells to analyse (default: every cell folder)")
    p.add_argument("--out", required=True, help="folder for gradient_share.{json,md,png}")
    p.add_argument("--batches", type=int, default=4, help="probe batches of the distillation split")
    p.add_argument("--batch", type=int, default=32, help="records per probe batch (the testbed's global batch)")
    args = p.parse_args(argv)
    root = Path(args.cells)
    names = args.names or sorted(d.name for d in root.iterdir() if (d / "history.jsonl").is_file())
    if not names:
        print(f"gradient_share: no cells with a history.jsonl in {root}", flush=True)
        return 2
    torch.manual_seed(0)
    cells = [analyse_cell(root / n, args.batches, args.batch) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradient_share.json").write_text(json.dumps(cells, indent=1))
    md = markdown(cells)
    (out / "gradient_share.md").write_text(md + "\n")
    chart(cells, out / "gradient_share.png")
    print(md)
    return 0
