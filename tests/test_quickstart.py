"""The quickstart, reduced (--fast): every stage runs for real, end to end, and the teacher learns the tasks."""

from __future__ import annotations

import json
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
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((out / "quickstart_results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "student untrained", "student SFT", "student rkl", "student rkl+AdaKD"]
    assert "| teacher |" in proc.stdout  # the table is printed
    teacher, untrained = rows["teacher"], rows["student untrained"]
    assert teacher["rougeL_greedy"] > untrained["rougeL_greedy"] + 15, (teacher, untrained)
    assert teacher["exact_match_greedy"] > untrained["exact_match_greedy"]
    for name in ("student SFT", "student rkl", "student rkl+AdaKD"):
        assert (out / name.replace(" ", "_").replace("+", "_") / "export" / "model.safetensors").is_file()

    # a rerun of the finished quickstart redoes nothing, says so per stage, and keeps the first run's times
    rerun = subprocess.run(proc.args, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    headers = [line for line in rerun.stdout.splitlines() if line.startswith("== stage ")]
    assert len(headers) == 16 and all("done earlier, skipped (it took " in h for h in headers), headers
    again = json.loads((out / "quickstart_results.json").read_text())
    assert again["seconds"] == results["seconds"] > 0 and again["rows"] == results["rows"]
    assert again["times"]["total"] == results["times"]["total"] and again["times"]["total"]["cpu_s"] > 0
    assert "16 of 16 stages were done earlier and skipped" in rerun.stdout
