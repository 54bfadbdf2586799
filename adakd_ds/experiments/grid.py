"""The experiment runner: base losses x variants x seeds, each cell trained through the real launcher and evaluated.

Each cell (loss, variant, seed) is an ordinary launch/distill.py run (``pipeline.train``), then launch/evaluate.py
(``pipeline.evaluate``): a grid measures what a user's own runs would. Stages skip work already on disk, so rerunning
continues an interrupted grid; a failed cell is reported and the grid goes on (unless --fail-fast). The tables are
rebuilt from every results.json in <out>/cells/<loss>-<variant>-s<seed>, earlier invocations' cells included; each
cell has its own tensorboard/, so ``tensorboard --logdir <out>/cells`` shows one run per cell.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import itertools
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adakd_ds.config import ConfigError, Mode, config_to_dict, load_config
from adakd_ds.experiments import pipeline
from adakd_ds.experiments.methods import Method, method_fields
from adakd_ds.experiments.report import CellResult, Status, cell_result, eval_note, expected_eval, write_reports


class Variant(str, enum.Enum):
    BASE = "base"  # the plain divergence
    ADAKD = "adakd"  # + LATF + IDTS (the method)
    LATF = "latf"  # LATF only: adaptive token selection at a fixed temperature
    IDTS = "idts"  # IDTS only: every token, per-token temperature
    FLIPPED = "flipped"  # full AdaKD with inverse_sign=false: hard tokens get a HIGH temperature (the paper's ablation)


# The loss-section fields each variant sets; every other field comes from the base run config unchanged.
VARIANT_LOSS: dict[Variant, dict[str, bool]] = {
    Variant.BASE: {"adakd": False},
    Variant.ADAKD: {"adakd": True, "latf": True, "idts": True, "inverse_sign": True},
    Variant.LATF: {"adakd": True, "latf": True, "idts": False},
    Variant.IDTS: {"adakd": True, "latf": False, "idts": True, "inverse_sign": True},
    Variant.FLIPPED: {"adakd": True, "latf": True, "idts": True, "inverse_sign": False},
}
VARIANT_LABELS: dict[Variant, str] = {Variant.BASE: "base", Variant.ADAKD: "+AdaKD", Variant.LATF: "+LATF only",
                                     Variant.IDTS: "+IDTS only", Variant.FLIPPED: "+AdaKD, flipped sign"}  # fmt: skip


class GridError(ValueError):
    """A grid file or option that cannot run; the message names the key or file."""


class StaleError(RuntimeError):
    """Results on disk that were made with other settings than the ones asked for now."""


@dataclass(frozen=True)
class Cell:
    loss: Method  # a divergence, or gkd / distillm (experiments/methods.py)
    variant: Variant
    seed: int

    @property
    def name(self) -> str:
        return f"{self.loss.value}-{self.variant.value}-s{self.seed}"

    @classmethod
    def parse(cls, name: str) -> Cell | None:
        """The cell of a folder name, or None for anything else (by enum lookup, never by substring)."""
        parts = name.split("-")
        if len(parts) != 3 or not parts[2].startswith("s") or not parts[2][1:].isdigit():
            return None
        try:
            return cls(Method(parts[0]), Variant(parts[1]), int(parts[2][1:]))
        except ValueError:
            return None


def cell_config(template: dict[str, Any], cell: Cell, cells_dir: Path, heldout: Path | None = None) -> dict[str, Any]:
    """The cell's run config: the template with the method's fields, the variant's loss fields, the seed and the dir."""
    cfg = copy.deepcopy(template)
    cfg["mode"] = Mode.DISTILL.value
    for section, values in method_fields(cell.loss, template, heldout).items():
        cfg.setdefault(section, {}).update(values)
    cfg.setdefault("loss", {}).update(VARIANT_LOSS[cell.variant])
    cfg.setdefault("train", {})["seed"] = cell.seed
    # tensorboard on: the grid promises one TensorBoard run per cell
    cfg.setdefault("output", {}).update(dir=str(cells_dir / cell.name), tensorboard=True)
    return cfg


def _choice(kind: type[enum.Enum]) -> Any:
    """An argparse type for an enum, shared by the command line and the grid file."""

    def convert(value: Any) -> Any:
        try:
            return value if isinstance(value, kind) else kind(str(value).strip().lower())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} (choose from {', '.join(m.value for m in kind)})") from None

    return convert


def _parse_block(block: str) -> tuple[list[Method], list[Variant]]:
    losses, sep, variants = block.partition(":")
    if not sep or not losses.strip() or not variants.strip():
        raise argparse.ArgumentTypeError(f"{block!r} must look like LOSS[,LOSS]:VARIANT[,VARIANT], e.g. rkl:flipped")
    return [_choice(Method)(x) for x in losses.split(",")], [_choice(Variant)(x) for x in variants.split(",")]


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A GridSpec field that is also its command-line option and grid-file key (metadata = argparse kwargs)."""
    if isinstance(default, bool):
        argparse_kwargs["action"] = "store_true"
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **argparse_kwargs})
    return field(default=default, metadata={"help": help, **argparse_kwargs})


_INT: dict[str, Any] = {"type": int}
_SEEDS: dict[str, Any] = {"nargs": "+", "type": int}


@dataclass
class GridSpec:
    """What to run: defaults, then a --grid YAML file, then the command line (last wins); fields = options."""

    out: str = _opt("experiment_out", "grid output folder; rerun the same command to continue")
    losses: list[Method] = _opt([Method.RKL, Method.FKL], "base losses or methods: " + " ".join(Method),
                                nargs="+", type=_choice(Method))  # fmt: skip
    variants: list[Variant] = _opt([Variant.BASE, Variant.ADAKD], "variants: " + " ".join(Variant), nargs="+",
                                   type=_choice(Variant))  # fmt: skip
    also: list[str] = _opt([], "an extra block LOSS[,LOSS]:VARIANT[,VARIANT] (repeatable)", action="append")
    seeds: list[int] = _opt([1, 2, 3], "training seeds (train.seed of each cell)", **_SEEDS)
    nproc: int | None = _opt(None, "ranks per stage (default: the plan's with --embedded, else 1)", **_INT)
    embedded: bool = _opt(False, "the quickstart's offline data, SFT teacher and student SFT init")
    embedded_dir: str | None = _opt(None, "where the embedded teacher and init live (default <out>/embedded)")
    fast: bool = _opt(False, "the quickstart's FAST plan sizes")
    base_config: str | None = _opt(None, "a run-config YAML (mode: distill) for your dataset and model pair")
    eval_data: str | None = _opt(None, "evaluation file (default: the embedded test split, or data.eval_source)")
    greedy: bool = _opt(False, "one greedy pass instead of sampling over --eval-seeds")
    eval_seeds: list[int] | None = _opt(None, "sampling seeds of the evaluation", **_SEEDS)
    max_new_tokens: int | None = _opt(None, "generation length (default 32 embedded, else 256)", **_INT)
    max_prompt_len: int | None = _opt(None, "prompt cut (default: the run config's)", **_INT)
    eval_teacher: bool = _opt(False, "also score each cell's KD divergences to the teacher")
    teacher_steps: int | None = _opt(None, "embedded: teacher SFT steps", **_INT)
    student_init_steps: int | None = _opt(None, "embedded: student SFT init steps", **_INT)
    student_steps: int | None = _opt(None, "steps of each cell (train.max_steps)", **_INT)
    fail_fast: bool = _opt(False, "stop the grid at the first failed cell")
    verbose: bool = _opt(False, "stream each stage's output (default: only to its log file)")

    def cells(self) -> list[Cell]:
        blocks = [(self.losses, self.variants), *(_parse_block(b) for b in self.also)]
        cells = (Cell(*c) for losses, variants in blocks for c in itertools.product(losses, variants, self.seeds))
        return list(dict.fromkeys(cells))  # first-seen order, no duplicates


OPTIONS: dict[str, dict[str, Any]] = {f.name: dict(f.metadata) for f in dataclasses.fields(GridSpec)}


def _from_yaml(key: str, value: Any, where: str) -> Any:
    opt = OPTIONS[key]
    try:
        if opt.get("action") == "store_true":
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"{value!r} is not true or false")
            return value
        convert = opt.get("type", str)
        if "nargs" in opt or opt.get("action") == "append":
            return [convert(v) for v in (value if isinstance(value, list) else [value])]
        return None if value is None else convert(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise GridError(f"{where}: '{key}': {exc}") from None


def build_spec(grid_file: str | None, cli: dict[str, Any]) -> GridSpec:
    """Defaults < the YAML grid file < the command line; an unknown key is an error naming it."""
    spec = GridSpec()
    if grid_file:
        try:
            data = yaml.safe_load(Path(grid_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise GridError(f"{grid_file}: cannot read the grid file: {exc}") from None
        if not isinstance(data, dict):
            raise GridError(f"{grid_file}: the top level must be a mapping of grid settings")
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in OPTIONS:
                raise GridError(f"{grid_file}: unknown grid key '{raw_key}' (known: {', '.join(OPTIONS)})")
            setattr(spec, key, _from_yaml(key, value, grid_file))
    for key, value in cli.items():
        setattr(spec, key, value)
    if spec.embedded == bool(spec.base_config):
        raise GridError("choose exactly one of --embedded (the quickstart's data and models) and --base-config FILE")
    if not spec.embedded and (spec.teacher_steps or spec.student_init_steps or spec.fast or spec.embedded_dir):
        raise GridError("--teacher-steps, --student-init-steps, --fast and --embedded-dir only apply with --embedded")
    if not spec.seeds or not spec.losses or not spec.variants or min(spec.seeds + (spec.eval_seeds or [0])) < 0:
        raise GridError("losses, variants and seeds must each name at least one value, and seeds must be >= 0")
    try:
        spec.cells()  # checks the --also blocks
    except argparse.ArgumentTypeError as exc:
        raise GridError(f"also: {exc}") from None
    return spec


@dataclass
class Setup:
    """What every cell shares: the run-config template, the eval file, the ranks and pipeline.evaluate's settings."""

    template: dict[str, Any]
    eval_data: Path
    nproc: int  # training ranks
    eval_kwargs: dict[str, Any]  # pipeline.evaluate's nproc, greedy, seeds, max_new_tokens, max_prompt_len, teacher
    heldout: Path | None = None  # the held-out file of the distillm rows (when the template names none)

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


@dataclass
class _CheckedStages:
    """The stage runner that quickstart.train_shared expects, with train_checked's guard against stale models."""

    nproc: int
    quiet: bool

    def train(self, name: str, cfg: dict[str, Any]) -> Path:
        print(f"-- {name} ({cfg['train']['max_steps']} steps; skipped when done)", flush=True)
        return train_checked(cfg, self.nproc, name, self.quiet)


def _embedded_setup(spec: GridSpec, out: Path, quiet: bool) -> Setup:
    """The quickstart's data, tokenizer, SFT teacher and student SFT init (its own code, trained once and shared by
    every cell); each cell is the quickstart's student config with the cell's loss."""
    from adakd_ds.experiments.quickstart import FAST, FULL, prepare, student_config, train_shared

    steps = {k: getattr(spec, k) for k in ("teacher_steps", "student_init_steps", "student_steps")}
    plan = dataclasses.replace(FAST if spec.fast else FULL, **{k: v for k, v in steps.items() if v is not None})
    home = Path(spec.embedded_dir).resolve() if spec.embedded_dir else out / "embedded"
    paths = prepare(home, plan)
    teacher, init = train_shared(home, paths, plan, _CheckedStages(spec.nproc or plan.nproc, quiet))
    template = student_config(out / "cells", paths, plan, init, teacher)
    eval_data = Path(spec.eval_data).resolve() if spec.eval_data else paths["test"]
    kwargs = _eval_kwargs(spec, plan.seeds, 32, plan.max_len // 2, teacher, spec.nproc or plan.eval_nproc)
    return Setup(template, eval_data, spec.nproc or plan.nproc, kwargs, heldout=paths["val"])


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
    markdown = write_reports(out, rows, losses, variants, eval_note(setup.eval_kwargs))
    print("\n" + markdown)
    print(f"results: {out}/results.md, results.csv, results_aggregate.csv, results.png\n"
          f"TensorBoard, one run per cell: tensorboard --logdir {out}/cells")  # fmt: skip
    bad = [r for r in rows[: len(cells)] if r.status is not Status.DONE]
    print(f"grid finished in {time.perf_counter() - t0:.0f} s; {len(cells) - len(bad)}/{len(cells)} cells done")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)  # given only
    p.add_argument("--grid", default=None, help="a YAML file with any of the options below (as keys)")
    for key, opt in OPTIONS.items():
        p.add_argument("--" + key.replace("_", "-"), **opt)
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    return p


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
