"""The offline quickstart on the testbed: data -> teacher (shipped) -> students (SFT, KD, KD+AdaKD) x seeds -> table.

Nothing is downloaded and nothing outside the output folder and the package is read. Every student starts from
the same untrained initialisation of its seed and trains the same steps on the same distillation split, with labels
(SFT), with pure reverse KL (``kd_ratio`` 1.0, the paper's setting), or with reverse KL + AdaKD, so the rows differ
only in the loss. The table gives the mean and std over training seeds and says whether KD beats SFT by more than
2 std, and whether the teacher is at least twice the SFT student on every family.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from adakd_ds.experiments.testbed.pipeline import evaluate, evaluated, train, trained
from adakd_ds.experiments.testbed.reproducible import environment, overridden
from adakd_ds.experiments.testbed.spec import (
    FAST,
    FULL,
    Plan,
    ShippedTeacherError,
    ship,
    shipped_teacher,
    teacher_run_config,
    train_tokenizer_for,
    write_data,
    write_models,
)
from adakd_ds.experiments.testbed.stage_clock import StageClock
from adakd_ds.experiments.testbed.task_metrics import ModelScores, model_scores, sanity_lines, scores_table

T = TypeVar("T")

# the student rows: the run-config fields each sets on top of student_config()
STUDENT_ROWS: dict[str, dict[str, Any]] = {
    "student SFT": {"mode": "sft", "loss": {"divergence": "rkl", "adakd": False}},
    "student KD (rkl)": {"mode": "distill", "loss": {"divergence": "rkl", "adakd": False}},
    "student KD (rkl) + AdaKD": {"mode": "distill", "loss": {"divergence": "rkl", "adakd": True}},
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def prepare(out: Path, plan: Plan, retrain_teacher: bool) -> dict[str, Path]:
    """Data, tokenizer (the shipped teacher's, or a fresh one to retrain with), model configs, untrained student."""
    paths = write_data(out, plan)
    if retrain_teacher:
        paths["tokenizer"] = train_tokenizer_for(out, paths["teacher_train"], plan)
    else:
        paths["tokenizer"] = paths["teacher"] = shipped_teacher(plan)
    paths.update(write_models(out, plan, paths["tokenizer"]))
    return paths


def run_config(out_dir: Path, paths: dict[str, Path], plan: Plan, seed: int, init: bool = False) -> dict[str, Any]:
    """A student row / grid cell in the YAML layout, on the distillation split: from the shared SFT init
    (``paths["init"]``), or with ``init`` the SFT init itself (from the untrained student config); the caller sets
    mode and loss."""
    start = {"student_config": str(paths["student_config"])} if init else {"student": str(paths["init"])}
    steps = plan.student_init_steps if init else plan.student_steps
    return {
        "mode": "sft" if init else "distill",
        "model": {"tokenizer": str(paths["tokenizer"]), **start, "teacher": str(paths["teacher"])},
        "data": {"source": str(paths["train"]), "max_prompt_len": plan.max_len // 2, "max_len": plan.max_len},
        "loss": {"divergence": "rkl", "adakd": False, "kd_ratio": plan.kd_ratio},
        "train": {
            "lr": plan.student_lr,
            "max_steps": steps,
            "micro_batch": plan.micro_batch_for(plan.stage_nproc),
            "warmup_ratio": 0.05,
            "seed": seed,
        },  # fmt: skip
        "output": {"dir": str(out_dir), "log_interval": 10, "save_interval": 0, "keep_last": 1},
    }


class Stages:
    """Numbers the stages in the output, so the user sees where the minutes go; a stage found done says so, and
    keeps the time of the run that did it (StageClock). Stages may run in several threads (the lanes): a training
    stage in a lane logs to its file only, and says when it ends."""

    def __init__(self, nproc: int, quiet: bool, clock: StageClock, lanes: int = 1) -> None:
        self.nproc, self.quiet, self.clock, self.lanes, self.n = nproc, quiet, clock, lanes, 0
        self._lock = threading.Lock()

    def step(self, name: str, detail: str, done: bool, work: Callable[[], T]) -> T:
        """Print the stage's header; run ``work`` timed, or untimed when its result is already on disk."""
        with self._lock:
            self.n += 1
            n = self.n
            note = f": {self.clock.skip(name)}" if done else ""
            print(f"\n== stage {n}: {name} ({detail}){note}", flush=True)
        if done:
            return work()  # it only finds the result on disk
        with self.clock.measure(name):
            result = work()
        if self.lanes > 1:
            print(f"== stage {n} done: {name}, {self.clock.times[name].describe()}", flush=True)
        return result

    def train(self, name: str, cfg: dict[str, Any], nproc: int | None = None) -> Path:
        nproc = nproc or self.nproc
        detail = f"{cfg['train']['max_steps']} steps, {nproc} rank{'s' if nproc > 1 else ''}"
        quiet = self.quiet or self.lanes > 1  # two progress bars at once would garble each other
        return self.step(name, detail, trained(cfg), lambda: train(cfg, nproc, name, quiet=quiet))

    def evaluate(self, name: str, model: Path, data: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        detail = "greedy" if kwargs.get("greedy") else f"sampled, seeds {' '.join(map(str, kwargs['seeds']))}"
        return self.step(name, detail, evaluated(out), lambda: evaluate(model, data, out, name=name, **kwargs))


def train_teacher(out: Path, paths: dict[str, Path], plan: Plan, stage: Stages, ship_it: bool) -> Path:
    """--retrain-teacher: the teacher's SFT run (at the ranks its micro-batch is given for), cached in ``out``
    under its settings' key; --ship-teacher then copies it into the package."""
    export = stage.train("teacher SFT", teacher_run_config(out, paths, plan), nproc=plan.nproc)
    if ship_it:
        print(f"quickstart: shipped the teacher to {ship(export, plan)}", flush=True)
    return export


def train_init(out: Path, paths: dict[str, Path], plan: Plan, stage: Stages) -> Path:
    """The SFT initialisation every student row continues from."""
    return stage.train("student SFT init", run_config(out / "student_init", paths, plan, seed=0, init=True))


def student_runs(out: Path, paths: dict[str, Path], plan: Plan) -> list[tuple[str, int, dict[str, Any]]]:
    """Every student row x training seed, in the table's order: (row, seed, run config)."""
    runs = []
    for name, change in STUDENT_ROWS.items():
        for seed in plan.train_seeds:
            cfg = run_config(out / "students" / f"{slug(name)}-s{seed}", paths, plan, seed)
            cfg["mode"] = change["mode"]
            cfg["loss"].update(change["loss"])
            runs.append((name, seed, cfg))
    return runs


def evaluate_one(name: str, k: int, n: int, model: Path, paths: dict[str, Path], plan: Plan, out: Path,
                 stage: Stages) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """Greedy and sampled evaluation of one model, the ``k``-th of its row's ``n`` (KL to the teacher from the
    sampled pass's loss); returns the greedy results and the sampled evaluation's folder."""
    common = {"nproc": plan.eval_nproc, "max_new_tokens": plan.max_new_tokens, "max_prompt_len": plan.max_len // 2}
    tag, label = (f"{slug(name)}-{k}", f"{name} #{k + 1}") if n > 1 else (slug(name), name)
    greedy = stage.evaluate(f"eval {label} greedy", model, paths["test"], out / "eval" / f"{tag}_greedy",
                            greedy=True, **common)  # fmt: skip
    sampled = out / "eval" / f"{tag}_sampled"
    stage.evaluate(f"eval {label} sampled", model, paths["test"], sampled, seeds=plan.eval_seeds,
                   teacher=paths["teacher"], **common)  # fmt: skip
    return greedy, sampled


def run(
    out: Path, plan: Plan, quiet: bool = False, retrain_teacher: bool = False, ship_teacher: bool = False
) -> tuple[list[ModelScores], StageClock]:
    """Every stage (each skipped when its result is on disk); the table's rows and the stages' times.

    Training stages run in ``plan.lanes`` threads, each a subprocess; this thread evaluates every model in-process
    as soon as it is trained, while the lanes train the next ones."""
    clock = StageClock(out / "stage_times.json")
    stage = Stages(plan.stage_nproc, quiet, clock, plan.lanes)
    prepared = (out / "student_untrained" / "model.safetensors").is_file()  # write_models() writes it last
    source = "a fresh tokenizer" if retrain_teacher else "the shipped teacher's tokenizer"
    paths = stage.step("prepare", f"data, {source}, model configs", prepared,
                       lambda: prepare(out, plan, retrain_teacher))  # fmt: skip
    if retrain_teacher:
        paths["teacher"] = train_teacher(out, paths, plan, stage, ship_teacher)
    results: dict[str, list[tuple[dict[str, Any], Path]]] = {}
    lanes = ThreadPoolExecutor(max_workers=plan.lanes, thread_name_prefix="lane")
    try:
        init = lanes.submit(train_init, out, paths, plan, stage)
        for name, key in (("teacher", "teacher"), ("student untrained", "untrained")):  # while the init trains
            results[name] = [evaluate_one(name, 0, 1, paths[key], paths, plan, out, stage)]
        paths["init"] = init.result()
        runs = student_runs(out, paths, plan)
        # the KD runs first (the teacher's forward makes them twice as long): the short SFT runs end the lanes
        order = sorted(range(len(runs)), key=lambda i: runs[i][2]["mode"] == "sft")
        futures = {lanes.submit(stage.train, f"{runs[i][0]} seed {runs[i][1]}", runs[i][2]): i for i in order}
        done: dict[int, tuple[dict[str, Any], Path]] = {}
        for future in as_completed(futures):
            i = futures[future]
            name, seed = runs[i][:2]
            done[i] = evaluate_one(name, plan.train_seeds.index(seed), len(plan.train_seeds), future.result(),
                                   paths, plan, out, stage)  # fmt: skip
    finally:  # a failed stage: the stages not started yet never start; a running one finishes (or fails) first
        lanes.shutdown(wait=True, cancel_futures=True)
    for i, (name, _, _) in enumerate(runs):
        results.setdefault(name, []).append(done[i])
    rows = [model_scores(name, [g for g, _ in r], [d for _, d in r], paths["test"]) for name, r in results.items()]
    total, _ = clock.total()
    summary = {"plan": dataclasses.asdict(plan), "rows": [dataclasses.asdict(r) for r in rows],
               "seconds": total.wall_s if total else None, "teacher": str(paths["teacher"])}  # fmt: skip
    summary["environment"] = environment()  # what a rerun elsewhere must match to reproduce the table
    (out / "quickstart_results.json").write_text(json.dumps({**summary, "times": clock.summary()}, indent=2))
    return rows, clock


def time_report(clock: StageClock, this_run_s: float) -> str:
    """The closing line: the first-run times of all stages, and what this invocation itself did."""
    total, missing = clock.total()
    spent = f"quickstart: {total.describe()} over its stages" if total else "quickstart: no stage time recorded"
    if missing:
        spent += f" (no time recorded for: {', '.join(missing)})"
    if clock.skipped:
        spent += (f"; {len(clock.skipped)} of {len(clock.order)} stages were done earlier and skipped, their times "
                  f"are those of the run that did them; this rerun took {this_run_s:.0f} s")  # fmt: skip
    return spent


def parse_plan(argv: list[str] | None = None) -> tuple[argparse.Namespace, Plan]:
    """The command line and the Plan it asks for; a bad combination exits 2 with one line (argparse's)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="quickstart_out", help="everything is written here; rerun to continue")
    ap.add_argument("--fast", action="store_true", help="the reduced CI version (one training seed, one sampling seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seeds of every student row (default 1 2 3; with --fast 1)")  # fmt: skip
    ap.add_argument("--nproc", type=int, default=None,
                    help="ranks per student stage (default 1; the global batch stays the same)")  # fmt: skip
    ap.add_argument("--lanes", type=int, default=None,
                    help="student stages side by side (default 2, fewer if cores < 2 x --nproc)")  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="stage output to log files only")
    ap.add_argument("--retrain-teacher", action="store_true",
                    help="train the teacher here (cached in --out) instead of using the shipped one")  # fmt: skip
    ap.add_argument("--ship-teacher", action="store_true",
                    help="with --retrain-teacher: copy the trained teacher into the package (maintainers)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.ship_teacher and not args.retrain_teacher:
        ap.error("--ship-teacher needs --retrain-teacher")
    plan = FAST if args.fast else FULL
    nproc = plan.stage_nproc if args.nproc is None else args.nproc
    # by default no more ranks at once than cores: one 2-rank lane on 2 cores
    cores_lanes = max(1, min(plan.lanes, (os.cpu_count() or 1) // max(nproc, 1)))
    plan = dataclasses.replace(plan, stage_nproc=nproc, lanes=cores_lanes if args.lanes is None else args.lanes)
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 1:
            ap.error(f"--seeds {' '.join(map(str, args.seeds))}: give distinct seeds, each at least 1")
        plan = dataclasses.replace(plan, train_seeds=tuple(args.seeds))
    for flag, value in (("--nproc", plan.stage_nproc), ("--lanes", plan.lanes)):
        if value < 1:
            ap.error(f"{flag} {value}: must be at least 1")
    try:
        plan.micro_batch_for(plan.stage_nproc)
    except ValueError as exc:
        ap.error(str(exc))
    return args, plan


def main(argv: list[str] | None = None) -> int:
    args, plan = parse_plan(argv)
    for change in overridden(os.environ):
        print(f"quickstart: {change} for every stage, so that the results are the same run to run", flush=True)
    t0 = time.perf_counter()
    out = Path(args.out).resolve()  # stages run from the repo root
    try:
        rows, clock = run(out, plan, args.quiet, args.retrain_teacher, args.ship_teacher)
    except ShippedTeacherError as exc:
        print(f"quickstart: {exc}", flush=True)
        return 2
    print("\n" + scores_table(rows))
    print("\n" + "\n".join(sanity_lines(rows)))
    print(f"\n{time_report(clock, time.perf_counter() - t0)}; results in {args.out}/quickstart_results.json")
    return 0
