"""The token analysis reports what the loss would do: its difficulty, selection and temperatures, checked independently."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from adakd_ds.config.schema import LossConfig
from adakd_ds.data.collate import pad_token_id
from adakd_ds.data.tokenize import IGNORE_INDEX
from adakd_ds.experiments.grid import token_analysis as ta
from adakd_ds.experiments.testbed.synthetic_tasks import generate_records, write_jsonl
from adakd_ds.loss.latf import top_count
from tests.engine_fixtures import tiny_llama_config
from tests.helpers_tokenizer import VOCAB_SIZE, build_tiny_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("token_analysis")
    tok = build_tiny_tokenizer(root / "tok")
    cfg = tiny_llama_config(VOCAB_SIZE, hidden=32, layers=1)
    paths = {}
    for name, seed in (("teacher", 1), ("student", 2)):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    paths["data"] = str(root / "data.jsonl")
    write_jsonl(generate_records(40, seed=0), paths["data"])
    tok, teacher, student = ta.load_pair(paths["teacher"], paths["student"])
    samples, tasks = ta.load_samples(paths["data"], tok, 80, 40)
    arrays = ta.token_arrays(teacher, student, samples, tasks, pad_token_id(tok), ratio=0.5, batch_size=16)
    return {"paths": paths, "root": root, "teacher": teacher, "student": student, "samples": samples, "arrays": arrays}


def _probs64(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.softmax(logits, dim=-1)


def test_hellinger_matches_float64_loop(setup: dict) -> None:
    samples, arrays = setup["samples"], setup["arrays"]
    row = min(range(len(samples)), key=lambda i: len(samples[i]["input_ids"]))  # the shortest: padded in its batch
    ids, labels = samples[row]["input_ids"], samples[row]["labels"]
    p, q = _probs64(setup["teacher"], ids), _probs64(setup["student"], ids)
    expected = []
    for t in range(len(ids) - 1):
        if labels[t + 1] == IGNORE_INDEX:
            continue
        # the project's constant: (1/sqrt 2) * ||sqrt p - sqrt q||_2 == sqrt(0.5 * sum (sqrt p - sqrt q)^2)
        total = sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(p[t].tolist(), q[t].tolist(), strict=True))
        expected.append(math.sqrt(0.5 * total))
    got = arrays.difficulty[arrays.record == row]
    assert got.numel() == len(expected) > 0
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=2e-6)
    assert arrays.position[arrays.record == row].tolist() == list(range(len(expected)))
    assert set(arrays.length[arrays.record == row].tolist()) == {len(expected)}


def test_selection_is_global_top_ratio(setup: dict) -> None:
    arrays = setup["arrays"]
    n = arrays.difficulty.numel()
    k = top_count(n, 0.5)
    by_family = ta.group_stats(arrays, arrays.task)
    assert len(by_family) > 3
    assert sum(st["selected"] for st in by_family.values()) == k
    assert sum(st["tokens"] for st in by_family.values()) == n
    order = sorted(range(n), key=lambda i: (-float(arrays.difficulty[i]), i))
    assert sorted(torch.nonzero(arrays.selected).flatten().tolist()) == sorted(order[:k])
    assert arrays.threshold == pytest.approx(float(arrays.difficulty[order[k - 1]]))


def test_family_shares_and_taus_match_recomputation(setup: dict) -> None:
    arrays = setup["arrays"]
    cfg = LossConfig()
    diff = arrays.difficulty.tolist()
    sel = arrays.selected.tolist()
    median_all = sorted(diff)[(len(diff) - 1) // 2]
    tau = [cfg.temperature * math.exp(-cfg.c * math.tanh(math.log(max(d / median_all, 1e-8)))) for d in diff]
    assert torch.allclose(arrays.tau.double(), torch.tensor(tau, dtype=torch.float64), atol=1e-5)
    for keys in (arrays.task, arrays.bucket):
        stats = ta.group_stats(arrays, keys)
        for name, st in stats.items():
            idx = [i for i, k in enumerate(keys) if k == name]
            chosen = [i for i in idx if sel[i]]
            assert st["tokens"] == len(idx)
            assert st["selected_share"] == pytest.approx(len(chosen) / len(idx))
            assert st["difficulty_mean"] == pytest.approx(sum(diff[i] for i in idx) / len(idx), abs=1e-6)
            assert st["tau_mean"] == pytest.approx(sum(tau[i] for i in idx) / len(idx), abs=1e-5)
            if chosen:
                assert st["tau_selected_mean"] == pytest.approx(sum(tau[i] for i in chosen) / len(chosen), abs=1e-5)
            else:
                assert st["tau_selected_mean"] is None
    assert set(ta.group_stats(arrays, arrays.bucket)) == {"first", "middle", "last"}
    # hard tokens get a low temperature (the method's inverse sign), easy ones a high one
    hard = [t for d, t in zip(diff, tau, strict=True) if d > median_all]
    assert hard and max(hard) < cfg.temperature


def test_main_writes_outputs(setup: dict, tmp_path) -> None:
    p = setup["paths"]
    out = tmp_path / "out"
    rc = ta.main(["--teacher", p["teacher"], "--student", p["student"], "--data", p["data"], "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "token_analysis.json").read_text())
    assert summary["selected"] == top_count(summary["tokens"], 0.5)
    assert summary["tau_base"] == LossConfig().temperature and summary["c"] == LossConfig().c
    assert "| group |" in (out / "token_analysis.md").read_text()
    assert (out / "difficulty_by_family.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("which", ["teacher", "student", "data"])
def test_missing_path_exits_2(setup: dict, tmp_path, capsys, which: str) -> None:
    args = dict(setup["paths"])
    args[which] = os.path.join(str(tmp_path), f"no_such_{which}")
    argv = [x for k in ("teacher", "student", "data") for x in (f"--{k}", args[k])] + ["--out", str(tmp_path / "o")]
    assert ta.main(argv) == 2
    err = capsys.readouterr().err
    assert args[which] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
