"""The experiment runner: base losses x variants x seeds, each cell trained through the real launcher and evaluated.

Each cell (loss, variant, seed) is an ordinary launch/distill.py run (``pipeline.train``), then launch/evaluate.py
(``pipeline.evaluate``): a grid measures what a user's own runs would. Stages skip work already on disk, so rerunning
continues an interrupted grid; a failed cell is reported and the grid goes on (unless --fail-fast). The tables are
rebuilt from every results.json in <out>/cells/<loss>-<variant>-s<seed>, earlier invocations' cells included; each
cell has its own tensorboard/, so ``tensorboard --logdir <out>/cells`` shows one run per cell. The cells and options
are in grid_spec.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adakd_ds.config.load import ConfigError, config_to_dict, load_config
from adakd_ds.config.schema import Mode
from adakd_ds.experiments.grid.methods import Method
from adakd_ds.experiments.grid.report import (
    CellResult,
    ReferenceRow,
    Status,
    cell_result,
    eval_note,
    expected_eval,
)
from adakd_ds.experiments.grid.reports import write_reports
from adakd_ds.experiments.grid.spec import (  # noqa: F401 - re-exported: the grid's public names live here too
    VARIANT_LABELS,
    VARIANT_LOSS,
    Cell,
    GridError,
    GridSpec,
    Variant,
    build_parser,
    build_spec,
    cell_config,
)
from adakd_ds.experiments.seed_stats import mean_std
from adakd_ds.experiments.testbed import pipeline

EMBEDDED_EVAL_INTERVAL = 25  # steps between held-out evaluations of an embedded cell


class StaleError(RuntimeError):
    """Results on disk that were made with other settings than the ones asked for now."""


@dataclass
class Setup:
    """What every cell shares: the run-config template, the eval file, the ranks and pipeline.evaluate's settings."""

    template: dict[str, Any]
    eval_data: Path
    nproc: int  # training ranks
    eval_kwargs: dict[str, Any]  # pipeline.evaluate's nproc, greedy, seeds, max_new_tokens, max_prompt_len, teacher
    heldout: Path | None = None  # the held-out file of the distillm rows (when the template names none)
    # reference rows (embedded only): a name -> finished models, or run configs to train first (one per seed)
    references: dict[str, list[Path | dict[str, Any]]] = dataclasses.field(default_factory=dict)
    title: str | None = None  # the chart's: what was measured on what

    def eval_dir(self, cell_dir: Path) -> Path:
        """Greedy and sampled results live apart, so switching --greedy never reuses the other's numbers."""
        return cell_dir / ("eval_greedy" if self.eval_kwargs["greedy"] else "eval_sampled")

    def row(self, cell: Cell, cell_dir: Path, results: dict[str, Any], seconds: float) -> CellResult:
        expected = expected_eval(self.eval_kwargs, self.eval_data)
        key = (cell.loss.value, cell.variant.value, cell.seed)
        return cell_result(*key, cell_dir, results, expected, seconds, self.eval_dir(cell_dir))


def _eval_kwargs(spec: GridSpec, seeds: Any, new_tokens: int, prompt_len: int, teacher: Any, nproc: int) -> dict:
    """The evaluation settings: the grid's options where given, else the setup's defaults."""
    return {"nproc": nproc, "greedy": spec.greedy, "seeds": tuple(spec.eval_seeds or seeds),
            "max_new_tokens": spec.max_new_tokens or new_tokens, "max_prompt_len": spec.max_prompt_len or prompt_len,
            "teacher": Path(teacher) if spec.eval_teacher else None}  # fmt: skip


def _first_diff(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):  # only called on values that differ
        key = next(k for k in [*old, *new] if old.get(k) != new.get(k))
        return _first_diff(old.get(key), new.get(key), f"{path}{key}.")
    return f"{path.rstrip('.')}: {old!r} then, {new!r} now"


def train_checked(cfg: dict[str, Any], nproc: int, name: str, quiet: bool, done: bool = False) -> Path:
    """pipeline.train, but a finished run whose saved config differs from ``cfg`` is an error, not a silent reuse.
    ``done``: the run's results are already on disk, so only the check runs (its export may even be deleted)."""
    out = Path(cfg["output"]["dir"])
    saved = out.parent / f"{out.name}.yaml"
    if (done or (out / "export" / "model.safetensors").is_file()) and saved.is_file():
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        if old != cfg:
            raise StaleError(f"{name}: {out} was trained with other settings ({_first_diff(old, cfg)}); "
                             "delete it or use another --out")  # fmt: skip
    return out / "export" if done else pipeline.train(cfg, nproc, name, quiet=quiet)


def _embedded_setup(spec: GridSpec, out: Path, quiet: bool) -> Setup:
    """The testbed's data and teacher (shipped, or retrained once into --embedded-dir), shared by every cell; each
    cell is the quickstart's student run with the cell's loss. Every cell also logs the held-out loss (the
    testbed's val split) every EMBEDDED_EVAL_INTERVAL steps, which gives the KL curves."""
    from adakd_ds.experiments.testbed.quickstart import prepare, run_config
    from adakd_ds.experiments.testbed.spec import FAST, FULL, teacher_run_config

    steps = {k: getattr(spec, k) for k in ("teacher_steps", "student_init_steps", "student_steps")}
    plan = dataclasses.replace(FAST if spec.fast else FULL, **{k: v for k, v in steps.items() if v is not None})
    home = Path(spec.embedded_dir).resolve() if spec.embedded_dir else out / "embedded"
    # the plan's global batch whatever the ranks (Plan.micro_batch_for): the quickstart's init and cells
    plan = dataclasses.replace(plan, stage_nproc=spec.nproc or plan.stage_nproc)
    nproc = plan.stage_nproc
    paths = prepare(home, plan, spec.retrain_teacher)
    if spec.retrain_teacher:
        paths["teacher"] = train_checked(teacher_run_config(home, paths, plan), plan.nproc, "teacher SFT", quiet)
    init = run_config(home / "student_init", paths, plan, seed=0, init=True)
    paths["init"] = train_checked(init, nproc, "student SFT init", quiet)  # the quickstart's
    template = run_config(out / "cells", paths, plan, seed=0)
    template["data"]["eval_source"] = str(paths["val"])
    template["train"]["eval_interval"] = EMBEDDED_EVAL_INTERVAL
    eval_data = Path(spec.eval_data).resolve() if spec.eval_data else paths["test"]
    kwargs = _eval_kwargs(spec, plan.eval_seeds, plan.max_new_tokens, plan.max_len // 2, paths["teacher"],
                          spec.nproc or plan.eval_nproc)  # fmt: skip
    sft = []
    for seed in spec.seeds:  # the SFT student of every training seed: the baseline distillation has to beat
        cfg = run_config(out / "references" / f"sft-s{seed}", paths, plan, seed)
        cfg["mode"] = Mode.SFT.value
        sft.append(cfg)
    references: dict[str, list[Path | dict[str, Any]]] = {
        "teacher": [paths["teacher"]], "untrained student": [paths["untrained"]], "SFT student": sft}  # fmt: skip
    decoding = "greedy" if kwargs["greedy"] else f"sampled at T=1 over {len(kwargs['seeds'])} seeds"
    title = (f"Miniature Table 1 on the testbed: {decoding}, {eval_data.name} ({len(plan.tasks)} task families); "
             f"{plan.student_hidden}x{plan.student_layers} students, {plan.student_steps} steps after an SFT init")  # fmt: skip
    return Setup(template, eval_data, nproc, kwargs, heldout=paths["val"], references=references, title=title)


def reference_row(name: str, items: list[Path | dict[str, Any]], setup: Setup, out: Path, quiet: bool) -> ReferenceRow:
    """Train (run configs) and evaluate a reference row; the mean and std are over its models (training seeds), or
    over the evaluation seeds for a single model."""
    results = []
    for k, item in enumerate(items):
        model = train_checked(item, setup.nproc, f"{name} {k + 1}", quiet) if isinstance(item, dict) else item
        where = out / "references" / "eval" / f"{name.replace(' ', '_')}-{k}"
        results.append(pipeline.evaluate(model, setup.eval_data, setup.eval_dir(where), name=f"eval {name}",
                                         quiet=quiet, **setup.eval_kwargs))  # fmt: skip
    if len(results) == 1:
        return ReferenceRow.from_results(name, results[0])
    rouge, em = (mean_std([r[m]["mean"] for r in results]) for m in ("rougeL", "exact_match"))
    return ReferenceRow(name, *rouge, *em, len(results))


_PATH_KEYS = (("model", "teacher"), ("model", "student"), ("model", "student_config"), ("model", "tokenizer"),
              ("data", "source"), ("data", "eval_source"), ("data", "cache_dir"), ("deepspeed", "student"),
              ("deepspeed", "teacher"))  # fmt: skip


def _config_setup(spec: GridSpec) -> Setup:
    """A user's run config (any dataset and model pair). Relative paths that exist from here are made absolute,
    because the stages run from the repository root; hub names and the repo's own ds_configs/ stay as they are."""
    from adakd_ds.eval.evaluate import DEFAULT_SEEDS

    path = str(spec.base_config)
    try:
        cfg = load_config(path)
        if spec.student_steps:
            cfg.train.max_steps = spec.student_steps
        cfg.validate()
    except ValueError as exc:  # a ConfigError names the file already
        raise GridError(str(exc) if isinstance(exc, ConfigError) else f"{path}: {exc}") from None
    if cfg.mode is not Mode.DISTILL:
        raise GridError(f"{path}: 'mode' is {cfg.mode.value}; a loss grid needs mode: distill")
    template = config_to_dict(cfg)
    for section, key in _PATH_KEYS:
        value = template[section][key]
        if value and not os.path.isabs(value) and os.path.exists(value):
            template[section][key] = os.path.abspath(value)
    eval_data = spec.eval_data or cfg.data.eval_source
    if not eval_data or not os.path.isfile(eval_data):
        raise GridError(f"evaluation file not found: {eval_data!r} (give --eval-data, or data.eval_source in {path})")
    kw = _eval_kwargs(spec, DEFAULT_SEEDS, 256, cfg.data.max_prompt_len, template["model"]["teacher"], spec.nproc or 1)
    return Setup(template, Path(eval_data).resolve(), spec.nproc or 1, kw)


def run_cell(cell: Cell, setup: Setup, out: Path, quiet: bool) -> CellResult:
    """Train and evaluate one cell; one whose results.json exists runs neither stage again."""
    cell_dir, t0 = out / "cells" / cell.name, time.perf_counter()
    results_file = setup.eval_dir(cell_dir) / "results.json"
    done = results_file.is_file()
    try:
        cfg = cell_config(setup.template, cell, out / "cells", setup.heldout)
        model = train_checked(cfg, setup.nproc, f"train {cell.name}", quiet, done)
        results = json.loads(results_file.read_text()) if done else pipeline.evaluate(
            model, setup.eval_data, setup.eval_dir(cell_dir), name=f"eval {cell.name}", quiet=quiet,
            **setup.eval_kwargs)  # fmt: skip
    except (Exception, SystemExit) as exc:  # one cell's failure, whatever it is, must not end the grid
        if not isinstance(exc, pipeline.StageError | StaleError):  # not a stage's own report: keep the traceback
            traceback.print_exc()
        return CellResult(cell.loss.value, cell.variant.value, cell.seed, Status.FAILED,
                          seconds=time.perf_counter() - t0, cell_dir=str(cell_dir), error=str(exc))  # fmt: skip
    return setup.row(cell, cell_dir, results, 0.0 if done else time.perf_counter() - t0)


def collect(out: Path, cells: list[Cell], ran: dict[Cell, CellResult], setup: Setup) -> list[CellResult]:
    """This grid's cells (run now, done earlier, or pending), then finished cells of earlier grids in ``out``."""
    rows = [ran.get(c) or CellResult(c.loss.value, c.variant.value, c.seed, Status.PENDING,
                                     error="not run (stopped by --fail-fast)") for c in cells]  # fmt: skip
    found = {Cell.parse(p.name) for p in (out / "cells").glob("*/") if p.is_dir()} - {None, *cells}
    for cell in sorted(found, key=lambda c: (list(Method).index(c.loss), list(Variant).index(c.variant), c.seed)):
        cell_dir = out / "cells" / cell.name
        results = setup.eval_dir(cell_dir) / "results.json"
        if results.is_file():
            rows.append(setup.row(cell, cell_dir, json.loads(results.read_text()), 0.0))
    return rows


def run_grid(spec: GridSpec) -> int:
    """Run (or continue) the grid, write the reports, print the table; 0 when every cell of the grid is done."""
    out, cells, quiet, t0 = Path(spec.out).resolve(), spec.cells(), not spec.verbose, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    setup = _embedded_setup(spec, out, quiet) if spec.embedded else _config_setup(spec)
    references = [reference_row(n, items, setup, out, quiet) for n, items in setup.references.items()]
    print(f"grid: {len(cells)} cells, {setup.nproc} rank(s) each, setup {time.perf_counter() - t0:.0f} s")
    ran: dict[Cell, CellResult] = {}
    for i, cell in enumerate(cells, 1):
        print(f"== cell {i}/{len(cells)} {cell.name}", flush=True)
        row = ran[cell] = run_cell(cell, setup, out, quiet)
        if row.status is Status.DONE:
            how = f"{row.seconds:.0f} s" if row.seconds else "done earlier"
            print(f"   {how}: ROUGE-L {row.rougeL:.2f}, exact match {row.exact_match:.2f}", flush=True)
        else:
            print(f"   {row.status.value.upper()}: {row.error}", flush=True)
            if spec.fail_fast:
                print("--fail-fast: the grid stops here", flush=True)
                break
    rows = collect(out, cells, ran, setup)
    losses = list(dict.fromkeys([c.loss.value for c in cells] + [r.loss for r in rows]))
    variants = [(v.value, VARIANT_LABELS[v]) for v in Variant if any(r.variant == v.value for r in rows)]
    markdown = write_reports(out, rows, losses, variants, eval_note(setup.eval_kwargs), references, setup.title)
    print("\n" + markdown)
    print(f"results: {out}/results.md, results.csv, results_aggregate.csv, results.png\n"
          f"TensorBoard, one run per cell: tensorboard --logdir {out}/cells")  # fmt: skip
    bad = [r for r in rows[: len(cells)] if r.status is not Status.DONE]
    print(f"grid finished in {time.perf_counter() - t0:.0f} s; {len(cells) - len(bad)}/{len(cells)} cells done")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    getattr(sys.stdout, "reconfigure", lambda **_: None)(line_buffering=True)  # progress shows at once in a log too
    args = vars(build_parser().parse_args(argv))
    grid_file, dry_run = args.pop("grid", None), args.pop("dry_run", False)
    try:
        spec = build_spec(grid_file, args)
        if dry_run:
            print("\n".join(c.name for c in spec.cells()))
            return 0
        return run_grid(spec)
    except (GridError, StaleError, pipeline.StageError) as exc:
        print(f"experiment: {exc}", file=sys.stderr)
        return 2
