"""What an experiment grid runs: its cells (loss x variant x seed), their run configs, and the grid's options,
from defaults, a YAML grid file and the command line (last wins); every option is a GridSpec field.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adakd_ds.config.schema import Mode
from adakd_ds.experiments.grid.methods import Method, method_fields


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


@dataclass(frozen=True)
class Cell:
    loss: Method  # a divergence, or gkd / distillm (experiments/grid/methods.py)
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
    embedded: bool = _opt(False, "the testbed: the quickstart's offline data and teacher")
    embedded_dir: str | None = _opt(None, "where the embedded teacher and init live (default <out>/embedded)")
    fast: bool = _opt(False, "the quickstart's FAST plan sizes")
    base_config: str | None = _opt(None, "a run-config YAML (mode: distill) for your dataset and model pair")
    eval_data: str | None = _opt(None, "evaluation file (default: the embedded test split, or data.eval_source)")
    greedy: bool = _opt(False, "one greedy pass instead of sampling over --eval-seeds")
    eval_seeds: list[int] | None = _opt(None, "sampling seeds of the evaluation", **_SEEDS)
    max_new_tokens: int | None = _opt(None, "generation length (default 32 embedded, else 256)", **_INT)
    max_prompt_len: int | None = _opt(None, "prompt cut (default: the run config's)", **_INT)
    eval_teacher: bool = _opt(False, "also score each cell's KD divergences to the teacher")
    retrain_teacher: bool = _opt(False, "embedded: train the teacher (cached in the embedded dir), not the shipped one")
    teacher_steps: int | None = _opt(None, "embedded, with --retrain-teacher: teacher SFT steps", **_INT)
    student_init_steps: int | None = _opt(None, "embedded: steps of the students' shared SFT init", **_INT)
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
    embedded_only = (spec.teacher_steps, spec.student_init_steps, spec.retrain_teacher, spec.fast, spec.embedded_dir)
    if spec.teacher_steps and not spec.retrain_teacher:
        raise GridError("--teacher-steps only applies with --retrain-teacher (the shipped teacher is already trained)")
    if not spec.embedded and any(embedded_only):
        raise GridError(
            "--retrain-teacher, --teacher-steps, --student-init-steps, --fast and --embedded-dir only "
            "apply with --embedded"
        )
    if not spec.seeds or not spec.losses or not spec.variants or min(spec.seeds + (spec.eval_seeds or [0])) < 0:
        raise GridError("losses, variants and seeds must each name at least one value, and seeds must be >= 0")
    try:
        spec.cells()  # checks the --also blocks
    except argparse.ArgumentTypeError as exc:
        raise GridError(f"also: {exc}") from None
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)  # given only
    p.add_argument("--grid", default=None, help="a YAML file with any of the options below (as keys)")
    for key, opt in OPTIONS.items():
        p.add_argument("--" + key.replace("_", "-"), **opt)
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    return p
