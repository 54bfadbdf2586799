"""Which tokens does LATF select, and do IDTS's temperatures go where the paper says? (the miniature Table 1's why)

One plain no-grad forward of teacher and student per batch over a JSONL file of instruction records (tokenised exactly
as training does), then, with the loss's own functions: the Hellinger difficulty of every response token, the LATF
top-r selection over ALL tokens of the file, and the IDTS temperatures. Summaries by task family and by position in
the response go to token_analysis.json / .md and difficulty_by_family.png.

    python launch/token_analysis.py --teacher T --student S --data test.jsonl --out DIR [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adakd_ds.config.schema import DataFormat, Indicator, LossConfig
from adakd_ds.data.collate import collate_samples, pad_token_id
from adakd_ds.data.source import load_source
from adakd_ds.data.tokenize import IGNORE_INDEX, tokenize_dataset
from adakd_ds.engine.guard.tokenizer_match import check_teacher_tokenizer
from adakd_ds.engine.models import check_vocab
from adakd_ds.loss.difficulty import token_difficulty
from adakd_ds.loss.idts import idts_temperatures, lower_median
from adakd_ds.loss.latf import select_top_ratio

BUCKETS = ("first", "middle", "last")  # "last" is the EOS unless max_len cut the response


@dataclass
class TokenArrays:
    """One entry per response token, in file order (record, then position)."""

    difficulty: torch.Tensor  # [N] float32, Hellinger(teacher, student) at temperature 1
    task: list[str]  # the record's "task" ("unknown" when absent)
    record: torch.Tensor  # [N] int64, index of the record in the file
    position: torch.Tensor  # [N] int64, 0-based position in the response
    length: torch.Tensor  # [N] int64, response length in tokens (EOS included, after truncation)
    selected: torch.Tensor  # [N] bool, LATF top-r over all N tokens
    tau: torch.Tensor  # [N] IDTS tau with the lower median of ALL tokens (what r = 1 would give)
    tau_loss: torch.Tensor  # [N] IDTS tau as the loss gives it (median of the SELECTED scores); NaN if not selected
    ratio: float
    median_all: float
    median_selected: float
    threshold: float  # the smallest selected difficulty

    @property
    def bucket(self) -> list[str]:
        """first (position 0), last (position length - 1), middle; a 1-token response counts as first."""
        return [
            "first" if p == 0 else "last" if p == n - 1 else "middle"
            for p, n in zip(self.position.tolist(), self.length.tolist(), strict=True)
        ]


def load_pair(teacher: str, student: str) -> tuple[Any, Any, Any]:
    """The student's tokenizer (checked against the teacher's) and both models in float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student, local_files_only=True)
    check_teacher_tokenizer(teacher, tok, student)
    models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in (teacher, student)]
    check_vocab(models[1], models[0], tok)
    return tok, models[0], models[1]


def load_samples(
    data: str, tok: Any, max_len: int, max_prompt_len: int
) -> tuple[list[dict[str, list[int]]], list[str]]:
    """Samples as training builds them, and each sample's task; max_prompt_len < max_len keeps one sample a record."""
    raw = load_source(data, DataFormat.INSTRUCTION, "train", None)
    tasks = raw.dataset["task"] if "task" in raw.dataset.column_names else ["unknown"] * len(raw.dataset)
    ds = tokenize_dataset(raw.dataset, raw.format, tok, max_prompt_len, max_len, raw.locate)
    if len(ds) != len(raw.dataset):
        raise ValueError(f"{data}: {len(raw.dataset) - len(ds)} records lost every response token to truncation")
    return [dict(s) for s in ds], [str(t) for t in tasks]


@torch.no_grad()
def batch_difficulty(teacher: Any, student: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hellinger per response token [n], the [B, T-1] mask of those tokens): logits at t score label t + 1."""
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    t_logits, s_logits = teacher(**kw).logits[:, :-1], student(**kw).logits[:, :-1]
    width = min(t_logits.shape[-1], s_logits.shape[-1])  # a padded vocab: the extra ids are never labels
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    scores = token_difficulty(Indicator.HELLINGER, s_logits[mask][:, :width], t_logits[mask][:, :width], labels[mask])
    return scores.float(), mask


def token_arrays(
    teacher: Any,
    student: Any,
    samples: Sequence[dict[str, list[int]]],
    tasks: Sequence[str],
    pad_id: int,
    ratio: float = 0.5,
    batch_size: int = 64,
    loss_cfg: LossConfig | None = None,
) -> TokenArrays:
    """Per-token difficulty, family, position, LATF selection and IDTS taus over all samples (the test's hook)."""
    cfg = loss_cfg or LossConfig()
    scores, record, position, length, task = [], [], [], [], []
    for start in range(0, len(samples), batch_size):
        batch = collate_samples(samples[start : start + batch_size], pad_id)
        s, mask = batch_difficulty(teacher, student, batch)
        scores.append(s)
        rows, _ = mask.nonzero(as_tuple=True)  # row-major: response order within each row
        counts = mask.sum(1)
        starts = torch.cumsum(counts, 0) - counts
        idx = torch.arange(rows.numel())
        record.append(rows + start)
        position.append(idx - starts[rows])
        length.append(counts[rows])
        task.extend(tasks[start + r] for r in rows.tolist())
    diff = torch.cat(scores)
    selected = select_top_ratio(diff, ratio)
    median_all = lower_median(diff)
    median_sel = lower_median(diff[selected])
    tau_loss = torch.full_like(diff, math.nan)
    tau_loss[selected] = idts_temperatures(diff[selected], median_sel, cfg.temperature, cfg.c, cfg.inverse_sign)
    return TokenArrays(
        difficulty=diff,
        task=task,
        record=torch.cat(record),
        position=torch.cat(position),
        length=torch.cat(length),
        selected=selected,
        tau=idts_temperatures(diff, median_all, cfg.temperature, cfg.c, cfg.inverse_sign),
        tau_loss=tau_loss,
        ratio=ratio,
        median_all=float(median_all),
        median_selected=float(median_sel),
        threshold=float(diff[selected].min()),
    )


def _mean(x: torch.Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def group_stats(arrays: TokenArrays, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per group (keys[i] is token i's group): count, difficulty mean/q10/q50/q90, LATF share, mean taus."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(keys), key=lambda k: (BUCKETS.index(k) if k in BUCKETS else len(BUCKETS), k)):
        m = torch.tensor([k == name for k in keys], dtype=torch.bool)
        d = arrays.difficulty[m].double()
        sel = arrays.selected[m]
        q = torch.quantile(d, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        out[name] = {
            "tokens": int(m.sum()),
            "difficulty_mean": float(d.mean()),
            "difficulty_q10": q[0],
            "difficulty_q50": q[1],
            "difficulty_q90": q[2],
            "selected": int(sel.sum()),
            "selected_share": float(sel.double().mean()),
            "tau_mean": _mean(arrays.tau[m]),
            "tau_selected_mean": _mean(arrays.tau[m][sel]),
            "tau_loss_selected_mean": _mean(arrays.tau_loss[m][sel]),
        }
    return out


def _markdown(summary: dict[str, Any]) -> str:
    cols = ("tokens", "difficulty_mean", "difficulty_q10", "difficulty_q50", "difficulty_q90", "selected_share")
    cols += ("tau_mean", "tau_selected_mean", "tau_loss_selected_mean")
    head = (
        f"# Token analysis\n\nteacher `{summary['teacher']}`, student `{summary['student']}`, data `{summary['data']}`"
        f"; {summary['tokens']} response tokens, LATF r = {summary['ratio']} selects {summary['selected']} "
        f"(threshold {summary['threshold']:.4f}); IDTS tau_base = {summary['tau_base']}, c = {summary['c']}.\n\n"
        "tau: median of all tokens; tau_loss: as the loss sets it, median of the selected tokens.\n"
    )
    parts = [head]
    for title, key in (("By task family", "by_family"), ("By position in the response", "by_position")):
        rows = [f"\n## {title}\n", "| group | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, st in summary[key].items():
            cells = [str(st[c]) if isinstance(st[c], int) else "-" if st[c] is None else f"{st[c]:.4f}" for c in cols]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        parts.append("\n".join(rows) + "\n")
    return "".join(parts)


def plot_difficulty(arrays: TokenArrays, path: str, title: str) -> None:
    """Small multiples: one step histogram per family on shared bins, with the LATF threshold as a vertical line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = sorted(set(arrays.task))
    ncols = min(4, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    lo, hi = float(arrays.difficulty.min()), float(arrays.difficulty.max())
    hi = max(hi, lo + 1e-6)
    bins = [lo + (hi - lo) * i / 40 for i in range(41)]  # shared bins over the data's own range
    for ax, fam in zip(axes.flat, families, strict=False):
        d = arrays.difficulty[torch.tensor([t == fam for t in arrays.task])].numpy()
        ax.hist(d, bins=bins, histtype="step", color="tab:blue")
        ax.axvline(arrays.threshold, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"{fam} (n={d.size})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(families) :]:
        ax.set_visible(False)
    fig.supxlabel("Hellinger difficulty (red: LATF threshold)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Per-token difficulty, LATF selection and IDTS temperatures by family.")
    p.add_argument("--teacher", required=True, help="teacher HF model folder")
    p.add_argument("--student", required=True, help="student HF model folder (its tokenizer is used)")
    p.add_argument("--data", required=True, help="JSONL of {instruction, input, output, task}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ratio", type=float, default=0.5, help="LATF ratio r")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-len", type=int, default=80)
    p.add_argument("--max-prompt-len", type=int, default=40)
    args = p.parse_args(argv)
    if not 0.0 < args.ratio <= 1.0:
        p.error(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.batch_size < 1 or not 0 < args.max_prompt_len < args.max_len:
        p.error("need --batch-size >= 1 and 0 < --max-prompt-len < --max-len")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; exit 2 naming the path when an input is missing, before any model is loaded."""
    args = _parse(argv)
    for flag, path, ok in (
        ("--teacher", args.teacher, os.path.isdir),
        ("--student", args.student, os.path.isdir),
        ("--data", args.data, os.path.isfile),
    ):
        if not ok(path):
            print(f"token_analysis: {flag} {path}: not found", file=sys.stderr)
            return 2
    torch.manual_seed(0)
    tok, teacher, student = load_pair(args.teacher, args.student)
    samples, tasks = load_samples(args.data, tok, args.max_len, args.max_prompt_len)
    arrays = token_arrays(teacher, student, samples, tasks, pad_token_id(tok), args.ratio, args.batch_size)
    cfg = LossConfig()
    summary = {
        "teacher": args.teacher,
        "student": args.student,
        "data": args.data,
        "records": len(samples),
        "tokens": int(arrays.difficulty.numel()),
        "ratio": args.ratio,
        "selected": int(arrays.selected.sum()),
        "threshold": arrays.threshold,
        "median_all": arrays.median_all,
        "median_selected": arrays.median_selected,
        "tau_base": cfg.temperature,
        "c": cfg.c,
        "inverse_sign": cfg.inverse_sign,
        "overall": group_stats(arrays, ["all"] * len(arrays.task))["all"],
        "by_family": group_stats(arrays, arrays.task),
        "by_position": group_stats(arrays, arrays.bucket),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "token_analysis.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(args.out, "token_analysis.md"), "w", encoding="utf-8") as fh:
        fh.write(_markdown(summary))
    names = [os.path.join(*os.path.normpath(p).split(os.sep)[-2:]) for p in (args.teacher, args.student, args.data)]
    title = f"difficulty by family: teacher {names[0]} / student {names[1]} / data {names[2]} (r={args.ratio})"
    plot_difficulty(arrays, os.path.join(args.out, "difficulty_by_family.png"), title)
    print(f"token_analysis: {summary['tokens']} tokens, {summary['selected']} selected -> {args.out}")
    return 0
