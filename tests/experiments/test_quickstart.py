"""The quickstart, reduced (--fast): every stage runs for real, end to end, and the teacher learns the tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.engine_fixtures import REPO, run_env


@pytest.mark.slow
def test_fast_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "quickstart.py"), "--fast", "--quiet", "--out", str(out)],
        cwd=tmp_path,  # a relative --out and any working directory must work
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((out / "quickstart_results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "student untrained", "student SFT", "student KD (rkl)", "student KD (rkl) + AdaKD"]
    assert "| teacher |" in proc.stdout  # the table is printed
    greedy = {name: r["rougeL_greedy"]["mean"] for name, r in rows.items()}
    sampled = {name: r["rougeL_sampled"]["mean"] for name, r in rows.items()}
    # what the testbed is for: a teacher far above a student trained on labels, and distillation above SFT
    for score in (greedy, sampled):
        assert score["teacher"] >= 2 * score["student SFT"], score
        assert score["student KD (rkl)"] > score["student SFT"], score
        assert score["student untrained"] < 5, score
    for name in ("student SFT", "student KD (rkl)", "student KD (rkl) + AdaKD"):
        kl = rows[name]["kl"]["mean"]
        assert kl is not None and 0 < kl < rows["student untrained"]["kl"]["mean"], (name, kl)
    assert (
        "teacher vs student SFT:" in proc.stdout and "student KD (rkl) vs student SFT: sampled ROUGE-L +" in proc.stdout
    )
    # the lanes: the student stages ran side by side, on 1 rank each
    stages = results["times"]["stages"]
    kd, ada = stages["student KD (rkl) seed 1"], stages["student KD (rkl) + AdaKD seed 1"]
    assert kd["started_at"] < ada["started_at"] + ada["wall_s"] and ada["started_at"] < kd["started_at"] + kd["wall_s"]
    assert results["seconds"] < sum(t["wall_s"] for t in stages.values())
    assert "student KD (rkl) seed 1 (300 steps, 1 rank)" in proc.stdout

    # a rerun of the finished quickstart redoes nothing, says so per stage, and keeps the first run's times
    rerun = subprocess.run(proc.args, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    headers = [line for line in rerun.stdout.splitlines() if line.startswith("== stage ")]
    assert len(headers) == 15 and all("done earlier, skipped (it took " in h for h in headers), headers
    again = json.loads((out / "quickstart_results.json").read_text())
    assert again["seconds"] == results["seconds"] > 0 and again["rows"] == results["rows"]
    assert again["times"]["total"] == results["times"]["total"] and again["times"]["total"]["cpu_s"] > 0
    assert "15 of 15 stages were done earlier and skipped" in rerun.stdout


def test_the_command_line_sets_the_plan_and_refuses_bad_values(capsys):
    from adakd_ds.experiments.testbed.quickstart import parse_plan
    from adakd_ds.experiments.testbed.spec import FAST, FULL

    cores = os.cpu_count() or 1
    _, plan = parse_plan([])
    assert (plan.train_seeds, plan.stage_nproc, plan.lanes) == (FULL.train_seeds, 1, min(2, cores))
    assert parse_plan(["--nproc", "2"])[1].lanes == max(1, min(2, cores // 2))  # no more ranks at once than cores
    assert plan.micro_batch_for(plan.stage_nproc) == 32  # 1 rank carries the 2 x 16 global batch
    _, plan = parse_plan(["--fast", "--seeds", "4", "5", "--nproc", "2", "--lanes", "1"])
    assert (plan.train_seeds, plan.eval_seeds, plan.stage_nproc, plan.lanes) == ((4, 5), FAST.eval_seeds, 2, 1)
    assert plan.micro_batch_for(2) == 16
    for bad, said in ((["--seeds", "4", "4"], "--seeds 4 4: give distinct seeds"), (["--nproc", "3"], "--nproc 3 does not divide the global batch 32"),
                      (["--lanes", "0"], "--lanes 0: must be at least 1"), (["--nproc", "0"], "--nproc 0: must be at least 1"), (["--ship-teacher"], "--ship-teacher needs --retrain-teacher")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            parse_plan(bad)
        assert exc.value.code == 2 and said in capsys.readouterr().err, bad
