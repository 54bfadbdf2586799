"""The sensitivity study's bookkeeping: a setting's fields reach the cell config, and the table's deltas and 2-std
marks follow the grid's convention (a loss knob is compared with the paper setting's base)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adakd_ds.experiments.grid.runner import Setup
from adakd_ds.experiments.grid.sensitivity import SETTINGS, Phase, setting_setup, table


def _setup() -> Setup:
    template = {"loss": {"divergence": "rkl", "c": 0.5}, "train": {"lr": 2e-3}, "output": {"dir": "x"}}
    return Setup(template, Path("test.jsonl"), 1, {"greedy": False})


def test_setting_fields_and_split() -> None:
    paths = {"val": Path("v.jsonl"), "test": Path("t.jsonl")}
    s = setting_setup(_setup(), SETTINGS["c0.25"], Phase.REPORT, paths)
    assert s.template["loss"] == {"divergence": "rkl", "c": 0.25} and s.eval_data == Path("t.jsonl")
    s = setting_setup(_setup(), SETTINGS["paper"], Phase.CHOOSE, paths)
    assert s.eval_data == Path("v.jsonl") and s.template["output"]["save_interval"] > 0
    assert _setup().template["loss"]["c"] == 0.5  # the shared template is never changed


def test_table_delta_and_mark_against_paper_base() -> None:
    found = {
        "paper": {"rkl-base": [{"seed": s, "rougeL": v, "eval_kd": 2.0} for s, v in ((4, 27.0), (5, 27.4), (6, 27.2))]},
        "w_none": {
            "rkl-adakd": [{"seed": s, "rougeL": v, "eval_kd": 2.5} for s, v in ((4, 28.5), (5, 28.7), (6, 28.6))]
        },
        "c0.25": {
            "rkl-adakd": [{"seed": s, "rougeL": v, "eval_kd": 2.5} for s, v in ((4, 26.0), (5, 28.4), (6, 27.0))]
        },
    }
    md, rows = table(found, "rkl")
    by = {r["setting"]: r for r in rows}
    assert by["w_none"]["delta"] == pytest.approx(28.6 - 27.2)
    assert by["w_none"]["exceeds_2std"] is True  # 1.4 > 2 x 0.163
    assert by["c0.25"]["exceeds_2std"] is False  # its own spread (1.0) is larger than half the delta
    assert "| w_none | adakd | 3 | 28.60 ± 0.08 | +1.40 | **yes** |" in md
