"""The data pipeline: formats, tokenisation layout, truncation, caching, error messages, fingerprint, collate."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

from adakd_ds.config.schema import DataConfig, DataFormat
from adakd_ds.data import (
    Collator,
    DataError,
    GlobalBatchSampler,
    build_dataset,
    dataset_fingerprint,
    encode_prompts,
    load_and_tokenize,
    pad_token_id,
    render_example,
    render_prompt,
)
from adakd_ds.data import tokenize as tokenize_module
from tests.helpers_tokenizer import BOS_ID, EOS_ID, build_tiny_tokenizer

INSTRUCTION_RECORDS = [
    {"instruction": "name the capital of france", "input": "", "output": "paris is the capital"},
    {"instruction": "list three colors", "context": "red green blue", "response": "red, green and blue"},
    {"instruction": "what is a cat", "output": "a cat is an animal"},
    {"instruction": "write a story", "input": "a dog and a cat", "output": "the dog made tea for the cat."},
    {"instruction": "give one number", "input": None, "output": "five"},
]


@pytest.fixture(scope="session")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tok_no_bos(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Any:
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tok_no_bos")
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out, add_bos_token=False)


def write_jsonl(path: Path, records: list[Any], raw_lines: dict[int, str] | None = None) -> str:
    lines = [json.dumps(r) for r in records]
    for index, text in (raw_lines or {}).items():
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def cfg(tmp_path: Path, source: str, **kw: Any) -> DataConfig:
    return DataConfig(source=source, cache_dir=str(tmp_path / "hf_cache"), **kw)


def reference_sample(tok: Any, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """The layout written out by hand: tokenizer's own BOS, prompt, response, EOS; labels -100 over the prompt."""
    p_ids = tok(prompt)["input_ids"]  # add_special_tokens=True: the tokenizer's own BOS
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p_ids + r_ids, [-100] * len(p_ids) + r_ids


def test_instruction_prompts_follow_the_documented_template() -> None:
    fmt = DataFormat.INSTRUCTION
    with_input = "### Instruction:\nlist three colors\n\n### Input:\nred green blue\n\n### Response:\n"
    assert render_prompt(INSTRUCTION_RECORDS[1], fmt) == with_input
    assert (
        render_prompt(INSTRUCTION_RECORDS[0], fmt) == "### Instruction:\nname the capital of france\n\n### Response:\n"
    )
    assert render_prompt(INSTRUCTION_RECORDS[4], DataFormat.AUTO).endswith("give one number\n\n### Response:\n")
    assert render_example(INSTRUCTION_RECORDS[1], fmt)[1] == "red, green and blue"  # 'response' alias
    pr = {"prompt": "say hello", "completion": "hello world"}
    assert render_example(pr, DataFormat.AUTO) == ("say hello", "hello world")


def test_instruction_jsonl_tokenises_to_the_reference_layout(tmp_path: Path, tok: Any) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)
    data = load_and_tokenize(cfg(tmp_path, source), tok)
    assert data.format is DataFormat.INSTRUCTION and data.num_records == 5 and data.num_dropped == 0
    assert data.dataset.column_names == ["input_ids", "labels"]
    for record, sample in zip(INSTRUCTION_RECORDS, data.dataset, strict=True):
        expected_ids, expected_labels = reference_sample(
            tok, render_prompt(record, DataFormat.INSTRUCTION), render_example(record, DataFormat.INSTRUCTION)[1]
        )
        assert sample["input_ids"] == expected_ids
        assert sample["labels"] == expected_labels
        assert sample["input_ids"][0] == BOS_ID and sample["input_ids"][-1] == EOS_ID
        assert sample["input_ids"].count(BOS_ID) == 1


def test_tokenizer_without_bos_gets_none(tmp_path: Path, tok_no_bos: Any) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "say hello", "response": "hello world"}])
    (sample,) = build_dataset(cfg(tmp_path, source), tok_no_bos)
    p_ids = tok_no_bos("say hello", add_special_tokens=False)["input_ids"]
    assert BOS_ID not in sample["input_ids"]
    assert sample["input_ids"][: len(p_ids)] == p_ids and sample["input_ids"][-1] == EOS_ID


def test_messages_use_the_chat_template_and_train_only_the_last_assistant(tmp_path: Path, tok: Any) -> None:
    conversation = [
        {"role": "system", "content": "be good"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "name a color"},
        {"role": "assistant", "content": "blue"},
    ]
    source = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation}])
    (sample,) = build_dataset(cfg(tmp_path, source), tok)
    prompt_text = tok.apply_chat_template(conversation[:4], tokenize=False, add_generation_prompt=True)
    assert prompt_text.startswith("<s><|system|>") and prompt_text.endswith("<|user|>\nname a color\n<|assistant|>\n")
    p_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]  # the template writes BOS itself
    r_ids = tok("blue", add_special_tokens=False)["input_ids"] + [EOS_ID]  # "blue\n" with the whitespace stripped
    assert sample["input_ids"] == p_ids + r_ids
    assert sample["labels"] == [-100] * len(p_ids) + r_ids
    assert sample["input_ids"].count(BOS_ID) == 1
    assert render_prompt({"messages": conversation}, DataFormat.MESSAGES, tok) == prompt_text


def test_prompt_is_cut_from_the_left_and_the_sample_from_the_right(tmp_path: Path, tok: Any) -> None:
    long_prompt = " ".join(["the dog made tea"] * 30)
    long_response = " ".join(["a cat is an animal"] * 30)
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": long_prompt, "response": long_response}])
    (sample,) = build_dataset(cfg(tmp_path, source, max_prompt_len=16, max_len=40), tok)
    full_prompt = tok(long_prompt)["input_ids"]
    assert len(full_prompt) > 16
    assert sample["input_ids"][:16] == [BOS_ID] + full_prompt[-15:]  # BOS kept, the prompt's END kept
    assert sample["labels"][:16] == [-100] * 16
    response = tok(long_response, add_special_tokens=False)["input_ids"]
    assert len(sample["input_ids"]) == len(sample["labels"]) == 40
    assert sample["labels"][16:] == response[:24]  # cut from the right: the EOS is gone
    assert encode_prompts(tok, [long_prompt], 16) == [sample["input_ids"][:16]]


def test_samples_without_a_response_token_are_dropped_and_counted(
    tmp_path: Path, tok: Any, caplog: pytest.LogCaptureFixture
) -> None:
    short = {"prompt": "hi", "response": "hello"}
    long = {"prompt": " ".join(["the cat"] * 20), "response": "hello"}
    source = write_jsonl(tmp_path / "d.jsonl", [short, long, short])
    with caplog.at_level(logging.WARNING):
        data = load_and_tokenize(cfg(tmp_path, source, max_prompt_len=12, max_len=12), tok)
    assert (data.num_records, data.num_dropped, len(data.dataset)) == (3, 1, 2)
    assert "dropped 1 of 3" in caplog.text
    only_long = write_jsonl(tmp_path / "long.jsonl", [long])
    with pytest.raises(DataError, match="no samples left"):
        build_dataset(cfg(tmp_path, only_long, max_prompt_len=12, max_len=12), tok)


def test_second_build_reuses_the_cache(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = tokenize_module.render_example

    def counting(*args: Any, **kwargs: Any) -> tuple[str, str]:
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenize_module, "render_example", counting)
    source = write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)
    config = cfg(tmp_path, source)
    first = build_dataset(config, tok)
    assert calls["n"] == len(INSTRUCTION_RECORDS)
    cache = first.cache_files[0]["filename"]
    assert cache.startswith(str(tmp_path / "hf_cache"))
    mtime = os.path.getmtime(cache)
    second = build_dataset(config, tok)
    assert calls["n"] == len(INSTRUCTION_RECORDS)  # not tokenised again
    assert second.cache_files[0]["filename"] == cache and os.path.getmtime(cache) == mtime
    assert second[:] == first[:]
    build_dataset(cfg(tmp_path, source, max_len=64), tok)  # another setting: tokenised again
    assert calls["n"] == 2 * len(INSTRUCTION_RECORDS)


def test_json_and_parquet_give_the_same_samples_as_jsonl(tmp_path: Path, tok: Any) -> None:
    records = [
        {"instruction": r["instruction"], "output": r.get("output") or r["response"]} for r in INSTRUCTION_RECORDS
    ]
    from_jsonl = build_dataset(cfg(tmp_path, write_jsonl(tmp_path / "d.jsonl", records)), tok)
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(records), encoding="utf-8")
    from_json = build_dataset(cfg(tmp_path, str(json_path)), tok)
    parquet_path = str(tmp_path / "d.parquet")
    datasets.Dataset.from_list(records).to_parquet(parquet_path)
    from_parquet = build_dataset(cfg(tmp_path, parquet_path), tok)
    assert from_jsonl[:] == from_json[:] == from_parquet[:]


@pytest.mark.parametrize(
    ("lines", "raw", "expected"),
    [
        (INSTRUCTION_RECORDS[:3], {2: '{"instruction": "x", "output": '}, r"d\.jsonl:3: not valid JSON"),
        (INSTRUCTION_RECORDS[:2] + [{"instruction": "x"}], {}, r"d\.jsonl:3: missing field 'output' or 'response'"),
        (INSTRUCTION_RECORDS[:1] + [{"instruction": "x", "output": 3}], {1: ""}, r"d\.jsonl:3: field 'output'.*string"),
        ([{"prompt": "p", "response": "r"}, [1, 2]], {}, r"d\.jsonl:2: expected a JSON object"),
        ([{"question": "q", "answer": "a"}], {}, r"d\.jsonl:1: cannot detect the data format.*'question'"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], {}, r"d\.jsonl:1: .*no 'assistant' message"),
        ([{"messages": [{"role": "user"}]}], {}, r"d\.jsonl:1: messages\[0\] is missing field 'content'"),
        ([], {}, r"d\.jsonl: the dataset is empty"),
    ],
)
def test_bad_jsonl_names_file_and_line(
    tmp_path: Path, tok: Any, lines: list[Any], raw: dict[int, str], expected: str
) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", lines, raw)
    with pytest.raises(DataError, match=expected) as info:
        build_dataset(cfg(tmp_path, source), tok)
    assert "\n" not in str(info.value)


def test_explicit_format_must_match_the_records(tmp_path: Path, tok: Any) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing field 'instruction' \(data format 'instruction'\)"):
        build_dataset(cfg(tmp_path, source, format=DataFormat.INSTRUCTION), tok)


def test_bad_json_and_parquet_name_the_record(tmp_path: Path, tok: Any) -> None:
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps([{"prompt": "a", "response": "b"}, {"prompt": "c"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.json: record 1: missing field 'response' or 'completion'"):
        build_dataset(cfg(tmp_path, str(json_path)), tok)
    parquet_path = str(tmp_path / "d.parquet")
    datasets.Dataset.from_list([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": None}]).to_parquet(
        parquet_path
    )
    with pytest.raises(DataError, match=r"d\.parquet: record 1: missing field 'response' or 'completion'"):
        build_dataset(cfg(tmp_path, parquet_path), tok)
    with pytest.raises(DataError, match=r"nope\.jsonl: data file not found"):
        build_dataset(cfg(tmp_path, str(tmp_path / "nope.jsonl")), tok)
    (tmp_path / "d.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported data file type"):
        build_dataset(cfg(tmp_path, str(tmp_path / "d.csv")), tok)


def test_messages_need_a_chat_template(tmp_path: Path, tok: Any) -> None:
    plain = tok.__class__.from_pretrained(tok.name_or_path)
    plain.chat_template = None
    source = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: format 'messages' needs a tokenizer with a chat_template"):
        build_dataset(cfg(tmp_path, source), plain)


def test_dataset_fingerprint_follows_content_and_settings(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)
    base = dataset_fingerprint(DataConfig(source=source))
    copy = tmp_path / "copy" / "d.jsonl"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    os.utime(copy, (1, 1))  # another mtime and path, same content: the same data
    assert dataset_fingerprint(DataConfig(source=str(copy))) == base
    assert dataset_fingerprint(DataConfig(source=source, max_len=64)) != base
    assert dataset_fingerprint(DataConfig(source=source, format=DataFormat.INSTRUCTION)) != base
    write_jsonl(copy, INSTRUCTION_RECORDS[:4])
    assert dataset_fingerprint(DataConfig(source=str(copy))) != base


def test_collate_right_pads(tok: Any) -> None:
    samples = [
        {"input_ids": [1, 5, 6, 7, 2], "labels": [-100, -100, 6, 7, 2]},
        {"input_ids": [1, 9, 2], "labels": [-100, 9, 2]},
    ]
    assert tok.pad_token_id is None
    pad = pad_token_id(tok)
    assert pad == EOS_ID  # no pad token: fall back to EOS
    batch = Collator.for_tokenizer(tok)(samples)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 5) for t in batch.values())
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 9, 2, pad, pad]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 2], [-100, 9, 2, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_dataloader_with_sampler_and_collate(tmp_path: Path, tok: Any) -> None:
    records = [{"prompt": f"say {w}", "response": f"{w} world"} for w in "one two three four five red blue".split()]
    ds = build_dataset(cfg(tmp_path, write_jsonl(tmp_path / "d.jsonl", records)), tok)
    sampler = GlobalBatchSampler(len(ds), global_batch=4, micro_batch=2, rank=1, seed=0)
    sampler.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=Collator.for_tokenizer(tok))
    batches = list(loader)
    assert len(batches) == sampler.steps_per_epoch == 1
    expected = [ds[i]["input_ids"] for i in sampler.rank_indices(0, 0)]
    got = [
        row[mask.bool()].tolist()
        for row, mask in zip(batches[0]["input_ids"], batches[0]["attention_mask"], strict=True)
    ]
    assert got == expected


def test_json_lines_in_a_json_file_and_sliced_splits(tmp_path: Path, tok: Any) -> None:
    records = [{"prompt": f"say {w}", "response": f"{w} world"} for w in "one two three".split()]
    as_json = tmp_path / "lines.json"
    as_json.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    whole = build_dataset(cfg(tmp_path, str(as_json)), tok)
    assert len(whole) == 3
    tail = build_dataset(cfg(tmp_path, str(as_json), split="train[1:]"), tok)
    assert tail[:] == whole[1:]
