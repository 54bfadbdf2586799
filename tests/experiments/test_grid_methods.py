"""The experiment grid's gkd and distillm rows (issue 10): what each cell's run config says, and that it validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from adakd_ds.config.load import _apply
from adakd_ds.config.schema import RunConfig
from adakd_ds.experiments.grid.methods import Method
from adakd_ds.experiments.grid.runner import Cell, Variant, build_spec, cell_config, main


def _template(eval_source: str | None = None) -> dict:
    return {
        "model": {"teacher": "/t", "student": "/s"},
        "data": {"source": "/d/train.jsonl", "eval_source": eval_source},
        "loss": {"divergence": "fkl", "kd_ratio": 0.5},
        "train": {"max_steps": 10, "eval_interval": 0},
    }


def _validated(cfg: dict) -> RunConfig:
    run = RunConfig()
    _apply(run, cfg, "cell")
    run.validate()
    return run


@pytest.mark.parametrize("variant", [Variant.BASE, Variant.ADAKD])
def test_gkd_and_distillm_cells(tmp_path: Path, variant: Variant) -> None:
    gkd = _validated(cell_config(_template(), Cell(Method.GKD, variant, 3), tmp_path, tmp_path / "val.jsonl"))
    assert (gkd.policy.data_policy.value, gkd.loss.divergence.value, gkd.loss.adakd) == (
        "gkd",
        "rkl",
        variant is Variant.ADAKD,
    )
    assert gkd.data.eval_source is None and gkd.loss.kd_ratio == 0.5 and gkd.train.seed == 3
    cfg = cell_config(_template(), Cell(Method.DISTILLM, variant, 3), tmp_path, tmp_path / "val.jsonl")
    dm = _validated(cfg)
    assert (dm.policy.data_policy.value, dm.loss.divergence.value, dm.loss.adakd) == (
        "distillm",
        "srkl",
        variant is Variant.ADAKD,
    )
    assert dm.data.eval_source == str(tmp_path / "val.jsonl") and dm.train.eval_interval == 25
    # the template's own held-out file and interval win
    own = cell_config({**_template("/d/dev.jsonl"), "train": {"eval_interval": 5}}, Cell(Method.DISTILLM, variant, 1),
                      tmp_path)  # fmt: skip
    assert own["data"]["eval_source"] == "/d/dev.jsonl" and own["train"]["eval_interval"] == 5


def test_a_divergence_row_is_unchanged_and_distillm_without_heldout_fails(tmp_path: Path) -> None:
    cfg = cell_config(_template(), Cell(Method.RKL, Variant.BASE, 1), tmp_path)
    assert "policy" not in cfg and cfg["loss"]["divergence"] == "rkl"  # old cells' saved configs stay the same
    with pytest.raises(ValueError, match="distillm rows need held-out data"):
        cell_config(_template(), Cell(Method.DISTILLM, Variant.BASE, 1), tmp_path)


def test_the_grid_names_and_parses_method_rows(capsys) -> None:
    assert Cell.parse("distillm-adakd-s2") == Cell(Method.DISTILLM, Variant.ADAKD, 2)
    assert Cell.parse("gkd-base-s0").loss is Method.GKD and Cell.parse("gkdx-base-s0") is None
    spec = build_spec(None, {"embedded": True, "losses": [Method("gkd")], "also": ["distillm:adakd"], "seeds": [1]})
    assert [c.name for c in spec.cells()] == ["gkd-base-s1", "gkd-adakd-s1", "distillm-adakd-s1"]
    assert main(["--embedded", "--losses", "gkd", "distillm", "--variants", "adakd", "--seeds", "4", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["gkd-adakd-s4", "distillm-adakd-s4"]
