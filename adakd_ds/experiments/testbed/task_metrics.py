"""The testbed's scores of one model row: ROUGE-L and exact match, validity and diversity on the stochastic
families, KL(teacher || student) per token, and ROUGE-L per family; mean and std over training seeds.

Why beyond ROUGE-L: on a stochastic family one reference is one sample of many correct answers, so ROUGE-L against it
under-rates a model that answers correctly but differently. Validity (is the sampled answer one of the correct ones)
and diversity (how many different answers it gives to one prompt) say whether the student matched the teacher's
distribution, and the held-out KL says it per token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adakd_ds.experiments.seed_stats import exceeds_2std, mean_std
from adakd_ds.experiments.testbed.synthetic_tasks import STOCHASTIC, Task, is_valid

FKL = "fkl"  # KL(teacher || student) in the evaluation's eval_loss.kd


@dataclass
class Stat:
    """Mean and population std over training seeds, with the per-seed values."""

    mean: float | None
    std: float | None
    per_seed: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None]
        mean, std = mean_std(vals)
        return cls(mean, std, vals)

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return "-"
        spread = f" ± {self.std:.{digits}f}" if len(self.per_seed) > 1 else ""
        return f"{self.mean:.{digits}f}{spread}"


@dataclass
class ModelScores:
    name: str
    models: list[str]
    rougeL_greedy: Stat
    exact_match_greedy: Stat
    rougeL_sampled: Stat
    validity: Stat  # % of sampled answers to stochastic prompts that are correct
    diversity: Stat  # distinct sampled answers per stochastic prompt / samples per prompt, x100
    kl: Stat  # held-out per-token KL(teacher || student), nats
    per_family: dict[str, Stat]  # greedy ROUGE-L


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sampled_stats(eval_dir: Path, records: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(validity %, diversity %) of an evaluation's sampled predictions on the stochastic families."""
    valid, total, distinct = 0, 0, []
    for row in _records(eval_dir / "predictions.jsonl"):
        rec = records[row["index"]]
        if Task(rec["task"]) not in STOCHASTIC:
            continue
        preds = [p.strip() for p in row["predictions"]]
        valid += sum(is_valid(rec["task"], rec["input"], p) for p in preds)
        total += len(preds)
        if len(preds) > 1:
            distinct.append(len(set(preds)) / len(preds))
    validity = 100.0 * valid / total if total else None
    diversity = 100.0 * math.fsum(distinct) / len(distinct) if distinct else None
    return validity, diversity


def model_scores(name: str, greedy: Sequence[dict[str, Any]], sampled_dirs: Sequence[Path], test: Path) -> ModelScores:
    """One table row from each training seed's greedy results.json and sampled evaluation folder."""
    records = _records(test)
    sampled = [json.loads((d / "results.json").read_text()) for d in sampled_dirs]
    extra = [sampled_stats(d, records) for d in sampled_dirs]
    families = sorted(greedy[0].get("per_task", {}))
    return ModelScores(
        name=name,
        models=[str(d) for d in sampled_dirs],
        rougeL_greedy=Stat.of([g["rougeL"]["mean"] for g in greedy]),
        exact_match_greedy=Stat.of([g["exact_match"]["mean"] for g in greedy]),
        rougeL_sampled=Stat.of([s["rougeL"]["mean"] for s in sampled]),
        validity=Stat.of([v for v, _ in extra]),
        diversity=Stat.of([d for _, d in extra]),
        kl=Stat.of([(s.get("eval_loss") or {}).get("kd", {}).get(FKL) for s in sampled]),
        per_family={f: Stat.of([g["per_task"][f]["rougeL"]["mean"] for g in greedy]) for f in families},
    )


def scores_table(rows: Sequence[ModelScores]) -> str:
    """The quickstart's table (markdown), then ROUGE-L per family."""
    lines = [
        "| model | ROUGE-L greedy | exact match greedy | ROUGE-L sampled | valid % (stochastic, sampled) | "
        "diversity % | KL(teacher‖student) / token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r.rougeL_greedy, r.exact_match_greedy, r.rougeL_sampled, r.validity, r.diversity]
        lines.append(f"| {r.name} | " + " | ".join(c.text() for c in cells) + f" | {r.kl.text(3)} |")
    families = list(rows[0].per_family)
    lines += ["", "Greedy ROUGE-L per task family (* = stochastic):", "",
              "| model | " + " | ".join(f + ("*" if Task(f) in STOCHASTIC else "") for f in families) + " |",
              "|---|" + "---:|" * len(families)]  # fmt: skip
    for r in rows:
        lines.append(f"| {r.name} | " + " | ".join(f"{r.per_family[f].mean:.1f}" for f in families) + " |")
    return "\n".join(lines)


def _delta(a: Stat, b: Stat, metric: str) -> str:
    if a.mean is None or b.mean is None:
        return f"{metric} not measured"
    said = {True: "more than 2 std", False: "NOT more than 2 std", None: "std needs >= 2 seeds"}
    return (f"{metric} {a.mean - b.mean:+.2f} ({a.text()} vs {b.text()} over {len(a.per_seed)} seeds): "
            f"{said[exceeds_2std(b.per_seed, a.per_seed)]}")  # fmt: skip


def _versus(better: ModelScores, base: ModelScores) -> str:
    """The verdict on sampled ROUGE-L, the paper's metric and the grid's (3 samples per prompt average out the
    sampling noise), then on greedy ROUGE-L."""
    return (f"{better.name} vs {base.name}: {_delta(better.rougeL_sampled, base.rougeL_sampled, 'sampled ROUGE-L')}"
            f"; {_delta(better.rougeL_greedy, base.rougeL_greedy, 'greedy')}")  # fmt: skip


def sanity_lines(rows: Sequence[ModelScores]) -> list[str]:
    """What the testbed must show: the teacher >= 2x the SFT student on every family, KD above SFT by > 2 std."""
    by = {r.name: r for r in rows}
    teacher, sft = by["teacher"], by["student SFT"]
    ratios = {f: teacher.per_family[f].mean / max(sft.per_family[f].mean, 1e-9) for f in teacher.per_family}
    worst = min(ratios, key=ratios.__getitem__)
    sampled = (teacher.rougeL_sampled.mean or 0.0) / max(sft.rougeL_sampled.mean or 0.0, 1e-9)
    greedy = teacher.rougeL_greedy.mean / max(sft.rougeL_greedy.mean, 1e-9)
    every = ">= 2x on every family" if ratios[worst] >= 2 else "NOT >= 2x on every family"
    lines = [f"teacher vs student SFT: {sampled:.1f}x sampled ROUGE-L, {greedy:.1f}x greedy; per family (greedy) "
             f"the lowest is {worst} at {ratios[worst]:.1f}x ({every})"]  # fmt: skip
    students = [r for r in rows if r.name.startswith("student KD")]
    lines += [_versus(r, sft) for r in students]
    if len(students) == 2:
        lines.append(_versus(students[1], students[0]))
    return lines
