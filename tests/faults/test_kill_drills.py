"""kill -9 of the whole job (launcher and ranks at once) at each moment of a save; the resumed run must end with
the uninterrupted run's trajectory, each step logged once (issue 13: the drills that already passed, kept true).

Moments: `shards` (DeepSpeed's shards written on rank 0, no marker yet), `marker` (complete, `latest` not yet moved:
`auto` follows `latest` and sets the unnamed newer one aside), `latest` (complete and named, rotation not yet run).
"""

from __future__ import annotations

import pytest

from tests.engine_fixtures import build_tiny_setup, read_history, run_launch, trajectory, write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TRAIN = {"max_steps": 6, "lr": 1e-2, "schedule": "constant", "warmup_ratio": 0.0}
OUTPUT = {"save_interval": 2, "keep_last": 1, "export": False}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_drills")
    setup = build_tiny_setup(root / "setup", n_records=32)
    out = root / "reference"
    res = run_launch(["--config", str(write_run_config(setup, out, train=TRAIN, output=OUTPUT))], timeout=240)
    assert res.returncode == 0, res.output[-3000:]
    return setup, trajectory(read_history(out))


@pytest.mark.parametrize(
    "moment,latest_after,resumed_from",
    [("shards", "step_00000002", 2), ("marker", "step_00000002", 2), ("latest", "step_00000004", 4)],
)
def test_kill_9_of_the_job_during_a_save(reference, tmp_path, moment, latest_after, resumed_from):
    setup, ref = reference
    out = tmp_path / "run"
    cfg = write_run_config(setup, out, train=TRAIN, output=OUTPUT)
    killed = run_launch(
        ["--config", str(cfg)], launcher="deepspeed", env={"ADAKD_FAULT": f"job_kill:{moment}:4"}, timeout=240
    )
    assert killed.returncode != 0
    ckpts = out / "checkpoints"
    assert (ckpts / "step_00000002" / "COMPLETE.json").is_file()  # the previous complete one is never lost
    assert (ckpts / "step_00000004" / "COMPLETE.json").is_file() == (moment != "shards")
    assert (ckpts / "latest").read_text().strip() == latest_after
    resumed = run_launch(["--config", str(cfg)], timeout=240)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"resumed from {ckpts / f'step_{resumed_from:08d}'}" in resumed.output
    if moment == "marker":
        assert "not the newest: set aside the newer checkpoint(s) step_00000004" in resumed.output
    assert trajectory(read_history(out)) == ref  # steps 1-6 once each, equal to the uninterrupted run
