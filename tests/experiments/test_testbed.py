"""The testbed's shipped teacher is what `python launch/quickstart.py --retrain-teacher --ship-teacher` makes: the same
settings key, model config and tokenizer (the weights themselves take 20 minutes to retrain, so they are not
compared here)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from adakd_ds.experiments.testbed.spec import (
    FAST,
    FULL,
    KEY_FILE,
    SHIPPED_TEACHER,
    ShippedTeacherError,
    llama_config,
    shipped_teacher,
    teacher_key,
    train_tokenizer_for,
    write_data,
)


def test_fast_and_full_share_the_teacher_and_its_key_is_checked() -> None:
    assert teacher_key(FAST) == teacher_key(FULL)
    assert shipped_teacher(FULL) == SHIPPED_TEACHER
    assert json.loads((SHIPPED_TEACHER / KEY_FILE).read_text())["key"] == teacher_key(FULL)
    for change in ({"teacher_steps": FULL.teacher_steps + 1}, {"tasks": FULL.tasks[:-1]}, {"n_test": 10}):
        with pytest.raises(ShippedTeacherError, match="--retrain-teacher"):
            shipped_teacher(dataclasses.replace(FULL, **change))
    assert teacher_key(dataclasses.replace(FULL, student_steps=7, train_seeds=(9,))) == teacher_key(FULL)


def test_shipped_teacher_config_and_tokenizer_are_what_the_command_makes(tmp_path: Path) -> None:
    from transformers import AutoConfig

    paths = write_data(tmp_path, FULL)
    tokenizer = train_tokenizer_for(tmp_path, paths["teacher_train"], FULL)
    assert (tokenizer / "tokenizer.json").read_text() == (SHIPPED_TEACHER / "tokenizer.json").read_text()
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tokenizer / name).is_file():
            assert json.loads((tokenizer / name).read_text()) == json.loads((SHIPPED_TEACHER / name).read_text())
    want = llama_config(FULL.vocab, FULL.teacher_hidden, FULL.teacher_layers).to_dict()
    got = AutoConfig.from_pretrained(SHIPPED_TEACHER).to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):  # fmt: skip
        assert got[key] == want[key], key


def test_shipped_weights_are_bf16_and_load_as_fp32() -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(SHIPPED_TEACHER / "model.safetensors"), "pt") as fh:
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
    assert dtypes == {"BF16"}
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_TEACHER, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) > 4 * sum(
        p.numel() for p in AutoModelForCausalLM.from_config(
            llama_config(FULL.vocab, FULL.student_hidden, FULL.student_layers)).parameters()
    )  # fmt: skip  # the capacity gap the testbed promises
