"""The quickstart's verdict lines: the teacher's ratio to the SFT student and KD vs SFT, recomputed by hand."""

from __future__ import annotations

import statistics

from adakd_ds.experiments.testbed.task_metrics import ModelScores, Stat, sanity_lines


def _row(name: str, sampled: list[float], greedy: list[float], nth: float = 10.0, sort: float = 30.0) -> ModelScores:
    none = Stat.of([])
    families = {"nth": Stat.of([nth]), "sort": Stat.of([sort])}
    return ModelScores(name, [], Stat.of(greedy), none, Stat.of(sampled), none, none, none, families)


def test_the_verdict_is_on_sampled_rouge_and_greedy_is_reported_beside_it() -> None:
    sft, kd = [24.0, 25.0, 26.0], [28.0, 28.5, 29.0]
    greedy_sft, greedy_kd = [27.0, 28.0, 29.0], [29.0, 29.5, 30.0]
    rows = [
        _row("teacher", [60.0], [61.0], nth=15.0, sort=90.0),
        _row("student SFT", sft, greedy_sft),
        _row("student KD (rkl)", kd, greedy_kd),
    ]
    lines = sanity_lines(rows)
    # the reference: population std by hand; sampled +3.5 > 2 x 0.8165, greedy +1.5 < 2 x 0.8165
    std = statistics.pstdev(sft)
    assert 3.5 > 2 * std > 1.5
    assert lines[0].startswith(f"teacher vs student SFT: {60 / 25:.1f}x sampled ROUGE-L, {61 / 28:.1f}x greedy")
    assert "the lowest is nth at 1.5x (NOT >= 2x on every family)" in lines[0]
    assert lines[1] == (
        "student KD (rkl) vs student SFT: sampled ROUGE-L +3.50 (28.50 ± 0.41 vs 25.00 ± 0.82 over 3 seeds): "
        "more than 2 std; greedy +1.50 (29.50 ± 0.41 vs 28.00 ± 0.82 over 3 seeds): NOT more than 2 std"
    )


def test_one_seed_gives_no_verdict() -> None:
    rows = [
        _row("teacher", [60.0], [61.0]),
        _row("student SFT", [25.0], [28.0]),
        _row("student KD (rkl)", [28.0], [30.0]),
    ]
    assert lines_end_with(sanity_lines(rows)[1], "std needs >= 2 seeds")


def lines_end_with(line: str, tail: str) -> bool:
    return line.count(tail) == 2 and line.endswith(tail)
