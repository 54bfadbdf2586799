"""The distillation engine, for real: ZeRO-3 student and ZeRO-3 inference teacher on 2 CPU ranks over gloo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.engine_fixtures import REPO, read_history, run_launch, write_run_config

PROBE = str(REPO / "tests" / "workers" / "distill_probe.py")
EXPORT = str(REPO / "launch" / "export.py")
TB_TAGS = {
    "loss/total",
    "loss/kd",
    "loss/ce",
    "train/lr",
    "train/grad_norm",
    "latf/r",
    "latf/k_over_n",
    "idts/tau_min",
    "idts/tau_mean",
    "idts/tau_max",
    "difficulty/mean",
    "difficulty/q10",
    "difficulty/q50",
    "difficulty/q90",
    "throughput/tokens_per_s",
}


def _event_tags(tb_dir: Path) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags["scalars"]), set(tags["histograms"])


@pytest.mark.slow
def test_distill_run_through_deepspeed_cli(tiny_setup, tmp_path):
    out = tmp_path / "run"
    cfg = write_run_config(tiny_setup, out, train={"max_steps": 8, "lr": 1e-2})
    report = tmp_path / "report"
    report.mkdir()
    res = run_launch([str(cfg), str(report)], launcher="deepspeed", nproc=2, script=PROBE, timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]

    # each rank holds half of every student and teacher parameter (ceil(n / 2) of n elements)
    for info in ranks:
        for kind in ("student_share", "teacher_share"):
            assert info[kind], kind
            for name, share in info[kind].items():
                assert 0.5 <= share <= 0.5 + 1e-2, (kind, name, share)
    # the teacher never changes
    assert all(r["teacher_equal_before"] and r["teacher_equal_after"] for r in ranks)
    assert all(r["exit_code"] == 0 for r in ranks)

    # the KD loss falls over the run
    hist = read_history(out)
    assert [h["step"] for h in hist] == list(range(1, 9))
    first, last = hist[0]["loss"], sum(h["loss"] for h in hist[-2:]) / 2
    assert math.isfinite(first) and last < 0.9 * first, (first, last)

    # TensorBoard holds every documented tag, plus the histograms
    scalars, histograms = _event_tags(out / "tensorboard")
    assert TB_TAGS <= scalars, TB_TAGS - scalars
    assert {"idts/tau", "difficulty/score"} <= histograms

    # the exported model reloads with from_pretrained and reproduces the engine's logits
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = out / "export"
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    AutoTokenizer.from_pretrained(str(export))
    model = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    ref = torch.load(report / "engine_logits.pt")
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits.float()
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-5, atol=1e-5)

    # adakd-export turns the final checkpoint alone into the same model (fp32 master weights)
    from safetensors.torch import load_file

    again = tmp_path / "from_checkpoint"
    res = run_launch(["--checkpoint", str(out / "checkpoints"), "--out", str(again)], launcher="python", script=EXPORT)
    assert res.returncode == 0, res.output[-3000:]
    live, offline = load_file(str(export / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert live.keys() == offline.keys() and all(torch.equal(live[k], offline[k]) for k in live)
    AutoModelForCausalLM.from_pretrained(str(again))


@pytest.mark.slow
@pytest.mark.parametrize("fused_head", ["true", "false"])
def test_two_ranks_equal_one_rank_with_the_whole_global_batch(tiny_setup, tmp_path, fused_head):
    """2 ranks x micro 2 and 1 rank x micro 4 see the same global batches: same losses and r, AdaKD on."""
    loss = {"warmup_frac": 0.2, "eps": 0.0, "delta": 0.2, "chunk_size": 16, "fused_head": fused_head}
    two = write_run_config(
        tiny_setup, tmp_path / "two", train={"micro_batch": 2, "max_steps": 6}, loss=loss, output={"export": False}
    )
    one = write_run_config(
        tiny_setup, tmp_path / "one", train={"micro_batch": 4, "max_steps": 6}, loss=loss, output={"export": False}
    )
    r2 = run_launch(["--config", str(two)], launcher="torchrun", nproc=2)
    assert r2.returncode == 0, r2.output[-4000:]
    r1 = run_launch(["--config", str(one)], launcher="torchrun", nproc=1)
    assert r1.returncode == 0, r1.output[-4000:]
    h2, h1 = read_history(tmp_path / "two"), read_history(tmp_path / "one")
    assert len(h1) == len(h2) == 6
    assert min(h["ratio"] for h in h2) < 1.0, "LATF never narrowed: the test would not exercise selection"
    for a, b in zip(h2, h1, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["ratio"] == pytest.approx(b["ratio"], rel=1e-5), (a, b)


@pytest.mark.slow
def test_sft_run_as_one_process_console_script(tiny_setup, tmp_path):
    out = tmp_path / "sft"
    cfg = write_run_config(tiny_setup, out, mode="sft", train={"max_steps": 5, "lr": 1e-2}, output={"export": False})
    res = run_launch(["--config", str(cfg)], launcher="python")
    assert res.returncode == 0, res.output[-4000:]
    hist = read_history(out)
    assert len(hist) == 5
    assert hist[-1]["loss"] < hist[0]["loss"]  # label cross-entropy falls
    assert all(h["ratio"] == 1.0 for h in hist)  # no AdaKD in SFT


def test_unknown_config_key_fails_fast_naming_it(tiny_setup, tmp_path):
    cfg = write_run_config(tiny_setup, tmp_path / "bad", loss={"divergnce": "rkl"})
    res = run_launch(["--config", str(cfg)], launcher="python", timeout=60)
    assert res.returncode == 2
    errors = [line for line in res.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "loss.divergnce" in errors[0], res.output[-2000:]
    assert res.seconds < 30


def test_tokenizer_mismatch_fails_before_training(tiny_setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.engine_fixtures import tiny_llama_config

    small = tmp_path / "small_teacher"
    AutoModelForCausalLM.from_config(tiny_llama_config(120, 32, 1, heads=2)).save_pretrained(small)
    out = tmp_path / "mismatch"
    cfg = write_run_config(tiny_setup, out, model={"teacher": str(small)})
    res = run_launch(["--config", str(cfg)], launcher="python", timeout=90)
    assert res.returncode == 2, res.output[-3000:]
    errors = [line for line in res.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "vocab" in errors[0].lower(), res.output[-2000:]
    assert not (out / "history.jsonl").exists()  # no step ran
