"""The sensitivity study of issue 21: AdaKD's knobs and its regime on the testbed, CHOSEN on the validation split
over the choice seeds, then REPORTED on the test split over fresh training seeds, so that no reported number was
used to pick the setting it reports.

A setting is a named set of run-config fields laid over the grid's cell config (the quickstart's student run). A
loss-knob setting (c, the LATF schedule, ...) changes only the AdaKD cells, so it runs the ``adakd`` variant alone
and is compared with the paper setting's base; a regime setting (steps, lr, clipping) changes the base as well, so it
runs both. Each setting's cells live in ``<out>/<phase>/<setting>/cells/<loss>-<variant>-s<seed>``, the grid's layout,
and a rerun skips every cell whose results.json is on disk (grid.runner.run_cell).

    python launch/sensitivity.py --phase choose --settings paper c0.25 --out runs/sensitivity
    python launch/sensitivity.py --phase report --settings paper c0.25 --out runs/sensitivity
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adakd_ds.experiments.grid.methods import Method
from adakd_ds.experiments.grid.runner import Cell, GridSpec, Setup, Variant, _embedded_setup, run_cell
from adakd_ds.experiments.seed_stats import exceeds_2std, mean_std

CHECKPOINT_INTERVAL = 75  # the choice phase's paper cells keep a checkpoint this often: gradient_share reads them


class Phase(str, enum.Enum):
    CHOOSE = "choose"  # validation split, the choice seeds
    REPORT = "report"  # test split, fresh seeds


PHASE_SEEDS: dict[Phase, tuple[int, ...]] = {Phase.CHOOSE: (1, 2), Phase.REPORT: (4, 5, 6)}
PHASE_SPLIT: dict[Phase, str] = {Phase.CHOOSE: "val", Phase.REPORT: "test"}
LOSS_ONLY = (Variant.ADAKD,)  # a loss knob leaves the base cells alone
REGIME = (Variant.BASE, Variant.ADAKD)  # a regime changes both sides


@dataclass(frozen=True)
class Setting:
    """A named point of the study: the run-config fields it sets and the variants it needs."""

    name: str
    fields: dict[str, dict[str, Any]]
    variants: tuple[Variant, ...]
    why: str
    base_of: str = ""  # the setting whose base cells this one's adakd cells are compared with ("" = its own)

    def base_setting(self) -> str:
        return self.base_of or self.name


_FAST_LATF = {"eps": 0.01, "delta": 0.1, "r_min": 0.3}  # r can fall about 10 %/step once the EMA drops 1 %
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("paper", {}, (Variant.BASE, Variant.ADAKD, Variant.LATF, Variant.IDTS),
            "the paper's defaults (c 0.5, eps = delta 0.05, tau^2 weights), the quickstart's regime"),
    Setting("c0.1", {"loss": {"c": 0.1}}, LOSS_ONLY, "IDTS nearly off: tau in [0.90, 1.11]", "paper"),
    Setting("c0.25", {"loss": {"c": 0.25}}, LOSS_ONLY, "half the paper's IDTS strength", "paper"),
    Setting("latf_fast", {"loss": _FAST_LATF}, LOSS_ONLY, "a LATF schedule under which r moves in 300 steps",
            "paper"),
    Setting("w_none", {"loss": {"idts_weight": "none"}}, LOSS_ONLY,
            "IDTS without tau^2 weights (needs the knobs branch)", "paper"),
    Setting("w_norm", {"loss": {"idts_weight": "normalized"}}, LOSS_ONLY,
            "tau^2 weights rescaled to mean 1 over the selected tokens (ours; needs the knobs branch)", "paper"),
    Setting("pool_valid", {"loss": {"median_pool": "valid"}}, LOSS_ONLY,
            "the IDTS median over every valid token (needs the knobs branch)", "paper"),
    Setting("grad_through", {"loss": {"idts_grad": "through"}}, LOSS_ONLY,
            "gradient through tau, the median and the score, as the authors' code (needs the knobs branch)", "paper"),
    Setting("lr5e-4", {"train": {"lr": 5e-4}}, REGIME, "the paper's lr, 4x smaller steps"),
    Setting("noclip", {"train": {"grad_clip": 0.0}}, REGIME, "no gradient clipping (the default clips at 1.0)"),
    Setting("long", {"train": {"max_steps": 1000}}, REGIME, "about 1000 steps (3.3x the quickstart's)"),
)}  # fmt: skip


def cells_for(setting: Setting, methods: list[Method], seeds: tuple[int, ...],
              only: list[Variant] | None = None) -> list[Cell]:  # fmt: skip
    """The setting's cells; ``only``: just these of its variants (the report phase needs no ablation cells)."""
    return [Cell(m, v, s) for m in methods for v in setting.variants if not only or v in only for s in seeds]


def setting_setup(base: Setup, setting: Setting, phase: Phase, paths: dict[str, Path]) -> Setup:
    """The grid setup with the setting's fields laid over its template, evaluated on the phase's split."""
    template = copy.deepcopy(base.template)
    for section, values in setting.fields.items():
        template.setdefault(section, {}).update(values)
    if phase is Phase.CHOOSE and setting.name == "paper":  # checkpoints for gradient_share (every variant)
        template["output"].update(save_interval=CHECKPOINT_INTERVAL, keep_last=10)
    return dataclasses.replace(base, template=template, eval_data=paths[PHASE_SPLIT[phase]])


def final_eval_kd(cell_dir: Path) -> float | None:
    """The last held-out eval/kd (the run's divergence to the teacher on the val split) in the cell's history."""
    hist = cell_dir / "history.jsonl"
    if not hist.is_file():
        return None
    last = None
    for line in hist.read_text().splitlines():
        row = json.loads(line)
        if "eval/kd" in row:
            last = float(row["eval/kd"])
    return last


def run(phase: Phase, names: list[str], methods: list[Method], out: Path, seeds: tuple[int, ...] | None,
        home: Path | None = None, only: list[Variant] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or continue) the phase's cells one at a time; returns {setting: {loss-variant: [cell rows]}}."""
    spec = GridSpec(embedded=True, out=str(out), embedded_dir=str(home or out / "embedded"), seeds=[1])
    t0 = time.perf_counter()
    base = _embedded_setup(spec, out / "shared", quiet=True)
    embedded = Path(spec.embedded_dir) / "data"
    paths = {"val": embedded / "val.jsonl", "test": embedded / "test.jsonl"}
    print(f"setup {time.perf_counter() - t0:.0f} s", flush=True)
    seeds = seeds or PHASE_SEEDS[phase]
    results: dict[str, Any] = {}
    for name in names:
        setting = SETTINGS[name]
        setup = setting_setup(base, setting, phase, paths)
        where = out / phase.value / name
        for cell in cells_for(setting, methods, seeds, only):
            t1 = time.perf_counter()
            row = run_cell(cell, setup, where, quiet=True)
            kd = final_eval_kd(Path(row.cell_dir))
            print(f"{phase.value} {name} {cell.name}: {row.status.value}, ROUGE-L {row.rougeL}, eval/kd {kd}, "
                  f"{time.perf_counter() - t1:.0f} s", flush=True)  # fmt: skip
            entry = {"seed": cell.seed, "status": row.status.value, "rougeL": row.rougeL, "eval_kd": kd,
                     "seconds": row.seconds, "error": row.error}  # fmt: skip
            results.setdefault(name, {}).setdefault(f"{cell.loss.value}-{cell.variant.value}", []).append(entry)
    return results


def collect(out: Path, phase: Phase) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every finished cell of the phase on disk: {setting: {loss-variant: [{seed, rougeL, eval_kd}]}}."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for res in sorted((out / phase.value).glob("*/cells/*/eval_sampled/results.json")):
        cell_dir = res.parent.parent
        cell = Cell.parse(cell_dir.name)
        setting = cell_dir.parent.parent.name
        if cell is None or setting not in SETTINGS:
            continue
        rouge = json.loads(res.read_text())["rougeL"]["mean"]
        found.setdefault(setting, {}).setdefault(f"{cell.loss.value}-{cell.variant.value}", []).append(
            {"seed": cell.seed, "rougeL": rouge, "eval_kd": final_eval_kd(cell_dir)}
        )
    return found


def _fmt(values: list[float]) -> str:
    mean, std = mean_std(values)
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def table(found: dict[str, dict[str, list[dict[str, Any]]]], loss: str) -> tuple[str, list[dict[str, Any]]]:
    """Markdown rows: setting, variant, ROUGE-L mean ± std over seeds, delta vs its base, the 2-std mark, eval/kd."""
    lines = ["| setting | variant | seeds | ROUGE-L | Δ vs base | > 2 std | held-out RKL (val) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = []
    for name, setting in SETTINGS.items():
        cells = found.get(name, {})
        base = found.get(setting.base_setting(), {}).get(f"{loss}-base", [])
        base_r = [c["rougeL"] for c in base]
        for variant in setting.variants:
            got = cells.get(f"{loss}-{variant.value}", [])
            if not got:
                continue
            r = [c["rougeL"] for c in got]
            kd = [c["eval_kd"] for c in got if c["eval_kd"] is not None]
            delta = None if variant is Variant.BASE or not base_r else mean_std(r)[0] - mean_std(base_r)[0]
            mark = exceeds_2std(base_r, r) if delta is not None else None
            rows.append({"setting": name, "variant": variant.value, "seeds": [c["seed"] for c in got],
                         "rougeL": mean_std(r), "delta": delta, "exceeds_2std": mark, "eval_kd": mean_std(kd)})  # fmt: skip
            d = "" if delta is None else f"{delta:+.2f}"
            m = "" if mark is None else ("**yes**" if mark and delta > 0 else "yes (worse)" if mark else "no")
            lines.append(f"| {name} | {variant.value} | {len(r)} | {_fmt(r)} | {d} | {m} | {_fmt(kd)} |")
    return "\n".join(lines), rows


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of ROUGE-L (mean ± std over seeds) per setting and variant, and the held-out RKL beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['setting']}\n{r['variant']}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) + 4), 4.2))
    colors = ["tab:grey" if r["variant"] == "base" else "tab:blue" for r in rows]
    for ax, key, name in (
        (a, "rougeL", "ROUGE-L (sampled, x100)"),
        (b, "eval_kd", "held-out RKL to the teacher (val)"),
    ):
        means = [r[key][0] or 0.0 for r in rows]
        stds = [r[key][1] or 0.0 for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel(name)
    base = [r for r in rows if r["variant"] == "base"]
    if base:
        a.axhline(base[0]["rougeL"][0], color="grey", lw=0.8, ls="--")
    a.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", type=Phase, required=True, choices=list(Phase))
    p.add_argument("--settings", nargs="+", default=["paper"], choices=list(SETTINGS))
    p.add_argument("--losses", nargs="+", type=Method, default=[Method("rkl")])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the phase's (choose 1 2, report 4 5 6)")
    p.add_argument("--variants", nargs="+", type=Variant, default=None, help="only these of each setting's variants")
    p.add_argument("--out", required=True)
    p.add_argument("--embedded-dir", default=None, help="the shared teacher data and SFT init (default <out>/embedded)")
    p.add_argument("--table-only", action="store_true", help="only print the tables of the cells on disk")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    home = Path(args.embedded_dir).resolve() if args.embedded_dir else None
    if not args.table_only:
        run(args.phase, args.settings, args.losses, out, tuple(args.seeds) if args.seeds else None, home, args.variants)
    found = collect(out, args.phase)
    report: dict[str, Any] = {}
    for loss in dict.fromkeys(m.value for m in args.losses):
        md, rows = table(found, loss)
        print(f"\n{args.phase.value} ({PHASE_SPLIT[args.phase]} split), {loss}:\n{md}")
        report[loss] = rows
        if rows:
            chart(
                rows,
                out / f"{args.phase.value}_{loss}.png",
                f"{loss}, {args.phase.value} phase ({PHASE_SPLIT[args.phase]} split), mean ± std over training seeds",
            )
    (out / f"{args.phase.value}.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
