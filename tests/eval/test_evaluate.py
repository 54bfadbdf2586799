"""Evaluation: metrics against hand-computed values, format parsing, generation against HF generate, eval loss against
a float64 loop, and a 2-rank torchrun run against the single-process one."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adakd_ds.eval.formats import EvalFormat, EvalFormatError, load_eval_samples
from adakd_ds.eval.metrics import aggregate, exact_match, mean_std, rouge_l, score_sample
from adakd_ds.experiments.testbed.synthetic_tasks import generate_splits, write_jsonl
from adakd_ds.experiments.testbed.tokenizer_train import train_tokenizer

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- metrics


def _lcs_f1(pred: str, ref: str) -> float:
    """Independent ROUGE-L F: lower-case alphanumeric tokens, LCS by dynamic programming."""
    p, r = re.sub(r"[^a-z0-9]+", " ", pred.lower()).split(), re.sub(r"[^a-z0-9]+", " ", ref.lower()).split()
    table = [[0] * (len(r) + 1) for _ in range(len(p) + 1)]
    for i in range(len(p)):
        for j in range(len(r)):
            table[i + 1][j + 1] = table[i][j] + 1 if p[i] == r[j] else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


@pytest.mark.parametrize(
    ("pred", "ref", "hand"),
    [
        ("the cat on mat", "the cat sat on the mat", 0.8),  # LCS 4: P 4/4, R 4/6
        ("mat on the cat", "the cat sat on the mat", 2 * (2 / 4) * (2 / 6) / (2 / 4 + 2 / 6)),  # LCS 2
        ("The CAT, sat!", "the cat sat", 1.0),  # case and punctuation are ignored
        ("dog", "the cat sat", 0.0),
        ("", "the cat", 0.0),
    ],
)
def test_rouge_l_matches_hand_lcs(pred, ref, hand):
    assert rouge_l(pred, ref) == pytest.approx(hand, abs=1e-12)
    assert _lcs_f1(pred, ref) == pytest.approx(hand, abs=1e-12)


def test_best_of_references_and_exact_match():
    s = score_sample("red fox", ["blue sky", "the red fox", "red"])
    assert s["rougeL"] == pytest.approx(100 * max(_lcs_f1("red fox", r) for r in ["blue sky", "the red fox", "red"]))
    assert s["exact_match"] == 100.0  # "the" is an article, dropped by the normalisation
    assert s["exact_match_strict"] == 0.0
    assert exact_match("Paris.", "paris") == 1.0 and exact_match("Paris", "Lyon") == 0.0
    assert score_sample("anything", []) is None


def test_aggregate_means_over_seeds_and_tasks():
    scores = [  # 2 seeds x 3 samples; sample 2 has no reference
        [{"rougeL": 50.0, "exact_match": 0.0, "exact_match_strict": 0.0}, {"rougeL": 100.0, "exact_match": 100.0,
         "exact_match_strict": 100.0}, None],
        [{"rougeL": 0.0, "exact_match": 0.0, "exact_match_strict": 0.0}, {"rougeL": 100.0, "exact_match": 100.0,
         "exact_match_strict": 0.0}, None],
    ]  # fmt: skip
    res = aggregate(scores, ["a", "b", "b"])
    assert (res["n"], res["n_scored"], res["n_no_reference"]) == (3, 2, 1)
    assert res["rougeL"]["per_seed"] == [75.0, 50.0]
    assert res["rougeL"]["mean"] == 62.5 and res["rougeL"]["std"] == 12.5
    assert res["per_task"]["b"]["exact_match_strict"]["per_seed"] == [100.0, 0.0]
    assert res["per_task"]["b"]["n_no_reference"] == 1
    assert mean_std([])["mean"] is None


# ---------------------------------------------------------------- formats


def _write(path: Path, records, as_json: bool = False) -> str:
    path.write_text(json.dumps(records) if as_json else "".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_each_eval_format_parses(tmp_path):
    dolly = _write(tmp_path / "d.jsonl", [{"instruction": "I", "context": "C", "response": "R", "category": "qa"}])
    samples, fmt = load_eval_samples(dolly)
    assert fmt is EvalFormat.DOLLY
    assert (samples[0].record, samples[0].references, samples[0].task) == (
        {"instruction": "I", "input": "C"},
        ["R"],
        "qa",
    )

    si = _write(tmp_path / "s.jsonl", [{"instruction": "I", "instances": [{"input": "a", "output": "A"},
                                                                           {"input": "", "output": "B"}]}])  # fmt: skip
    samples, fmt = load_eval_samples(si)
    assert fmt is EvalFormat.SELF_INST and [s.references for s in samples] == [["A"], ["B"]]
    assert [s.index for s in samples] == [0, 1] and samples[1].record["input"] == ""

    vic = _write(tmp_path / "v.jsonl", [{"question_id": 1, "text": "Q1", "category": "w"}, {"turns": ["Q2", "x"]}])
    samples, fmt = load_eval_samples(vic)
    assert fmt is EvalFormat.VICUNA and [s.record["instruction"] for s in samples] == ["Q1", "Q2"]
    assert all(s.references == [] for s in samples)

    sni = _write(tmp_path / "n.json", [{"definition": "D", "input": "x", "outputs": ["o1", "o2"], "task": "t1"}], True)
    samples, fmt = load_eval_samples(sni)
    assert fmt is EvalFormat.SNI and samples[0].references == ["o1", "o2"] and samples[0].task == "t1"

    pr = _write(tmp_path / "p.jsonl", [{"prompt": "P: ", "response": "R"}, {"prompt": "Q: ", "response": "S"}])
    samples, fmt = load_eval_samples(pr, max_samples=1)
    assert fmt is EvalFormat.PROMPT_RESPONSE and len(samples) == 1 and samples[0].record == {"prompt": "P: "}


def test_bad_eval_files_name_file_line_and_key(tmp_path):
    bad = _write(tmp_path / "b.jsonl", [{"instruction": "I", "response": "R"}, {"instruction": "I"}])
    with pytest.raises(EvalFormatError, match=r"b\.jsonl:2: missing field 'output' or 'response' or 'answer'"):
        load_eval_samples(bad)
    (tmp_path / "j.jsonl").write_text('{"prompt": "x"}\n{not json\n')
    with pytest.raises(EvalFormatError, match=r"j\.jsonl:2: not valid JSON"):
        load_eval_samples(str(tmp_path / "j.jsonl"))
    odd = _write(tmp_path / "o.jsonl", [{"foo": 1}])
    with pytest.raises(EvalFormatError, match=r"o\.jsonl:1: cannot detect the data format from keys \['foo'\]"):
        load_eval_samples(odd)


# ---------------------------------------------------------------- model runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic test file, our tokenizer and two tiny random Llamas (student, teacher) saved as HF directories."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("eval")
    splits = generate_splits(300, 0, 10, seed=5)
    write_jsonl(splits["test"], str(root / "test.jsonl"))
    texts = [v for r in splits["train"] for v in (r["instruction"], r["input"], r["output"])]
    dirs = {}
    for name, seed, hidden in (("student", 0, 32), ("teacher", 1, 48)):
        d = str(root / name)
        train_tokenizer(texts, d, vocab_size=400)
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=400 + 16 * (name == "teacher"), hidden_size=hidden, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.3)  # fmt: skip
        LlamaForCausalLM(cfg).save_pretrained(d)
        dirs[name] = d
    return root, dirs


def _eval(tiny, out: str, *extra: str) -> dict:
    from adakd_ds.eval.evaluate import eval_main

    root, dirs = tiny
    args = ["--model", dirs["student"], "--data", str(root / "test.jsonl"), "--out", out, "--max-new-tokens", "8"]
    return eval_main([*args, *extra])


def _predictions(out: str) -> list[dict]:
    return [json.loads(line) for line in Path(out, "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def greedy_single(tiny):
    """One single-process greedy run (batch 4, with the eval loss), shared by the HF and torchrun comparisons."""
    out = str(tiny[0] / "greedy_single")
    return out, _eval(tiny, out, "--greedy", "--batch-size", "4")


def test_greedy_generation_matches_hf_generate(tiny, greedy_single):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, dirs = tiny
    out, res = greedy_single
    rows = _predictions(out)
    assert res["decoding"]["seeds"] == ["greedy"] and len(rows) == 10
    tok = AutoTokenizer.from_pretrained(dirs["student"])
    model = AutoModelForCausalLM.from_pretrained(dirs["student"]).eval()
    for row in rows:  # one prompt at a time, no padding, HF's own greedy loop
        ids = tok(row["prompt"], return_tensors="pt")["input_ids"]
        out = model.generate(ids, do_sample=False, max_new_tokens=8, eos_token_id=2, pad_token_id=3)
        assert row["predictions"][0] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_sampled_eval_end_to_end_writes_consistent_files(tiny, tmp_path):
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    res = _eval(tiny, out_a, "--seeds", "1", "2", "--batch-size", "4", "--teacher", tiny[1]["teacher"])
    _eval(tiny, out_b, "--seeds", "1", "2", "--batch-size", "3", "--no-loss")
    assert json.loads(Path(out_a, "results.json").read_text()) == json.loads(json.dumps(res))
    rows_a, rows_b = _predictions(out_a), _predictions(out_b)
    # a sample's text depends only on (seed, sample), not on the batch it shared
    assert [r["predictions"] for r in rows_a] == [r["predictions"] for r in rows_b]
    assert any(r["predictions"][0] != r["predictions"][1] for r in rows_a)  # seeds differ
    assert res["n"] == 10 and res["n_no_reference"] == 0 and set(res["per_task"]) <= {
        "reverse", "sort", "add", "upper", "lower", "caesar", "nth", "count"}  # fmt: skip
    for k in range(2):  # the summary is the mean of the per-row scores
        per_row = [score_sample(r["predictions"][k], r["references"])["rougeL"] for r in rows_a]
        assert res["rougeL"]["per_seed"][k] == pytest.approx(sum(per_row) / len(per_row))
    assert set(res["eval_loss"]["kd"]) == {"rkl", "fkl"} and res["eval_loss"]["n_tokens"] > 0


def test_eval_loss_matches_float64_loop(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adakd_ds.data.formats import render_prompt
    from adakd_ds.eval.heldout_loss import eval_loss

    root, dirs = tiny
    tok = AutoTokenizer.from_pretrained(dirs["student"])
    student = AutoModelForCausalLM.from_pretrained(dirs["student"]).eval()
    teacher = AutoModelForCausalLM.from_pretrained(dirs["teacher"]).eval()
    samples, _ = load_eval_samples(str(root / "test.jsonl"))
    prompts = [render_prompt(s.record, s.fmt) for s in samples]
    refs = [s.references[0] for s in samples]
    got = eval_loss(student, tok, prompts, refs, teacher=teacher, batch_size=3)
    ce = rkl = fkl = 0.0
    n = 0
    with torch.no_grad():
        for p, r in zip(prompts, refs, strict=True):
            p_ids = tok(p)["input_ids"]
            ids = torch.tensor([p_ids + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
            zs = student(input_ids=ids).logits[0].double()
            zt = teacher(input_ids=ids).logits[0, :, :400].double()
            for t in range(len(p_ids) - 1, ids.shape[1] - 1):
                lq, lp = torch.log_softmax(zs[t], -1), torch.log_softmax(zt[t], -1)
                ce -= float(lq[ids[0, t + 1]])
                rkl += float((lq.exp() * (lq - lp)).sum())
                fkl += float((lp.exp() * (lp - lq)).sum())
                n += 1
    assert got["n_tokens"] == n
    assert got["ce"] == pytest.approx(ce / n, rel=1e-5)
    assert got["kd"]["rkl"] == pytest.approx(rkl / n, rel=1e-4)
    assert got["kd"]["fkl"] == pytest.approx(fkl / n, rel=1e-4)
    assert math.exp(got["ce"]) == pytest.approx(got["ppl"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_torchrun_matches_single_process(tiny, greedy_single, tmp_path):
    """2 ranks with batch 2 against 1 process with batch 4: same texts, scores and eval loss."""
    root, dirs = tiny
    single, res1 = greedy_single
    out2 = str(tmp_path / "two")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "launch" / "evaluate.py"), "--model", dirs["student"],
           "--data", str(root / "test.jsonl"), "--out", out2, "--max-new-tokens", "8", "--greedy", "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log[-3000:]
    res2 = json.loads(Path(out2, "results.json").read_text())
    assert res2["world_size"] == 2 and res1["world_size"] == 1
    assert [r["predictions"] for r in _predictions(out2)] == [r["predictions"] for r in _predictions(single)]
    assert res2["rougeL"] == res1["rougeL"]
    assert res2["eval_loss"]["n_tokens"] == res1["eval_loss"]["n_tokens"]
    assert res2["eval_loss"]["ce"] == pytest.approx(res1["eval_loss"]["ce"], rel=1e-6)
