"""The quickstart's shared machinery gives the same bits run to run (issue 12, item 14).

Two reduced quickstarts on one machine gave byte-identical tokenizers, data, models and predictions; what changed
the bits was the caller's thread count, which the stages used to inherit. These tests pin down each piece: the
tokenizer trained twice (other hash seeds, other thread settings) is byte-identical, the stages' environment is
pinned whatever the caller set, and a real 2-rank training stage gives the same model under a caller with 1 or 2
OpenMP threads (it did not before the pin).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adakd_ds.experiments.testbed import pipeline
from adakd_ds.experiments.testbed.reproducible import PINNED_ENV, environment, overridden, pinned_env, pinned_threads
from tests.engine_fixtures import REPO, build_tiny_setup, run_env

TRAIN_TOKENIZER = """
import sys
from adakd_ds.experiments.testbed.synthetic_tasks import generate_splits, write_jsonl
from adakd_ds.experiments.testbed.tokenizer_train import train_tokenizer
write_jsonl(generate_splits(300, 10, 10, seed=0)["train"], sys.argv[1] + "/train.jsonl")
train_tokenizer(sys.argv[1] + "/train.jsonl", sys.argv[1] + "/tok", vocab_size=384)
"""


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_the_tokenizer_trained_twice_is_byte_identical(tmp_path):
    runs = []
    for i, (hash_seed, threads) in enumerate((("1", "1"), ("2", "2"))):
        out = tmp_path / f"run{i}"
        out.mkdir()
        env = run_env({"PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": threads})
        subprocess.run([sys.executable, "-c", TRAIN_TOKENIZER, str(out)], env=env, check=True, timeout=300, cwd=REPO)
        runs.append(_digests(out))
    assert {"tok/spm.model", "tok/tokenizer.json", "train.jsonl"} <= set(runs[0])
    assert runs[0] == runs[1]


def test_the_stages_run_pinned_whatever_the_caller_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    env = pipeline.stage_env()
    assert all(env[k] == v for k, v in PINNED_ENV.items()), env
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONHASHSEED"] == "0"
    assert overridden(os.environ) == ["OMP_NUM_THREADS=4 -> 1", "PYTHONHASHSEED=random -> 0"]
    assert pinned_env({"X": "y"}) == {"X": "y", **PINNED_ENV}


def test_in_process_work_uses_the_stages_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pinned_threads():
            assert torch.get_num_threads() == int(PINNED_ENV["OMP_NUM_THREADS"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_environment_names_what_a_rerun_elsewhere_must_match():
    env = environment()
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["threads_per_rank"] == 1


@pytest.mark.slow
def test_a_training_stage_gives_the_same_model_whatever_the_callers_threads(tmp_path, monkeypatch):
    """SFT of a quickstart-shaped model (hidden 96, 2 layers) on 2 ranks; unpinned, OMP 2 vs 1 changed the weights."""
    from adakd_ds.experiments.testbed.spec import llama_config

    setup = build_tiny_setup(tmp_path / "setup", n_records=64)
    cfg_dir = tmp_path / "student_config"
    llama_config(len(__import__("transformers").AutoTokenizer.from_pretrained(setup.tokenizer)), 96, 2).save_pretrained(
        cfg_dir
    )
    models = []
    for threads in ("1", "2"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        out = tmp_path / f"omp{threads}"
        cfg = {
            "mode": "sft",
            "model": {"student_config": str(cfg_dir), "tokenizer": str(setup.tokenizer)},
            "data": {"source": str(setup.data), "max_prompt_len": 40, "max_len": 80,
                     "cache_dir": str(tmp_path / f"cache{threads}")},
            "train": {"lr": 1.5e-3, "max_steps": 6, "micro_batch": 16, "seed": 0, "warmup_ratio": 0.0},
            "output": {"dir": str(out), "log_interval": 1, "save_interval": 0, "keep_last": 1},
        }  # fmt: skip
        export = pipeline.train(cfg, 2, f"sft omp {threads}", quiet=True)
        models.append(((export / "model.safetensors").read_bytes(), (out / "history.jsonl").read_text()))
    assert models[0][0] == models[1][0], "the trained weights depend on the caller's OMP_NUM_THREADS"
    losses = [[line.split('"seconds"')[0] for line in h.splitlines()] for _, h in models]
    assert losses[0] == losses[1] and len(losses[0]) == 6
