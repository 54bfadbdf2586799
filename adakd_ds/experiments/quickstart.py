"""The offline quickstart: embedded data -> tokenizer -> SFT teacher -> students (SFT, rkl, rkl+AdaKD) -> table.

Nothing is downloaded and nothing outside the output folder is read. Students follow the MiniLLM / DistiLLM protocol:
one SFT initialisation, then the same number of further steps with labels (the SFT baseline), with RKL, or with
RKL + AdaKD, so that the rows differ only in the loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from adakd_ds.experiments.pipeline import evaluate, evaluated, train, trained
from adakd_ds.experiments.reproducible import environment, overridden
from adakd_ds.experiments.stage_clock import StageClock
from adakd_ds.experiments.synthetic_tasks import generate_splits, write_jsonl

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """Sizes and step counts; FULL fits 10 minutes on 2 CPU cores, FAST is the CI smoke version."""

    n_train: int = 4000
    n_test: int = 200
    vocab: int = 384
    teacher_hidden: int = 192
    teacher_layers: int = 3
    student_hidden: int = 96
    student_layers: int = 2
    teacher_steps: int = 900
    student_init_steps: int = 150
    student_steps: int = 250
    kd_ratio: float = 0.5  # distilled students also see the labels (torchtune's default); 1.0 is pure KD
    micro_batch: int = 16
    teacher_lr: float = 1.5e-3  # 3e-3 and 6e-3 learned less in the same steps
    student_lr: float = 2e-3
    nproc: int = 2  # ranks per training stage
    eval_nproc: int = 1  # evaluation of these tiny models is fastest in-process
    seeds: tuple[int, ...] = (1, 2, 3)
    max_len: int = 80


FULL = Plan()
FAST = Plan(
    n_train=800, n_test=48, teacher_hidden=96, teacher_layers=2, student_hidden=32, student_layers=1,
    teacher_steps=300, student_init_steps=10, student_steps=10, seeds=(1,),
)  # fmt: skip


def llama_config(vocab: int, hidden: int, layers: int) -> Any:
    """The small Llama shape used for the embedded default (and the step benchmark)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )


def prepare(out: Path, plan: Plan) -> dict[str, Path]:
    """Data splits, the sentencepiece tokenizer and the two model configs (idempotent)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adakd_ds.experiments.tokenizer_train import train_tokenizer

    paths = {name: out / "data" / f"{name}.jsonl" for name in ("train", "val", "test")}
    if not paths["test"].is_file():
        splits = generate_splits(plan.n_train, plan.n_test, plan.n_test, seed=0)
        for name, records in splits.items():
            write_jsonl(records, str(paths[name]))
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer_config.json").is_file():
        train_tokenizer(str(paths["train"]), str(tok_dir), vocab_size=plan.vocab)
    vocab = len(AutoTokenizer.from_pretrained(str(tok_dir)))
    for role, hidden, layers in (
        ("teacher", plan.teacher_hidden, plan.teacher_layers),
        ("student", plan.student_hidden, plan.student_layers),
    ):
        cfg_dir = out / "configs" / role
        if not (cfg_dir / "config.json").is_file():
            llama_config(vocab, hidden, layers).save_pretrained(cfg_dir)
        paths[f"{role}_config"] = cfg_dir
    untrained = out / "student_untrained"
    if not (untrained / "model.safetensors").is_file():
        import torch

        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(llama_config(vocab, plan.student_hidden, plan.student_layers)).save_pretrained(
            untrained
        )
        AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(untrained)
    paths["untrained"] = untrained
    paths["tokenizer"] = tok_dir
    return paths


def run_config(
    out_dir: Path, paths: dict[str, Path], plan: Plan, steps: int, lr: float | None = None, **model: str
) -> dict[str, Any]:
    """A run config (YAML layout) on the embedded data; lr defaults to the plan's student lr."""
    return {
        "mode": "sft",
        "model": {"tokenizer": str(paths["tokenizer"]), **model},
        "data": {"source": str(paths["train"]), "max_prompt_len": plan.max_len // 2, "max_len": plan.max_len},
        "loss": {"divergence": "rkl", "adakd": False},
        "train": {
            "lr": plan.student_lr if lr is None else lr,
            "max_steps": steps,
            "micro_batch": plan.micro_batch,
            "warmup_ratio": 0.05,
            "seed": 0,
        },
        "output": {"dir": str(out_dir), "log_interval": 10, "save_interval": 0, "keep_last": 1},
    }


STUDENT_ROWS = {
    "student SFT": {"mode": "sft", "loss": {"divergence": "rkl", "adakd": False}},
    "student rkl": {"mode": "distill", "loss": {"divergence": "rkl", "adakd": False}},
    "student rkl+AdaKD": {"mode": "distill", "loss": {"divergence": "rkl", "adakd": True}},
}


class _Stages:
    """Numbers the stages in the output, so the user sees where the 10 minutes go; a stage found done says so, and
    keeps the time of the run that did it (StageClock)."""

    def __init__(self, nproc: int, quiet: bool, clock: StageClock) -> None:
        self.nproc, self.quiet, self.n, self.clock = nproc, quiet, 0, clock

    def step(self, name: str, detail: str, done: bool, work: Callable[[], T]) -> T:
        """Print the stage's header; run ``work`` timed, or untimed when its result is already on disk."""
        self.n += 1
        note = f": {self.clock.skip(name)}" if done else ""
        print(f"\n== stage {self.n}: {name} ({detail}){note}", flush=True)
        if done:
            return work()  # it only finds the result on disk
        with self.clock.measure(name):
            return work()

    def train(self, name: str, cfg: dict[str, Any]) -> Path:
        detail = f"{cfg['train']['max_steps']} steps, {self.nproc} ranks"
        return self.step(name, detail, trained(cfg), lambda: train(cfg, self.nproc, name, quiet=self.quiet))

    def evaluate(self, name: str, model: Path, data: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        detail = "greedy" if kwargs.get("greedy") else f"sampled, seeds {' '.join(map(str, kwargs['seeds']))}"
        return self.step(name, detail, evaluated(out), lambda: evaluate(model, data, out, name=name, **kwargs))


def train_shared(out: Path, paths: dict[str, Path], plan: Plan, stage: _Stages) -> tuple[Path, Path]:
    """The SFT teacher and the SFT-initialised student that every student row (or grid cell) starts from."""
    teacher_cfg = run_config(
        out / "teacher", paths, plan, plan.teacher_steps, plan.teacher_lr, student_config=str(paths["teacher_config"])
    )
    teacher = stage.train("teacher SFT", teacher_cfg)
    init_cfg = run_config(
        out / "student_init", paths, plan, plan.student_init_steps, student_config=str(paths["student_config"])
    )
    return teacher, stage.train("student SFT init", init_cfg)


def student_config(out_dir: Path, paths: dict[str, Path], plan: Plan, init: Path, teacher: Path) -> dict[str, Any]:
    """A student row / grid cell: continues from the SFT init for plan.student_steps; the caller sets mode and loss."""
    cfg = run_config(out_dir, paths, plan, plan.student_steps, student=str(init), teacher=str(teacher))
    cfg["loss"]["kd_ratio"] = plan.kd_ratio
    return cfg


def run(out: Path, plan: Plan, quiet: bool = False) -> tuple[list[dict[str, Any]], StageClock]:
    """Every stage (each skipped when its result is on disk); the table's rows and the stages' times."""
    clock = StageClock(out / "stage_times.json")
    stage = _Stages(plan.nproc, quiet, clock)
    prepared = (out / "student_untrained" / "model.safetensors").is_file()  # prepare() writes it last
    paths = stage.step("prepare", "data, tokenizer, model configs", prepared, lambda: prepare(out, plan))
    teacher, init = train_shared(out, paths, plan, stage)
    models = {"teacher": teacher, "student untrained": paths["untrained"]}
    for name, change in STUDENT_ROWS.items():
        cfg = student_config(out / name.replace(" ", "_").replace("+", "_"), paths, plan, init, teacher)
        cfg["mode"] = change["mode"]
        cfg["loss"].update(change["loss"])
        models[name] = stage.train(name, cfg)
    rows = []
    for name, model in models.items():
        slug = name.replace(" ", "_").replace("+", "_")
        common = {"nproc": plan.eval_nproc, "max_new_tokens": 32, "max_prompt_len": plan.max_len // 2}
        greedy = stage.evaluate(
            f"eval {name} greedy", model, paths["test"], out / "eval" / f"{slug}_greedy", greedy=True, **common
        )
        sampled = stage.evaluate(
            f"eval {name} sampled", model, paths["test"], out / "eval" / f"{slug}_sampled", seeds=plan.seeds, **common
        )
        rows.append(
            {
                "model": name,
                "rougeL_greedy": greedy["rougeL"]["mean"],
                "exact_match_greedy": greedy["exact_match"]["mean"],
                "rougeL_sampled": sampled["rougeL"]["mean"],
                "rougeL_sampled_std": sampled["rougeL"].get("std"),
                "exact_match_sampled": sampled["exact_match"]["mean"],
            }
        )
    total, _ = clock.total()
    summary = {"plan": dataclasses.asdict(plan), "rows": rows, "seconds": total.wall_s if total else None}
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


def format_table(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "| model | ROUGE-L (greedy) | exact match (greedy) | ROUGE-L (sampled, T=1) | exact match (sampled) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        std = r["rougeL_sampled_std"]
        sampled = pct(r["rougeL_sampled"]) + (f" ± {std:.2f}" if std else "")
        lines.append(
            f"| {r['model']} | {pct(r['rougeL_greedy'])} | {pct(r['exact_match_greedy'])} | {sampled} | "
            f"{pct(r['exact_match_sampled'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="quickstart_out", help="everything is written here; rerun to continue")
    ap.add_argument("--fast", action="store_true", help="the reduced CI version (a minute, not a result)")
    ap.add_argument("--nproc", type=int, default=None, help="ranks per training stage (default 2)")
    ap.add_argument("--quiet", action="store_true", help="stage output to log files only")
    args = ap.parse_args(argv)
    plan = FAST if args.fast else FULL
    if args.nproc:
        plan = dataclasses.replace(plan, nproc=args.nproc)
    for change in overridden(os.environ):
        print(f"quickstart: {change} for every stage, so that the results are the same run to run", flush=True)
    t0 = time.perf_counter()
    rows, clock = run(Path(args.out).resolve(), plan, quiet=args.quiet)  # stages run from the repo root
    print("\n" + format_table(rows))
    print(f"\n{time_report(clock, time.perf_counter() - t0)}; results in {args.out}/quickstart_results.json")
    return 0
