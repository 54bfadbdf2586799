"""Bad input: one line naming the key / file / line, exit 2, before any model or DeepSpeed is set up (issue 13).

Unit checks call the config and preflight code directly; the drills run the real launchers on 2 ranks and check that
the exit code is always 2 (no race between ranks), that stderr has one error line and no traceback, and that the
failure comes in seconds, not after the 60-120 s of model setup it used to take.
"""

from __future__ import annotations

import json
import time

import pytest

from adakd_ds.config.load import load_config
from adakd_ds.config.ranges import NUMERIC_RANGES, numeric_keys
from adakd_ds.config.schema import DataFormat, RunConfig
from adakd_ds.data.errors import DataError
from adakd_ds.data.source import precheck_source
from adakd_ds.engine.guard.preflight import PathKind, check_model_path, preflight
from tests.engine_fixtures import run_launch, write_run_config


def test_every_numeric_key_has_a_range():
    assert set(numeric_keys(RunConfig())) == set(NUMERIC_RANGES)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["--output.log_interval", "0"], "output.log_interval"),
        (["--data.max_prompt_len", "-5", "--data.max_len", "-1"], "data.max_prompt_len"),
        (["--data.max_prompt_len", "-5", "--data.max_len", "-1"], "data.max_len"),
        (["--loss.temperature", "0"], "loss.temperature"),
        (["--train.lr", "-1e-4"], "train.lr"),
        (["--train.lr", "nan"], "train.lr"),
        (["--output.keep_last", "0"], "output.keep_last"),
        (["--train.max_bad_steps", "0"], "train.max_bad_steps"),
        (["--loss.ema_beta", "1.0"], "loss.ema_beta"),
        (["--train.warmup_ratio", "1.5"], "train.warmup_ratio"),
    ],
)
def test_out_of_range_values_name_their_key(overrides, key):
    base = ["--model.teacher", "t", "--model.student", "s", "--data.source", "d.jsonl"]
    cfg = load_config(None, base + overrides)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert f"{key} must be in" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides,expected,relation",
    [
        (["--data.max_len", "-1"], "data.max_len must be in [2, inf), got -1", "max_prompt_len"),
        (["--loss.r_min", "1.5"], "loss.r_min must be in (0, 1], got 1.5", "ratio_init"),
        (
            ["--policy.data_policy", "distillm", "--data.eval_source", "e.jsonl", "--train.eval_interval", "-1"],
            "train.eval_interval must be >= 0, got -1",
            "distillm needs",
        ),
    ],
)
def test_a_keys_own_range_is_checked_before_any_relation(overrides, expected, relation):
    """Issue 25: a value out of its own range is named with its value; no relation between keys is reported on it."""
    base = ["--model.teacher", "t", "--model.student", "s", "--data.source", "d.jsonl"]
    with pytest.raises(ValueError) as err:
        load_config(None, base + overrides).validate()
    assert str(err.value) == f"invalid config: {expected}"
    assert relation not in str(err.value)


def test_the_defaults_and_the_edges_pass():
    cfg = load_config(None, ["--model.teacher", "t", "--model.student", "s", "--data.source", "d.jsonl"])
    for override in (["--train.max_steps", "-1"], ["--train.max_steps", "0"], ["--loss.c", "0"], ["--loss.eps", "0"]):
        load_config(
            None, ["--model.teacher", "t", "--model.student", "s", "--data.source", "d.jsonl", *override]
        ).validate()
    cfg.validate()


def test_model_paths(tiny_setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model_path("model.teacher", str(tiny_setup.teacher), PathKind.MODEL)
    check_model_path("model.tokenizer", str(tiny_setup.tokenizer), PathKind.TOKENIZER)
    check_model_path("model.student_config", str(tiny_setup.student_config / "config.json"), PathKind.CONFIG)
    cases = [
        ("/nonexistent", PathKind.MODEL, "no such directory"),
        (str(tiny_setup.tokenizer), PathKind.MODEL, "without config.json"),
        (str(tiny_setup.student_config), PathKind.TOKENIZER, "without tokenizer_config.json"),
        ("nobody-cached/model-x", PathKind.MODEL, "not in the hub cache"),
    ]
    for value, kind, expected in cases:
        with pytest.raises(ValueError) as err:
            check_model_path("model.teacher", value, kind)
        assert str(err.value).startswith(f"model.teacher: {value}") and expected in str(err.value), err.value


def _bad_utf8_file(tmp_path, suffix: str):
    good = json.dumps({"prompt": "a b", "response": "c d"}).encode()
    lines = [good, good, good[:12] + b"\xff\xfe" + good[12:], good]
    path = tmp_path / f"bad{suffix}"
    if suffix == ".json":
        path.write_bytes(b"[\n" + b",\n".join(lines) + b"\n]\n")
    else:
        path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("suffix,line", [(".jsonl", 3), (".json", 4)])
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, suffix, line):
    path = _bad_utf8_file(tmp_path, suffix)
    with pytest.raises(DataError) as err:
        precheck_source(str(path), DataFormat.AUTO)
    assert str(err.value) == f"{path}:{line}: not valid UTF-8 (byte 0xff at column 13)"


def test_precheck_reports_the_detected_format_and_the_first_bad_line(tiny_setup, tmp_path):
    assert precheck_source(str(tiny_setup.data), DataFormat.AUTO) is not None
    path = tmp_path / "missing.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError) as err:
        precheck_source(str(path), DataFormat.AUTO)
    assert str(err.value).startswith(f"{path}:2: ") and "response" in str(err.value)


def test_preflight_takes_no_lock_for_a_bad_config(tiny_setup, tmp_path):
    cfg = load_config(str(write_run_config(tiny_setup, tmp_path / "o")), ["--data.source", str(tmp_path / "no.jsonl")])
    with pytest.raises(DataError):
        preflight(cfg, rank=0)
    assert not (tmp_path / "o" / ".adakd-run.lock").exists()


# ------------------------------------------------------------------------------------------- through the launchers
def _single_error_line(output: str) -> str:
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "adakd-distill: error:" in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


@pytest.mark.faults
@pytest.mark.parametrize("case", ["missing-field", "missing-teacher"])
def test_bad_input_through_the_deepspeed_launcher_is_one_line_and_exit_2(tiny_setup, tmp_path, case):
    cfg = write_run_config(tiny_setup, tmp_path / "out")
    if case == "missing-field":
        bad = _file_missing_a_field(tiny_setup, tmp_path)
        extra, expected = ["--data.source", str(bad)], f"{bad}:5: "
    else:
        extra, expected = ["--model.teacher", "/nonexistent"], "model.teacher: /nonexistent: no such directory"
    t0 = time.time()
    res = run_launch(["--config", str(cfg), *extra], launcher="deepspeed", nproc=2, timeout=120)
    assert res.returncode == 2, res.output[-3000:]  # both ranks fail alike, in preflight: no race, no collective
    assert expected in _single_error_line(res.output)
    assert "preflight ok" not in res.output
    assert not (tmp_path / "out" / "checkpoints").exists(), "nothing may be written for bad input"
    # before the fix this took 60-120 s of model setup; now the launcher and one torch import per rank
    assert time.time() - t0 < 60


def _file_missing_a_field(tiny_setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = tiny_setup.data.read_text().splitlines()
    record = json.loads(lines[4])
    record.pop(next(k for k in record if k in ("response", "output")))
    lines[4] = json.dumps(record)
    bad.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize("case", ["non-utf8", "log-interval-0", "negative-lr", "bad-ds-config"])
def test_bad_input_in_process_is_one_line_and_exit_2(tiny_setup, tmp_path, capsys, case):
    """The console entry point itself (what every rank runs), in this process: nothing heavy is reached."""
    from adakd_ds.engine.cli import distill_main

    cfg = write_run_config(tiny_setup, tmp_path / "out")
    if case == "non-utf8":
        bad = tmp_path / "bad.jsonl"
        lines = tiny_setup.data.read_text().splitlines()
        bad.write_bytes(("\n".join(lines[:6]) + "\n").encode() + b'{"x": "\xff"}\n')
        extra, expected = ["--data.source", str(bad)], f"{bad}:7: not valid UTF-8"
    elif case == "log-interval-0":
        extra, expected = ["--output.log_interval", "0"], "output.log_interval must be in [1, inf), got 0"
    elif case == "negative-lr":
        extra, expected = ["--train.lr", "-0.001"], "train.lr must be in (0, inf), got -0.001"
    else:
        ds = tmp_path / "ds.json"
        ds.write_text('{"train_batch_size": 8,\n  oops}')
        extra, expected = ["--deepspeed.student", str(ds)], f"{ds}:2: not valid JSON"
    assert distill_main(["--config", str(cfg), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and expected in captured.err, captured.err
    assert not (tmp_path / "out" / ".adakd-run.lock").exists()
