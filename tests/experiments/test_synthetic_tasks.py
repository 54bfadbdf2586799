"""The embedded synthetic data and its tokenizer: determinism, disjoint splits, and answers recomputed independently."""

from __future__ import annotations

import json
import string

import pytest

from adakd_ds.experiments.testbed.synthetic_tasks import Task, generate_records, generate_splits, write_jsonl
from adakd_ds.experiments.testbed.tokenizer_train import train_tokenizer

_SHIFT = str.maketrans(string.ascii_lowercase, string.ascii_lowercase[1:] + "a")


def _solve(task: str, inp: str) -> str:
    """An independent solver for each family, from the input text alone."""
    if task == "reverse":
        return " ".join(inp.split()[::-1])
    if task == "sort":
        return " ".join(sorted(inp.split()))
    if task == "add":
        a, plus, b = inp.split()
        assert plus == "+" and 2 <= len(a) <= 4 and 2 <= len(b) <= 4
        return str(int(a) + int(b))
    if task == "upper":
        return inp.upper()
    if task == "lower":
        return inp.lower()
    if task == "caesar":
        return inp.translate(_SHIFT)
    if task == "nth":
        n, rest = inp.split(": ")
        return rest.split()[int(n) - 1]
    if task == "count":
        letter, rest = inp.split(": ")
        return str(sum(1 for ch in rest if ch == letter))
    raise AssertionError(f"unknown task {task}")


def test_same_seed_same_data_and_different_seed_different_data():
    a = generate_splits(300, 40, 60, seed=3)
    b = generate_splits(300, 40, 60, seed=3)
    c = generate_splits(300, 40, 60, seed=4)
    assert a == b
    assert a["train"] != c["train"] and a["test"] != c["test"]


def test_split_sizes_and_disjoint_inputs():
    splits = generate_splits(500, 50, 80, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 500, "val": 50, "test": 80}
    keys = {name: {(r["instruction"], r["input"]) for r in recs} for name, recs in splits.items()}
    assert all(len(keys[name]) == len(splits[name]) for name in splits)  # no duplicate inside a split
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    # stricter: the same input never shows up under another phrasing of the same family
    by_task = {name: {(r["task"], r["input"]) for r in recs} for name, recs in splits.items()}
    assert not by_task["train"] & by_task["test"] and not by_task["train"] & by_task["val"]


def test_test_split_is_stable_when_train_grows():
    assert generate_splits(100, 10, 30, seed=1)["test"] == generate_splits(900, 10, 30, seed=1)["test"]


def test_every_family_present_and_answers_correct():
    from adakd_ds.experiments.testbed.synthetic_tasks import CLASSIC

    records = generate_records(1600, seed=7)  # the default: the deterministic families
    assert {r["task"] for r in records} == {t.value for t in CLASSIC}
    for r in records:
        assert set(r) == {"instruction", "input", "output", "task"}
        assert r["output"] == _solve(r["task"], r["input"]), r


def test_answers_vary():
    """Guard against degenerate families (e.g. a count that is always 0, nth always the first word)."""
    records = generate_records(800, seed=2)
    for task in ("count", "nth", "add"):
        outs = {r["output"] for r in records if r["task"] == task}
        assert len(outs) >= 4, (task, outs)
    nth_positions = {int(r["input"].split(":")[0]) for r in records if r["task"] == "nth"}
    assert nth_positions >= {1, 2, 3, 4, 5}


def test_task_subset_and_bad_sizes():
    recs = generate_records(20, seed=0, tasks=["add", Task.SORT])
    assert {r["task"] for r in recs} == {"add", "sort"}
    with pytest.raises(ValueError, match="n_val"):
        generate_splits(10, -1, 5)


def test_write_jsonl_roundtrip(tmp_path):
    recs = generate_records(10, seed=0)
    path = tmp_path / "sub" / "train.jsonl"
    write_jsonl(recs, str(path))
    assert [json.loads(line) for line in path.read_text().splitlines()] == recs


def test_tokenizer_is_deterministic_loads_offline_and_keeps_responses_short(tmp_path):
    from transformers import AutoTokenizer

    splits = generate_splits(600, 0, 100, seed=0)
    write_jsonl(splits["train"], str(tmp_path / "train.jsonl"))
    a = train_tokenizer(str(tmp_path / "train.jsonl"), str(tmp_path / "a"), vocab_size=512)
    train_tokenizer(str(tmp_path / "train.jsonl"), str(tmp_path / "b"), vocab_size=512)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    tok = AutoTokenizer.from_pretrained(a, local_files_only=True)
    assert len(tok) == 512
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 3)
    ids = tok("Add the two numbers.")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    for r in splits["test"]:  # unseen records still round-trip and stay short
        out_ids = tok(r["output"], add_special_tokens=False)["input_ids"]
        assert tok.decode(out_ids) == r["output"]
        assert len(out_ids) <= 24, (r, len(out_ids))
    text = "### Instruction:\nx  y\n\n### Response:\né 中"  # newlines, double spaces, unseen characters
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], str(tmp_path / "c"), vocab_size=100)


def test_stochastic_records_are_valid_and_vary():
    from adakd_ds.experiments.testbed.synthetic_tasks import STOCHASTIC, is_valid

    records = generate_records(800, seed=3, tasks=sorted(STOCHASTIC))
    assert all(is_valid(r["task"], r["input"], r["output"]) for r in records)
    for task in STOCHASTIC:  # one prompt, several different correct answers: that is what KD can transfer
        by_prompt: dict[str, set[str]] = {}
        for r in records:
            if r["task"] == task.value:
                by_prompt.setdefault(r["input"], set()).add(r["output"])
        assert max(map(len, by_prompt.values())) >= 2 or task.value in ("any_order", "pick2"), task
    shuffled = [r for r in records if r["task"] == "any_order"]
    assert sum(r["output"] != r["input"] for r in shuffled) > len(shuffled) // 2  # not just the input order


@pytest.mark.parametrize(
    ("task", "inp", "response", "valid"),
    [
        ("any_order", "cat dog egg", "egg cat dog", True),
        ("any_order", "cat dog egg", "egg cat", False),
        ("any_order", "cat dog egg", "egg cat cat", False),
        ("pick2", "cat dog egg fox", "dog fox", True),
        ("pick2", "cat dog egg fox", "fox dog", False),  # input order
        ("pick2", "cat dog egg fox", "dog dog", False),
        ("name3", "b", "bee bat bull", True),
        ("name3", "b", "bee bee bull", False),
        ("name3", "b", "bee cat bull", False),
        ("sentence", "cat", "the big cat {v} in the {p}", True),
        ("sentence", "cat", "the big dog {v} in the {p}", False),
        ("reverse", "a b c", "c b a", True),
        ("reverse", "a b c", "a b c", False),
        ("caesar", "zoo", "app", True),
        ("nth", "2: cat dog egg", "dog", True),
    ],
)
def test_is_valid_against_hand_made_answers(task, inp, response, valid):
    from adakd_ds.experiments.testbed.synthetic_tasks import ANIMAL_TABLE, is_valid

    verbs, places = ANIMAL_TABLE["cat"]
    assert is_valid(task, inp, response.format(v=verbs[0], p=places[-1])) is valid


def test_solve_matches_the_independent_solver():
    from adakd_ds.experiments.testbed.synthetic_tasks import solve

    for r in generate_records(400, seed=11):
        assert solve(r["task"], r["input"]) == _solve(r["task"], r["input"]), r
    with pytest.raises(ValueError, match="no single answer"):
        solve("pick2", "a b c")
