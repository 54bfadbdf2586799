"""Student generation under ZeRO-3 (issue 10): 2 ranks == 1 rank == a plain HF model, in lockstep, gkd labels.

The reference is independent of DeepSpeed and of the batching: the same student weights loaded as a plain HF model in
this process, generating ONE prompt at a time (no padding) with the per-sample seed, then laid out as training data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.engine_fixtures import build_tiny_setup, run_launch, write_run_config

WORKER = str(Path(__file__).resolve().parents[1] / "workers" / "generate_worker.py")


@pytest.fixture(scope="module")
def gen_setup(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    setup = build_tiny_setup(tmp_path_factory.mktemp("gen"), n_records=32)
    torch.manual_seed(3)
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(setup.student_config))
    student_dir = setup.root / "student"
    student.save_pretrained(student_dir)
    AutoTokenizer.from_pretrained(setup.tokenizer).save_pretrained(student_dir)
    return setup, student_dir


def _run(gen_setup, tmp_path: Path, nproc: int, micro: int) -> dict:
    setup, student_dir = gen_setup
    out = tmp_path / f"w{nproc}"
    cfg = write_run_config(
        setup,
        out,
        model={"student": str(student_dir), "student_config": None},
        policy={"data_policy": "gkd", "gkd_alpha": 1.0},
        train={"micro_batch": micro},
        output={"export": False, "tensorboard": False},
    )
    res = run_launch([str(cfg), str(out)], nproc=nproc, script=WORKER, timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    return json.loads((out / "result.json").read_text())


def _reference(student_dir: Path, prompt: list[int], index: int, max_len: int, seed: int = 7) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    from adakd_ds.engine.policy.student_generate import generation_seeds, layout
    from adakd_ds.eval.generate import Decoding, generate_batch

    model = _reference.cache.get(student_dir) or AutoModelForCausalLM.from_pretrained(student_dir).eval()
    _reference.cache[student_dir] = model
    (tokens,) = generate_batch(
        model,
        [prompt],
        0,
        {2},
        Decoding(max_new_tokens=max_len - len(prompt)),
        seeds=generation_seeds(seed, 3, [index]),  # STEP of the worker
        vocab_limit=model.config.vocab_size,
    )
    return list(layout(prompt, tokens, max_len, 2))


_reference.cache = {}


@pytest.mark.slow
def test_generation_two_ranks_equals_one_rank_and_a_plain_model(gen_setup, tmp_path):
    one = _run(gen_setup, tmp_path, nproc=1, micro=8)
    two = _run(gen_setup, tmp_path, nproc=2, micro=4)
    _, student_dir = gen_setup
    max_len = 80
    # the recipe's gkd hook (alpha 1): the same global batch, the same student samples, whatever the world size
    assert len(two["policy"]) == 8 and two["policy"] == one["policy"]
    for index, (ids, labels, prompt) in two["policy"].items():
        assert [ids, labels] == _reference(student_dir, prompt, int(index), max_len)
        # trains only on the student's tokens: prompt labels -100, every other label is the generated token itself
        assert labels[: len(prompt)] == [-100] * len(prompt) and ids[: len(prompt)] == prompt
        assert labels[len(prompt) :] == ids[len(prompt) :] and len(ids) > len(prompt)
    # ranks needing 2 vs many new tokens: no hang (the launch would time out), the same forwards on every rank
    assert two["uneven"] == one["uneven"]
    assert two["forwards"][0] == two["forwards"][1] == one["forwards"][0]
    new_tokens = {int(i): len(ids) - len(p) for i, (p, ids, _) in two["uneven"].items()}
    assert max(new_tokens[i] for i in range(100, 104)) <= 2 and max(new_tokens[i] for i in range(104, 108)) >= 20
    for index, (prompt, ids, labels) in two["uneven"].items():
        assert [ids, labels] == _reference(student_dir, prompt, int(index), max_len)
    # distillm, phi = 1: fresh samples until the buffer (2 micro-batches per rank) is full, then replay as well
    _check_distillm_log(two["distillm"], capacity=8)


def _check_distillm_log(per_rank: list, capacity: int) -> None:
    """Per rank: the buffer stays within capacity, and every replayed row was generated earlier on that rank."""
    for log in per_rank:
        generated: list = []
        sources = [source for source, _, _ in log]
        assert sources[0] == "generated" and "replay" in sources, sources
        for source, rows, fill in log:
            assert fill <= capacity
            if source == "replay":
                assert all(row in generated for row in rows)
            else:
                assert source == "generated" and not any(row in generated for row in rows)
                generated += rows


def test_layout_appends_eos_only_when_the_student_stopped():
    from adakd_ds.engine.policy.student_generate import layout, prompt_of

    assert layout([1, 7], [5, 6], 10, 2) == ([1, 7, 5, 6, 2], [-100, -100, 5, 6, 2])  # stopped early: EOS trained
    assert layout([1, 7], [5, 6], 4, 2) == ([1, 7, 5, 6], [-100, -100, 5, 6])  # budget used up: no EOS
    assert layout([1, 7], [], 4, 2) == ([1, 7, 2], [-100, -100, 2])  # EOS at once
    ids, labels = torch.tensor([1, 7, 8, 5, 2, 0]), torch.tensor([-100, -100, -100, 5, 2, -100])
    assert prompt_of(ids, labels) == [1, 7, 8]
    with pytest.raises(ValueError, match="no response"):
        layout([1] * 4, [], 4, 2)
