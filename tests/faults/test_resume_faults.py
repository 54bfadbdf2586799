"""Honest resume (issue 13, items 3-5): `auto` follows `latest`, a rollback sets the abandoned checkpoints aside,
a changed lr is refused or really applied, and history.jsonl shows one trajectory after a resume.

Reference: the uninterrupted first run. With a constant lr schedule a resumed run repeats its steps bit for bit, so a
rollback's history must equal the first run's history up to the rollback run's last step.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from adakd_ds.checkpoint.manager import resolve_resume
from adakd_ds.engine.history_file import truncate_history
from tests.engine_fixtures import build_tiny_setup, read_history, run_launch, trajectory, write_run_config

TRAIN = {"max_steps": 6, "lr": 1e-2, "schedule": "constant", "warmup_ratio": 0.0}


def _fake_ckpt(root: Path, step: int, complete: bool = True) -> Path:
    tag = root / f"step_{step:08d}"
    tag.mkdir(parents=True)
    if complete:
        (tag / "COMPLETE.json").write_text(json.dumps({"step": step, "world_size": 1}))
    return tag


def test_auto_follows_latest_not_the_highest_step(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _fake_ckpt(root, step)
    (root / "latest").write_text("step_00000004")
    assert resolve_resume("auto", tmp_path) == root / "step_00000004"
    (root / "latest").write_text("step_00000008")  # missing: fall back to the newest complete, with a warning
    with pytest.warns(UserWarning, match="step_00000008, which is missing or incomplete"):
        assert resolve_resume("auto", tmp_path) == root / "step_00000006"
    _fake_ckpt(root, 8, complete=False)
    with pytest.warns(UserWarning):
        assert resolve_resume("auto", tmp_path) == root / "step_00000006"
    (root / "latest").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resolve_resume("auto", tmp_path) == root / "step_00000006"


def test_truncate_history_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    assert truncate_history(path, 4) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert truncate_history(path, 4) == 0
    assert truncate_history(tmp_path / "none.jsonl", 0) == 0


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """6 steps on 2 ranks, checkpoints at 2, 4 and 6 (all kept)."""
    root = tmp_path_factory.mktemp("resume_faults")
    setup = build_tiny_setup(root / "setup", n_records=32)
    out = root / "first"
    cfg = write_run_config(setup, out, train=TRAIN, output={"save_interval": 2, "keep_last": 3, "export": False})
    res = run_launch(["--config", str(cfg)], timeout=240)
    assert res.returncode == 0, res.output[-3000:]
    return setup, out


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".adakd-run.lock", "tensorboard"))
    return dst


@pytest.mark.slow
@pytest.mark.faults
def test_rollback_sets_newer_checkpoints_aside_and_auto_then_follows_latest(first_run, tmp_path):
    setup, first = first_run
    out = _copy_run(first, tmp_path / "rollback")
    ckpts = out / "checkpoints"
    cfg = write_run_config(
        setup, out, train={**TRAIN, "max_steps": 4}, output={"save_interval": 2, "keep_last": 3, "export": False}
    )
    res = run_launch(["--config", str(cfg), "--resume", str(ckpts / "step_00000002")], timeout=240)
    assert res.returncode == 0, res.output[-3000:]
    assert (
        "resuming from step_00000002, not the newest: set aside the newer checkpoint(s) step_00000004, step_00000006"
        in res.output
    )
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000004"]
    abandoned = list((ckpts / "abandoned").glob("*/step_*/COMPLETE.json"))
    assert sorted(p.parent.name for p in abandoned) == ["step_00000004", "step_00000006"]  # moved whole, not deleted
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    # one trajectory: steps 1-4 once each, equal to the first run's (constant lr: a resume repeats them exactly)
    assert trajectory(read_history(out)) == trajectory(read_history(first))[:4]

    again = run_launch(["--config", str(cfg)], timeout=240)  # --resume auto
    assert again.returncode == 0, again.output[-3000:]
    assert "resumed from" in again.output and "step 4" in again.output
    assert [h["step"] for h in read_history(out)] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.faults
def test_a_changed_lr_is_refused_then_applied_when_forced(first_run, tmp_path):
    setup, first = first_run
    out = _copy_run(first, tmp_path / "lr")
    new = {**TRAIN, "max_steps": 8, "lr": 2e-3}
    cfg = write_run_config(setup, out, train=new, output={"save_interval": 2, "keep_last": 3, "export": False})
    refused = run_launch(["--config", str(cfg)], launcher="deepspeed", timeout=240)  # torchrun: 1
    assert refused.returncode == 2, refused.output[-3000:]
    line = [x for x in refused.output.splitlines() if "adakd-distill: error:" in x]
    assert len(line) == 1 and "train.lr: 0.01 -> 0.002" in line[0] and "--resume_force" in line[0]

    forced = run_launch(["--config", str(cfg), "--resume_force", "true"], timeout=240)
    assert forced.returncode == 0, forced.output[-3000:]
    assert "applying the new optimizer settings (--resume_force): train.lr 0.01 -> 0.002" in forced.output
    hist = read_history(out)
    assert [h["step"] for h in hist] == list(range(1, 9))
    assert [h["lr"] for h in hist[:6]] == [0.01] * 6 and [h["lr"] for h in hist[6:]] == [0.002, 0.002]
    state = json.loads((out / "checkpoints" / "step_00000008" / "trainer_state.json").read_text())
    assert state["config"]["train"]["lr"] == 0.002  # what actually ran is what is recorded
