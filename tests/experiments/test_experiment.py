"""The experiment runner: variant -> LossConfig mapping, grid options, aggregation against hand-computed numbers,
the table / CSV / PNG files, resume and failure handling (with recorders in place of our own subprocess stages), and
one tiny real grid on the embedded default."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import pytest
import yaml

from adakd_ds.config.load import load_config
from adakd_ds.config.schema import Divergence
from adakd_ds.experiments.grid import runner as experiment
from adakd_ds.experiments.grid.report import CellResult, Status, aggregate, results_markdown
from adakd_ds.experiments.grid.reports import write_reports
from adakd_ds.experiments.grid.runner import Cell, GridError, GridSpec, Variant, build_spec, cell_config
from adakd_ds.experiments.testbed import pipeline

# ------------------------------------------------------------------------------------------------ variants

# Written out independently of experiment.VARIANT_LOSS: what each variant must mean for the loss.
EXPECTED_LOSS = {
    Variant.BASE: {"adakd": False},
    Variant.ADAKD: {"adakd": True, "latf": True, "idts": True, "inverse_sign": True},
    Variant.LATF: {"adakd": True, "latf": True, "idts": False},
    Variant.IDTS: {"adakd": True, "latf": False, "idts": True, "inverse_sign": True},
    Variant.FLIPPED: {"adakd": True, "latf": True, "idts": True, "inverse_sign": False},
}
# (use_latf, use_idts, inverse_sign) of the resulting LossConfig, from a template whose inverse_sign is False
EXPECTED_EFFECT = {
    Variant.BASE: (False, False, False),
    Variant.ADAKD: (True, True, True),
    Variant.LATF: (True, False, False),
    Variant.IDTS: (False, True, True),
    Variant.FLIPPED: (True, True, False),
}


def _template() -> dict:
    """A base run config whose loss switches are set opposite to as many variants as possible."""
    return {
        "mode": "distill",
        "model": {"teacher": "/t", "student": "/s", "tokenizer": "/tok"},
        "data": {"source": "/d.jsonl", "max_prompt_len": 16, "max_len": 32},
        "loss": {"divergence": "tvd", "adakd": True, "latf": False, "idts": False, "inverse_sign": False, "c": 0.7},
        "train": {"lr": 0.01, "max_steps": 3, "seed": 99},
        "output": {"dir": "/elsewhere", "log_interval": 1, "tensorboard": False},
    }


@pytest.mark.parametrize("variant", list(Variant))
@pytest.mark.parametrize("loss", [Divergence.RKL, Divergence.AB])
def test_variant_changes_exactly_its_loss_fields(tmp_path: Path, variant: Variant, loss: Divergence) -> None:
    template = _template()
    cfg = cell_config(template, Cell(loss, variant, 7), tmp_path / "cells")
    want = json.loads(json.dumps(template))
    want["loss"].update(divergence=loss.value, **EXPECTED_LOSS[variant])
    want["train"]["seed"] = 7
    want["output"].update(dir=str(tmp_path / "cells" / f"{loss.value}-{variant.value}-s7"), tensorboard=True)
    assert cfg == want
    assert template == _template(), "the template must not be modified"
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = load_config(str(path))  # also proves every key the mapping sets is a real LossConfig field
    assert (run.loss.use_latf, run.loss.use_idts, run.loss.inverse_sign) == EXPECTED_EFFECT[variant]
    assert run.loss.divergence is loss and run.loss.c == 0.7 and run.train.seed == 7


def test_flipped_differs_from_adakd_only_in_the_sign() -> None:
    """The paper's ablation (35.67 vs 39.01 ROUGE-L): full AdaKD with the temperature sign flipped."""
    a = cell_config(_template(), Cell(Divergence.RKL, Variant.ADAKD, 1), Path("/g"))
    b = cell_config(_template(), Cell(Divergence.RKL, Variant.FLIPPED, 1), Path("/g"))
    diff = {k for k in a["loss"] if a["loss"][k] != b["loss"][k]}
    assert diff == {"inverse_sign"} and b["loss"]["inverse_sign"] is False


def test_cell_names_round_trip_and_reject_other_folders() -> None:
    for cell in (Cell(Divergence.SFKL, Variant.FLIPPED, 0), Cell(Divergence.AB, Variant.ADAKD, 12)):
        assert Cell.parse(cell.name) == cell
    for name in ("template", "rkl-adakd", "rkl-adakdx-s1", "rkl-adakd-1", "rkl-adakd-s", "rkl-base-s-1", "x-base-s1"):
        assert Cell.parse(name) is None, name


# ------------------------------------------------------------------------------------------------ grid spec


def test_grid_file_then_command_line(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("losses: [rkl, fkl]\nvariants: base\nseeds: [1, 2]\nalso: ['rkl:flipped']\nembedded: true\n")
    spec = build_spec(str(grid), {"seeds": [5], "greedy": True})
    assert spec.losses == [Divergence.RKL, Divergence.FKL] and spec.variants == [Variant.BASE]
    assert spec.seeds == [5] and spec.greedy and spec.embedded
    assert [c.name for c in spec.cells()] == ["rkl-base-s5", "fkl-base-s5", "rkl-flipped-s5"]
    overlap = build_spec(None, {"embedded": True, "losses": [Divergence.RKL], "variants": [Variant.BASE],
                                "seeds": [1], "also": ["rkl,fkl:base,adakd"]})  # fmt: skip
    assert [c.name for c in overlap.cells()] == ["rkl-base-s1", "rkl-adakd-s1", "fkl-base-s1", "fkl-adakd-s1"]


@pytest.mark.parametrize(
    ("text", "cli", "message"),
    [
        ("embedded: true\nlosess: [rkl]\n", {}, "unknown grid key 'losess'"),
        ("embedded: true\nlosses: [rkl, kl]\n", {}, "'losses': 'kl' (choose from fkl, rkl"),
        ("embedded: true\nvariants: [adaptive]\n", {}, "'variants': 'adaptive'"),
        ("embedded: yes please\n", {}, "'embedded': 'yes please' is not true or false"),
        ("embedded: true\nalso: [rkl-flipped]\n", {}, "must look like LOSS"),
        ("losses: [rkl]\n", {}, "choose exactly one of --embedded"),
        ("embedded: true\n", {"base_config": "x.yaml"}, "choose exactly one of --embedded"),
        ("base_config: x.yaml\nfast: true\n", {}, "only apply with --embedded"),
        ("embedded: true\nseeds: [1, -2]\n", {}, "seeds must be >= 0"),
        ("embedded: true\nteacher_steps: 5\n", {}, "only applies with --retrain-teacher"),
        ("- a list\n", {}, "top level must be a mapping"),
    ],
)
def test_bad_grid_gives_one_clear_error(tmp_path: Path, text: str, cli: dict, message: str) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(GridError) as info:
        build_spec(str(grid), cli)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_command_line_parses_enums_and_rejects_unknown_choices(capsys: pytest.CaptureFixture) -> None:
    args = vars(experiment.build_parser().parse_args(["--embedded", "--losses", "RKL", "ab", "--variants", "flipped"]))
    assert args["losses"] == [Divergence.RKL, Divergence.AB] and args["variants"] == [Variant.FLIPPED]
    assert "seeds" not in args, "an option not given must not override the grid file"
    with pytest.raises(SystemExit):
        experiment.build_parser().parse_args(["--losses", "skd"])
    assert "choose from fkl" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ aggregation


def _row(loss: str, variant: str, seed: int, rouge: float | None, em: float | None, status: Status = Status.DONE):
    return CellResult(loss, variant, seed, status, rougeL=rouge, rougeL_eval_std=0.5, exact_match=em)


def _rows() -> list[CellResult]:
    return [
        _row("rkl", "base", 1, 10.0, 1.0),
        _row("rkl", "base", 2, 12.0, 2.0),
        _row("rkl", "base", 3, 14.0, 6.0),
        _row("rkl", "adakd", 1, 13.0, 4.0),
        _row("rkl", "adakd", 2, 15.0, 4.0),
        _row("rkl", "adakd", 3, None, None, Status.FAILED),
        _row("fkl", "base", 1, 20.0, 0.0),
        _row("fkl", "flipped", 1, 18.5, 0.0),
        _row("fkl", "flipped", 2, 99.0, 99.0, Status.STALE),  # on disk but evaluated differently: left out
    ]


def test_aggregate_against_hand_computation() -> None:
    agg = {(a.loss, a.variant): a for a in aggregate(_rows())}
    base, ada, fbase, flip = agg["rkl", "base"], agg["rkl", "adakd"], agg["fkl", "base"], agg["fkl", "flipped"]
    # rkl base ROUGE-L 10, 12, 14: mean 12, population std sqrt((4 + 0 + 4) / 3)
    assert base.rougeL_mean == pytest.approx(12.0) and base.rougeL_std == pytest.approx(math.sqrt(8 / 3))
    # exact match 1, 2, 6: mean 3, std sqrt((4 + 1 + 9) / 3)
    assert base.exact_match_mean == pytest.approx(3.0) and base.exact_match_std == pytest.approx(math.sqrt(14 / 3))
    assert base.rougeL_delta is None and base.n_seeds == 3 and base.n_cells == 3 and base.seeds == [1, 2, 3]
    # rkl adakd: the failed seed is out; 13, 15 -> 14 ± 1, delta +2 vs 12; EM 4, 4 -> 4 ± 0, delta +1
    assert (ada.rougeL_mean, ada.rougeL_std, ada.rougeL_delta) == pytest.approx((14.0, 1.0, 2.0))
    assert (ada.exact_match_mean, ada.exact_match_std, ada.exact_match_delta) == pytest.approx((4.0, 0.0, 1.0))
    assert (ada.n_seeds, ada.n_failed, ada.n_cells) == (2, 1, 3)
    assert (fbase.rougeL_mean, fbase.rougeL_std) == pytest.approx((20.0, 0.0))
    assert (flip.rougeL_mean, flip.rougeL_delta, flip.n_seeds, flip.n_cells) == pytest.approx((18.5, -1.5, 1, 2))
    lonely = aggregate([_row("jsd", "adakd", 1, 5.0, 1.0)])[0]
    assert lonely.rougeL_delta is None, "no base for the loss, so no delta"


def test_markdown_table_layout() -> None:
    variants = [("base", "base"), ("adakd", "+AdaKD"), ("flipped", "+AdaKD, flipped sign")]
    md = results_markdown(_rows(), ["rkl", "fkl"], variants, "one greedy pass")
    lines = md.splitlines()
    rouge = lines[lines.index("### ROUGE-L (x100)") + 2 :][:4]
    assert rouge[0] == "| loss | base | +AdaKD | +AdaKD, flipped sign |"
    assert rouge[2] == "| rkl | 12.00 ± 1.63 | 14.00 ± 1.00 (+2.00) [n=2] |  |"
    assert rouge[3] == "| fkl | 20.00 ± 0.00 |  | 18.50 ± 0.00 (-1.50) [n=1] |"
    em = lines[lines.index("### exact match (x100)") + 2 :][:4]
    assert em[2] == "| rkl | 3.00 ± 2.16 | 4.00 ± 0.00 (+1.00) [n=2] |  |"
    assert "- rkl-adakd-s3: failed" in md and "- fkl-flipped-s2: stale" in md
    assert "training seeds [1, 2, 3]" in md and "one greedy pass" in md


def test_reports_csv_and_png(tmp_path: Path) -> None:
    from matplotlib.image import imread

    variants = [("base", "base"), ("adakd", "+AdaKD"), ("flipped", "+AdaKD, flipped sign")]
    md = write_reports(tmp_path, _rows(), ["rkl", "fkl"], variants, "note")
    assert (tmp_path / "results.md").read_text() == md
    with open(tmp_path / "results.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    assert len(cells) == 9
    assert [c["status"] for c in cells].count("done") == 7 and cells[5]["status"] == "failed"
    assert float(cells[1]["rougeL"]) == 12.0 and cells[5]["rougeL"] == ""
    with open(tmp_path / "results_aggregate.csv", newline="") as fh:
        agg = {(r["loss"], r["variant"]): r for r in csv.DictReader(fh)}
    assert set(agg) == {("rkl", "base"), ("rkl", "adakd"), ("fkl", "base"), ("fkl", "flipped")}
    assert float(agg["rkl", "adakd"]["rougeL_delta"]) == pytest.approx(2.0) and agg["rkl", "adakd"]["seeds"] == "1 2"
    png = tmp_path / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(str(png))
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert float(pixels[..., :3].std()) > 0.01, "the chart must not be blank"


# ------------------------------------------------------------------------------------------------ resume / failures


def _base_config(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "eval.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    cfg = {
        "mode": "distill",
        "model": {"teacher": "org/teacher-on-the-hub", "student": str(tmp_path / "student")},
        "data": {"source": "train.jsonl"},
        "train": {"max_steps": 5},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "eval.jsonl"


class Recorder:
    """Stands in for pipeline.train / pipeline.evaluate (our own subprocess stages, not DeepSpeed): records each
    call and writes what the real stage writes, so the runner's resume logic is what gets tested."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.trained: list[str] = []
        self.evaluated: list[str] = []
        self.fail = fail

    def train(self, cfg: dict, nproc: int, name: str, quiet: bool = False) -> Path:
        out = Path(cfg["output"]["dir"])
        self.trained.append(out.name)
        out.mkdir(parents=True, exist_ok=True)
        (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        if out.name in self.fail:
            raise pipeline.StageError(f"stage '{name}' failed with exit code 1; see {out}.log")
        (out / "export").mkdir(exist_ok=True)
        (out / "export" / "model.safetensors").write_bytes(b"x")
        return out / "export"

    def evaluate(self, model: Path, data: Path, out: Path, nproc: int, name: str, **kw) -> dict:
        cell = out.parent.name
        self.evaluated.append(cell)
        seed = int(cell.rsplit("-s", 1)[1])
        results = _results(10.0 * seed, kw["seeds"], kw["max_new_tokens"], data)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results))
        return results


def _results(rouge: float, seeds, max_new_tokens: int, data: Path) -> dict:
    return {
        "rougeL": {"mean": rouge, "std": 0.0},
        "exact_match": {"mean": rouge / 10, "std": 0.0},
        "exact_match_strict": {"mean": 0.0, "std": 0.0},
        "decoding": {"seeds": list(seeds), "max_new_tokens": max_new_tokens},
        "data": str(data),
    }


def _spec(tmp_path: Path, **kw) -> GridSpec:
    base, eval_data = _base_config(tmp_path)
    cli = {"base_config": str(base), "eval_data": str(eval_data), "out": str(tmp_path / "grid"),
           "losses": [Divergence.RKL], "variants": [Variant.BASE, Variant.ADAKD], "seeds": [1, 2],
           "eval_seeds": [7], "max_new_tokens": 8, **kw}  # fmt: skip
    return build_spec(None, cli)


def test_resume_runs_only_missing_cells_and_reports_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(pipeline, "train", rec.train)
    monkeypatch.setattr(pipeline, "evaluate", rec.evaluate)
    monkeypatch.chdir(tmp_path)  # the base config's relative data.source exists from here
    spec = _spec(tmp_path)
    cells = tmp_path / "grid" / "cells"
    # rkl-base-s1 finished earlier (its export even deleted); rkl-adakd-s2 was trained but not evaluated
    done = cells / "rkl-base-s1" / "eval_sampled"
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps(_results(55.0, [7], 8, tmp_path / "eval.jsonl")))
    rec.train(cell_config(experiment._config_setup(spec).template, Cell(Divergence.RKL, Variant.ADAKD, 2), cells),
              1, "pre")  # fmt: skip
    rec.trained.clear()
    # a finished cell of an earlier grid into the same folder (not in this grid) is picked up too
    earlier = cells / "rkl-flipped-s1" / "eval_sampled"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text(json.dumps(_results(33.0, [7], 8, tmp_path / "eval.jsonl")))

    assert experiment.run_grid(spec) == 0
    assert rec.trained == ["rkl-base-s2", "rkl-adakd-s1", "rkl-adakd-s2"]  # s2 adakd: pipeline.train skips it
    assert rec.evaluated == ["rkl-base-s2", "rkl-adakd-s1", "rkl-adakd-s2"]
    cfg = yaml.safe_load((cells / "rkl-base-s2.yaml").read_text())
    assert cfg["model"]["teacher"] == "org/teacher-on-the-hub", "a hub name is not a path"
    assert cfg["data"]["source"] == str(tmp_path / "train.jsonl"), "a relative path that exists is made absolute"
    with open(tmp_path / "grid" / "results.csv", newline="") as fh:
        rows = {r["cell_dir"].rsplit("/", 1)[1]: r for r in csv.DictReader(fh)}
    assert {k: float(r["rougeL"]) for k, r in rows.items()} == {
        "rkl-base-s1": 55.0, "rkl-base-s2": 20.0, "rkl-adakd-s1": 10.0, "rkl-adakd-s2": 20.0, "rkl-flipped-s1": 33.0,
    }  # fmt: skip
    md = (tmp_path / "grid" / "results.md").read_text()
    assert "| rkl | 37.50 ± 17.50 | 15.00 ± 5.00 (-22.50) | 33.00 ± 0.00 (-4.50) |" in md

    rec.trained.clear(), rec.evaluated.clear()
    assert experiment.run_grid(spec) == 0, "a finished grid reruns as a no-op"
    assert rec.trained == [] and rec.evaluated == []
    assert (tmp_path / "grid" / "results.md").read_text() == md


def test_failed_cell_is_reported_and_the_grid_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(fail={"rkl-base-s2"})
    monkeypatch.setattr(pipeline, "train", rec.train)
    monkeypatch.setattr(pipeline, "evaluate", rec.evaluate)
    monkeypatch.chdir(tmp_path)
    assert experiment.run_grid(_spec(tmp_path)) == 1
    assert rec.evaluated == ["rkl-base-s1", "rkl-adakd-s1", "rkl-adakd-s2"]
    with open(tmp_path / "grid" / "results.csv", newline="") as fh:
        status = {r["cell_dir"].rsplit("/", 1)[1]: (r["status"], r["error"]) for r in csv.DictReader(fh)}
    assert status["rkl-base-s2"][0] == "failed" and "exit code 1" in status["rkl-base-s2"][1]
    assert "- rkl-base-s2: failed stage" in (tmp_path / "grid" / "results.md").read_text()


def test_fail_fast_stops_and_marks_the_rest_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(fail={"rkl-base-s2"})
    monkeypatch.setattr(pipeline, "train", rec.train)
    monkeypatch.setattr(pipeline, "evaluate", rec.evaluate)
    monkeypatch.chdir(tmp_path)
    assert experiment.run_grid(_spec(tmp_path, fail_fast=True)) == 1
    assert rec.trained == ["rkl-base-s1", "rkl-base-s2"] and rec.evaluated == ["rkl-base-s1"]
    with open(tmp_path / "grid" / "results.csv", newline="") as fh:
        status = [r["status"] for r in csv.DictReader(fh)]
    assert status == ["done", "failed", "pending", "pending"]


def test_changed_settings_are_not_silently_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(pipeline, "train", rec.train)
    monkeypatch.setattr(pipeline, "evaluate", rec.evaluate)
    monkeypatch.chdir(tmp_path)
    assert experiment.run_grid(_spec(tmp_path, seeds=[1], variants=[Variant.BASE])) == 0
    rec.trained.clear(), rec.evaluated.clear()
    # other student steps: the trained cell no longer matches its config
    assert experiment.run_grid(_spec(tmp_path, seeds=[1], variants=[Variant.BASE], student_steps=9)) == 1
    row = next(csv.DictReader(open(tmp_path / "grid" / "results.csv", newline="")))
    assert row["status"] == "failed" and "train.max_steps: 5 then, 9 now" in row["error"]
    # other evaluation seeds: the results on disk are stale, not re-used and not overwritten
    assert experiment.run_grid(_spec(tmp_path, seeds=[1], variants=[Variant.BASE], eval_seeds=[8])) == 1
    row = next(csv.DictReader(open(tmp_path / "grid" / "results.csv", newline="")))
    assert row["status"] == "stale" and "seeds [7], this grid asks for [8]" in row["error"]
    assert rec.trained == [] and rec.evaluated == []


def test_base_config_errors(tmp_path: Path) -> None:
    base, eval_data = _base_config(tmp_path)
    sft = tmp_path / "sft.yaml"
    sft.write_text(base.read_text().replace("mode: distill", "mode: sft"))
    with pytest.raises(GridError, match="a loss grid needs mode: distill"):
        experiment._config_setup(build_spec(None, {"base_config": str(sft), "eval_data": str(eval_data)}))
    with pytest.raises(GridError, match="evaluation file not found"):
        experiment._config_setup(build_spec(None, {"base_config": str(base), "eval_data": "nope.jsonl"}))
    typo = tmp_path / "typo.yaml"
    typo.write_text(base.read_text() + "loss:\n  divergance: rkl\n")
    with pytest.raises(GridError, match="unknown config key 'loss.divergance'"):
        experiment._config_setup(build_spec(None, {"base_config": str(typo), "eval_data": str(eval_data)}))


def test_main_reports_bad_input_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert experiment.main(["--losses", "rkl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("experiment: choose exactly one") and "\n" not in err
    assert experiment.main(["--embedded", "--also", "rkl:flipped", "--seeds", "4", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["rkl-base-s4", "rkl-adakd-s4", "fkl-base-s4", "fkl-adakd-s4",
                                               "rkl-flipped-s4"]  # fmt: skip


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_real_grid_on_the_embedded_default(tmp_path: Path) -> None:
    """Two real cells (rkl base / rkl+AdaKD) through launch/distill.py and launch/evaluate.py, FAST plan sizes and a
    few steps, one rank; then a rerun that must not start any stage."""
    out = tmp_path / "grid"
    argv = ["--embedded", "--fast", "--out", str(out), "--losses", "rkl", "--variants", "base", "adakd",
            "--seeds", "3", "--nproc", "1", "--student-init-steps", "2",
            "--student-steps", "3", "--eval-seeds", "1", "--max-new-tokens", "8"]  # fmt: skip
    assert experiment.main(argv) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["loss"], r["variant"], r["seed"], r["status"]) for r in rows] == [
        ("rkl", "base", "3", "done"), ("rkl", "adakd", "3", "done"),
    ]  # fmt: skip
    for r in rows:
        results = json.loads((Path(r["cell_dir"]) / "eval_sampled" / "results.json").read_text())
        assert float(r["rougeL"]) == results["rougeL"]["mean"] and 0.0 <= results["rougeL"]["mean"] <= 100.0
        cfg = yaml.safe_load((Path(r["cell_dir"]) / "config.yaml").read_text())  # what the recipe really ran
        assert cfg["loss"]["adakd"] is (r["variant"] == "adakd") and cfg["train"]["seed"] == 3
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(Path(r["cell_dir"]) / "tensorboard"))
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "| rkl |" in md
    for name in ("teacher", "untrained student", "SFT student"):  # the reference rows, from their own evaluations
        assert f"| {name} |" in md, md
    sft = json.loads((out / "references" / "eval" / "SFT_student-0" / "eval_sampled" / "results.json").read_text())
    assert f"{sft['rougeL']['mean']:.2f}" in md
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    t0 = time.perf_counter()
    assert experiment.main(argv) == 0
    assert time.perf_counter() - t0 < 20, "a finished grid must not retrain"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamp
