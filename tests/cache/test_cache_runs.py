"""The offline teacher end to end on the tiny models: writer on 2 ranks (kill -9, rerun, same bytes), training from
the cache on 2 ranks (against the live teacher, and resumed), and the refusals (fingerprints, policies)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.engine_fixtures import REPO, read_history, run_launch, write_run_config

CACHE = str(REPO / "launch" / "cache_teacher.py")
pytestmark = pytest.mark.xdist_group("cache_runs")


def _cache(cfg: Path, out: Path, *extra: str, env: dict[str, str] | None = None, nproc: int = 2):
    args = ["--config", str(cfg), "--out", str(out), *extra]
    return run_launch(args, nproc=nproc, script=CACHE, env=env, launcher="torchrun" if nproc > 1 else "python")


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def run_cfg(tiny_setup, tmp_path_factory) -> Path:
    return write_run_config(tiny_setup, tmp_path_factory.mktemp("cache_cfg") / "base")


@pytest.fixture(scope="module")
def full_cache(run_cfg, tmp_path_factory) -> Path:
    """k = V (200): the whole teacher distribution, so training from it must match the live teacher."""
    out = tmp_path_factory.mktemp("full") / "cache"
    res = _cache(run_cfg, out, "--k", "200", "--shard-samples", "16")
    assert res.returncode == 0, res.output[-3000:]
    return out


@pytest.mark.slow
def test_writer_kill_9_and_rerun_give_the_same_bytes(run_cfg, tiny_setup, tmp_path):
    """Uninterrupted vs killed (SIGKILL of rank 0 after its first shard) and rerun: identical files; and the cached
    rows equal a single-process float64-free recomputation of the teacher on each sample alone (fp16 round-off)."""
    flags = ("--k", "8", "--shard-samples", "8", "--batch", "3")
    whole = tmp_path / "whole"
    res = _cache(run_cfg, whole, *flags)
    assert res.returncode == 0, res.output[-3000:]
    assert "tok/s" in res.output and "bytes/token" in res.output  # rank 0's bar shows the rate

    killed = tmp_path / "killed"
    res = _cache(run_cfg, killed, *flags, env={"ADAKD_CACHE_KILL_AFTER": "1"})
    assert res.returncode != 0
    partial = sorted(p.name for p in killed.glob("shard-*"))
    assert not (killed / "manifest.json").exists() and 1 <= len(partial) < 8, partial
    res = _cache(run_cfg, killed, *flags)
    assert res.returncode == 0, res.output[-3000:]
    assert _files(killed) == _files(whole)

    from transformers import AutoModelForCausalLM

    from adakd_ds.data import build_dataset
    from adakd_ds.data.teacher_cache import TeacherCache
    from adakd_ds.engine.models import load_tokenizer
    from adakd_ds.engine.teacher_cache.writer import response_rows

    cfg = __import__("adakd_ds.config.load", fromlist=["load_config"]).load_config(str(run_cfg))
    data = build_dataset(cfg.data, load_tokenizer(cfg.model))
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_setup.teacher)).eval()
    cache = TeacherCache(whole)
    assert cache.k == 8 and len(cache) == len(data) and cache.manifest["tokens"] == sum(cache.lengths) > 0
    for i in (0, 13, len(data) - 1):
        ids = torch.tensor([data[i]["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
        pos = response_rows(data[i]["labels"])
        assert pos and all(data[i]["labels"][t + 1] != -100 for t in pos)
        got = cache.rows(i)
        want = logp[pos].topk(8, -1)
        assert torch.equal(got.ids, want.indices)
        torch.testing.assert_close(got.logp.double(), want.values, rtol=2e-3, atol=2e-3)
        rest = 1 - want.values.exp().sum(-1)
        torch.testing.assert_close(got.log_tail.double(), rest.log(), rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_two_rank_training_from_the_cache_matches_the_live_teacher_and_resumes(run_cfg, full_cache, tiny_setup, tmp_path):
    """k = V: the cached run's losses, r and taus follow the live run (fp16 values); a resume from step 3 continues
    the cached run exactly."""
    common = {"train": {"max_steps": 6}, "output": {"save_interval": 3, "export": False}}
    live_out, cached_out = tmp_path / "live", tmp_path / "cached"
    live = run_launch(["--config", str(write_run_config(tiny_setup, live_out, **common))])
    assert live.returncode == 0, live.output[-3000:]
    cached_cfg = write_run_config(
        tiny_setup, cached_out, model={"teacher": None, "teacher_cache": str(full_cache)}, **common
    )
    cached = run_launch(["--config", str(cached_cfg)])
    assert cached.returncode == 0, cached.output[-3000:]
    assert "cached top-200" in cached.output
    lh, ch = read_history(live_out), read_history(cached_out)
    assert [h["step"] for h in ch] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(lh, ch, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3), (a, b)
        assert b["ratio"] == a["ratio"] and b["idts/tau_max"] == pytest.approx(a["idts/tau_max"], rel=1e-3)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(cached_out / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    cfg = write_run_config(tiny_setup, resumed, model={"teacher": None, "teacher_cache": str(full_cache)}, **common)
    res = run_launch(["--config", str(cfg)])
    assert res.returncode == 0 and "resumed from" in res.output, res.output[-3000:]
    rh = read_history(resumed)
    assert [h["step"] for h in rh] == [4, 5, 6]
    assert [(h["loss"], h["ratio"]) for h in rh] == [(h["loss"], h["ratio"]) for h in ch[3:]]


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "error:" in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def test_a_cache_of_other_data_is_refused_with_one_line(full_cache, tiny_setup, tmp_path):
    cfg = write_run_config(
        tiny_setup, tmp_path / "r", model={"teacher": None, "teacher_cache": str(full_cache)}, data={"max_len": 70}
    )
    res = run_launch(["--config", str(cfg)], launcher="python", nproc=1)
    assert res.returncode == 2
    line = _one_error_line(res.output)
    assert "data fingerprint" in line and str(full_cache) in line, line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_an_unfinished_cache_and_the_live_teacher_policies_are_refused(full_cache, tiny_setup, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(full_cache, unfinished)
    (unfinished / "manifest.json").unlink()
    for model, policy, want in (
        ({"teacher": None, "teacher_cache": str(unfinished)}, {}, "unfinished"),
        ({"teacher": None, "teacher_cache": str(full_cache)}, {"data_policy": "gkd"}, "policy.data_policy gkd"),
    ):
        cfg = write_run_config(tiny_setup, tmp_path / "r", model=model, policy=policy)
        res = run_launch(["--config", str(cfg)], launcher="python", nproc=1, timeout=60)
        assert res.returncode == 2 and want in _one_error_line(res.output), res.output[-2000:]
    plan = json.loads((full_cache / "manifest.json").read_text())
    assert plan["k"] == 200 and plan["format_version"] == 1
