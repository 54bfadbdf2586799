"""A full disk during a save (issue 13, item 11): one line naming the path and the free space, exit 1, the previous
checkpoint intact, and a clean resume once space is free. Injected ENOSPC inside DeepSpeed's own write on one rank
(the hardest case: the other rank's save succeeds and waits in DeepSpeed's closing barrier), and a real small tmpfs
where the machine lets the test mount one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.engine_fixtures import read_history, run_launch, write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output[-3000:]
    return [line for line in output.splitlines() if "adakd-distill: error:" in line]


def _check_kept_and_resume(cfg: Path, out: Path, good: str, bad: str, steps: int) -> None:
    ckpts = out / "checkpoints"
    assert (ckpts / good / "COMPLETE.json").is_file()
    assert (ckpts / "latest").read_text().strip() == good
    assert not (ckpts / bad / "COMPLETE.json").exists()
    resumed = run_launch(["--config", str(cfg)], launcher="deepspeed", timeout=240)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"resumed from {ckpts / good}" in resumed.output
    assert [h["step"] for h in read_history(out)] == list(range(1, steps + 1))


def test_injected_enospc_on_one_rank_is_one_line_exit_1_and_resumes(tiny_setup, tmp_path):
    out = tmp_path / "run"
    cfg = write_run_config(tiny_setup, out, train={"max_steps": 6}, output={"save_interval": 2, "export": False})
    res = run_launch(["--config", str(cfg)], launcher="deepspeed", env={"ADAKD_FAULT": "save_enospc:1:4"}, timeout=240)
    assert res.returncode == 1, res.output[-3000:]
    lines = _error_lines(res.output)
    assert len(lines) == 1, res.output[-3000:]
    assert "saving checkpoint step_00000004 failed: [Errno 28] No space left on device: " in lines[0]
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in lines[0] and "MiB free there) on rank 1" in lines[0]
    _check_kept_and_resume(cfg, out, "step_00000002", "step_00000004", 6)


def _mount_tmpfs(path: Path, size_kib: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def test_a_real_full_tmpfs(tiny_setup, tmp_path):
    probe = tmp_path / "probe"
    cfg = write_run_config(tiny_setup, probe, train={"max_steps": 2}, output={"save_interval": 2, "export": False})
    res = run_launch(["--config", str(cfg)], launcher="deepspeed", timeout=240)
    assert res.returncode == 0, res.output[-3000:]
    one_ckpt = sum(f.stat().st_size for f in (probe / "checkpoints" / "step_00000002").rglob("*") if f.is_file())
    # room for the run's small files and one checkpoint and a half: the second save runs out of space
    out = tmp_path / "disk"
    if not _mount_tmpfs(out, int(one_ckpt * 1.5 / 1024) + 64):
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")
    try:
        cfg = write_run_config(
            tiny_setup,
            out / "run",
            train={"max_steps": 6},
            output={"save_interval": 2, "keep_last": 5, "export": False, "tensorboard": False},
        )
        res = run_launch(["--config", str(cfg)], launcher="deepspeed", timeout=240)
        assert res.returncode == 1, res.output[-3000:]
        lines = _error_lines(res.output)
        assert len(lines) == 1, res.output[-3000:]  # the lowest rank that hit the full disk names it
        assert all("failed: [Errno 28] No space left on device" in line and "MiB free there" in line for line in lines)
        subprocess.run(["mount", "-o", "remount,size=65536k", str(out)], check=True)  # space is freed
        _check_kept_and_resume(cfg, out / "run", "step_00000002", "step_00000004", 6)
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
