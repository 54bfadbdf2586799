"""One table of record formats for training and evaluation (issue 25): the same keys, detected the same way.

A Dolly file in {prompt, answer} form (as many public copies are) used to be scored by adakd-eval but refused by
training ("missing field 'response' or 'completion'"). Here every format of the table is fed to both readers, and
docs/formats.md must be what the table prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adakd_ds.config.schema import DataConfig, DataFormat
from adakd_ds.data import DataError, load_and_tokenize, render_example, render_prompt
from adakd_ds.data.format_doc import markdown
from adakd_ds.data.format_table import FORMATS, EvalFormat
from adakd_ds.data.formats import detect_format
from adakd_ds.data.source import precheck_source
from adakd_ds.eval.formats import load_eval_samples
from tests.helpers_tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
TEMPLATED = "### Instruction:\nname a colour\n\n### Response:\n"
# The same three examples in the forms users have; each pair must give the same samples.
PAIRS = {
    "dolly {prompt, answer}": (
        [{"prompt": TEMPLATED, "answer": "red"}, {"prompt": "say hi", "answer": "hi there"}, {"prompt": "x", "answer": "y"}],
        [{"prompt": TEMPLATED, "response": "red"}, {"prompt": "say hi", "response": "hi there"}, {"prompt": "x", "response": "y"}],
    ),
    "dolly {instruction, context, answer}": (
        [{"instruction": "list colours", "context": "red blue", "answer": "red and blue", "category": "qa"},
         {"instruction": "name a cat", "context": "", "answer": "tom"}],
        [{"instruction": "list colours", "input": "red blue", "response": "red and blue"},
         {"instruction": "name a cat", "input": "", "output": "tom"}],
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _jsonl(path: Path, records: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_docs_formats_md_is_what_the_table_prints():
    committed = (REPO / "docs" / "formats.md").read_text(encoding="utf-8")
    assert committed == markdown(), "regenerate it: python -m adakd_ds.data.format_doc > docs/formats.md"
    for row in FORMATS:  # every row, and each of its key names, is in the doc
        assert f"| {row.name} |" in committed and all(f"`{n}`" in committed for f in row.fields for n in f.names)


@pytest.mark.parametrize("name", list(PAIRS))
def test_a_dolly_answer_file_trains_to_the_same_samples_and_is_evaluated(tmp_path, tok, name):
    answer_form, response_form = PAIRS[name]
    a = _jsonl(tmp_path / "dolly.jsonl", answer_form)
    b = _jsonl(tmp_path / "reference.jsonl", response_form)
    assert precheck_source(a, DataFormat.AUTO) is precheck_source(b, DataFormat.AUTO) is not None  # the preflight
    got = load_and_tokenize(DataConfig(source=a, cache_dir=str(tmp_path / "c1")), tok)
    ref = load_and_tokenize(DataConfig(source=b, cache_dir=str(tmp_path / "c2")), tok)
    assert got.format is ref.format and got.num_records == ref.num_records == len(answer_form)
    assert got.dataset["input_ids"] == ref.dataset["input_ids"] and got.dataset["labels"] == ref.dataset["labels"]
    # and the same file is evaluated: the references are the answers, the prompts exactly the training prompts
    samples, _ = load_eval_samples(a)
    assert [s.references for s in samples] == [[r["answer"]] for r in answer_form]
    trained = [render_example(r, DataFormat.AUTO)[0] for r in response_form]
    assert [render_prompt(s.record, s.fmt) for s in samples] == trained


@pytest.mark.parametrize("row", FORMATS, ids=[r.name for r in FORMATS])
def test_every_format_of_the_table_is_read_the_same_way_by_both(tmp_path, tok, row):
    """The table's own example: evaluation detects its format; training detects the same row and trains on it, or
    refuses it in one line as evaluation-only."""
    path = _jsonl(tmp_path / "d.jsonl", [row.example, row.example])
    samples, fmt = load_eval_samples(path)
    assert fmt is row.evaluation and samples
    assert EvalFormat(row.training.value if row.training else row.evaluation.value) is row.evaluation
    if row.training is None:
        with pytest.raises(DataError, match=rf"evaluation-only format '{row.name}'"):
            detect_format(row.example)
        with pytest.raises(DataError, match=rf"d\.jsonl:1: keys .* evaluation-only format '{row.name}'") as err:
            precheck_source(path, DataFormat.AUTO)
        assert "\n" not in str(err.value)
        return
    assert detect_format(row.example) is row.training
    data = load_and_tokenize(DataConfig(source=path, cache_dir=str(tmp_path / "c")), tok)
    assert data.format is row.training and data.num_records == 2


def test_an_unknown_shape_is_one_line_naming_file_and_line_exit_2(tiny_setup, tmp_path, capsys):
    from adakd_ds.engine.cli import distill_main
    from adakd_ds.eval.evaluate import eval_main
    from tests.engine_fixtures import write_run_config

    bad = _jsonl(tmp_path / "odd.jsonl", [{"question": "q", "reply": "a"}])
    cfg = write_run_config(tiny_setup, tmp_path / "out")
    assert distill_main(["--config", str(cfg), "--data.source", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:1: cannot detect the data format from keys ['question', 'reply']" in err
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--model", str(tiny_setup.teacher), "--data", bad, "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert f"{bad}:1: cannot detect the data format from keys ['question', 'reply']" in err
