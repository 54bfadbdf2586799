"""The run config: file + CLI overrides fill one dataclass tree; anything unknown or ill-typed is one clear error."""

from __future__ import annotations

import pytest
import yaml

from adakd_ds.config.load import (
    ConfigError,
    config_to_dict,
    load_config,
    parse_overrides,
    resolve_shipped_path,
    save_config,
)
from adakd_ds.config.schema import Divergence, DType, Indicator, RunConfig


def _write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_file_then_overrides_last_wins(tmp_path):
    path = _write(tmp_path, {"loss": {"divergence": "fkl", "c": 0.25}, "train": {"lr": 1e-3, "dtype": "bf16"}})
    cfg = load_config(path, ["--loss.divergence", "jsd", "--train.lr=2e-4", "--local_rank=1", "--loss.adakd", "false"])
    assert cfg.loss.divergence is Divergence.JSD and cfg.loss.c == 0.25
    assert cfg.train.lr == 2e-4 and cfg.train.dtype is DType.BF16
    assert cfg.loss.adakd is False and cfg.loss.indicator is Indicator.HELLINGER  # untouched default


@pytest.mark.parametrize(
    "data,where,key",
    [
        ({"loss": {"divergnce": "rkl"}}, "run.yaml", "loss.divergnce"),
        ({"trian": {"lr": 1}}, "run.yaml", "trian"),
        ({"model": {"teacher": {"path": "x"}}}, "run.yaml", "model.teacher"),
    ],
)
def test_unknown_or_misplaced_key_names_the_key_and_file(tmp_path, data, where, key):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    assert where in str(err.value) and f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_unknown_cli_key_and_bad_values():
    with pytest.raises(ConfigError, match="command line: unknown config key 'train.lrr'"):
        load_config(None, ["--train.lrr", "1"])
    with pytest.raises(ConfigError, match=r"choose from fkl, rkl, jsd, tvd, sfkl, srkl, ab"):
        load_config(None, ["--loss.divergence", "adaptive-focuskd"])  # no substring dispatch
    with pytest.raises(ConfigError, match="'train.micro_batch': cannot read 2.5 as int"):
        load_config(None, ["--train.micro_batch", "2.5"])
    with pytest.raises(ConfigError, match="'loss.adakd': cannot read 'maybe' as bool"):
        load_config(None, ["--loss.adakd", "maybe"])
    with pytest.raises(ConfigError, match="--train.lr needs a value"):
        parse_overrides(["--train.lr"])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))


def test_validate_lists_every_problem():
    cfg = RunConfig()
    cfg.loss.kd_ratio = 1.5
    cfg.loss.jsd_beta = 1.0
    cfg.train.micro_batch = 0
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    for part in ("model.teacher is required", "data.source is required", "kd_ratio", "jsd_beta", "train.micro_batch"):
        assert part in msg


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["--loss.divergence", "ab", "--model.teacher", "t", "--output.dir", str(tmp_path)])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.loss.divergence is Divergence.AB


def test_shipped_ds_config_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = resolve_shipped_path(RunConfig().deepspeed.student)  # "ds_configs/zero3.json", not under tmp_path
    assert found.endswith("ds_configs/zero3.json") and found != "ds_configs/zero3.json"
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero3.json").write_text("{}")
    assert resolve_shipped_path("ds_configs/zero3.json") == "ds_configs/zero3.json"  # the user's own file wins
    assert resolve_shipped_path("nope/x.json") == "nope/x.json"  # left for the loader to report
