"""gkd and distillm through the real launchers on 2 ZeRO-3 ranks (issue 10): with and without AdaKD, exact resume,
gkd_alpha 0 == dataset, held-out eval in the logs, and a checkpoint of the old format resuming as `dataset`.

The reference for every resume is the uninterrupted run of the same config: its per-step history (losses, r, the
source of each step, phi, the buffer's fill, the held-out numbers) and its final weights must be IDENTICAL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.engine_fixtures import build_tiny_setup, make_records, read_history, run_launch, write_run_config

# one worker for the whole module: its module-scoped reference runs are then made once, not once per worker
pytestmark = pytest.mark.xdist_group("policy_runs")

STEPS = 6  # 32 records / (2 ranks x micro 4) = 4 optimizer steps per epoch: the runs cross an epoch boundary
TIMING = ("seconds", "tokens")
SEED = 3  # its first draws make gkd and distillm generate AND (distillm) replay after the resume point, step 3


@pytest.fixture(scope="module")
def policy_setup(tmp_path_factory):
    from adakd_ds.experiments.testbed.synthetic_tasks import write_jsonl

    setup = build_tiny_setup(tmp_path_factory.mktemp("policy"), n_records=32)
    # 9 held-out samples: rank 0 evaluates 2 batches of micro 4, rank 1 one batch and one stand-in forward
    write_jsonl(make_records(9, seed=5), str(setup.root / "eval.jsonl"))
    return setup


def _config(setup, out: Path, policy: dict, adakd: bool = True) -> Path:
    return write_run_config(
        setup,
        out,
        policy=policy,
        loss={"adakd": adakd},
        data={"eval_source": str(setup.root / "eval.jsonl")},
        train={"max_steps": STEPS, "eval_interval": 2, "lr": 1e-2, "seed": SEED},
        output={"save_interval": 2},
    )


def _run(cfg: Path, launcher: str = "torchrun", env: dict[str, str] | None = None):
    return run_launch(["--config", str(cfg)], launcher=launcher, env=env, timeout=300)


def _deterministic(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "export" / "model.safetensors"))


def _assert_same_run(reference: Path, other: Path) -> None:
    ref, got = _deterministic(read_history(reference)), _deterministic(read_history(other))
    by_step = {h["step"]: h for h in got}  # a resumed run logs its steps after the ones before the interruption
    assert sorted(by_step) == list(range(1, STEPS + 1))
    assert [by_step[s] for s in range(1, STEPS + 1)] == ref  # bit for bit: JSON keeps every digit
    ref_w, got_w = _weights(reference), _weights(other)
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


GKD = {"data_policy": "gkd", "gkd_alpha": 0.7}
# loss_eps -1 makes every held-out eval after the first raise phi, to see the wiring end to end; the buffer holds
# 2 generated micro-batches per rank
DISTILLM = {"data_policy": "distillm", "init_threshold": 0.8, "capacity": 8, "loss_eps": -1.0}


def _expected(policy: dict) -> tuple[list[float], list[float]]:
    """(source code, phi) per step from the rules written out again, with the draws of a generator seeded like the run."""
    gen, filled, phi = torch.Generator().manual_seed(SEED), 0, policy.get("init_threshold", 0.0)
    sources, phis = [], []
    for t in range(STEPS):
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        if policy["data_policy"] == "gkd":
            source = 1.0 if u < policy["gkd_alpha"] else 0.0
        elif u < phi * (1 - t / STEPS) or (u < phi and filled < policy["capacity"]):
            source, filled = 1.0, filled + 4  # micro_batch 4 per rank
        else:
            source = 2.0 if u < phi else 0.0
        if (t + 1) % 2 == 0 and t + 1 > 2:  # held-out evals at steps 2, 4, 6; the first is the reference
            phi = min(1.0, phi + 0.1)
        sources.append(source)
        phis.append(phi)
    return sources, phis


def _check_policy_history(history: list[dict], policy: dict) -> None:
    sources = [h["policy/source"] for h in history]
    want_sources, want_phi = _expected(policy)
    assert sources == want_sources and 1.0 in sources[3:], sources  # generation after the resume point too
    assert all(math.isfinite(h["loss"]) for h in history)
    assert [h["step"] for h in history if "eval/ce" in h] == [2, 4, 6]
    assert all(h["eval/ce"] > 0 and h["eval/kd"] >= 0 for h in history if "eval/ce" in h)
    assert all(h["policy/gen_len"] >= 1 for h in history[sources.index(1.0) :])
    if policy["data_policy"] == "distillm":
        assert [h["policy/phi"] for h in history] == pytest.approx(want_phi, abs=1e-12)
        assert 2.0 in sources[3:]  # replay after the resume point: the restored buffers are used
        assert all(0 < h["policy/buffer_fill"] <= 1 for h in history)


@pytest.mark.slow
@pytest.mark.parametrize("policy,adakd", [(GKD, True), (DISTILLM, False)], ids=["gkd-adakd", "distillm-base"])
def test_policy_run_through_deepspeed_and_bit_exact_resume(policy_setup, tmp_path, policy, adakd):
    reference = tmp_path / "reference"
    res = _run(_config(policy_setup, reference, policy, adakd), launcher="deepspeed")
    assert res.returncode == 0, res.output[-4000:]
    _check_policy_history(read_history(reference), policy)
    out = tmp_path / "resumed"
    cfg = _config(policy_setup, out, policy, adakd)
    first = _run(cfg, env={"ADAKD_PREEMPT_AT_STEP": "3"})
    assert first.returncode != 0 and (out / "checkpoints" / "step_00000003" / "COMPLETE.json").is_file()
    second = _run(cfg)
    assert second.returncode == 0 and "resumed from" in second.output, second.output[-4000:]
    _assert_same_run(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("policy,adakd", [(GKD, False), (DISTILLM, True)], ids=["gkd-base", "distillm-adakd"])
def test_policy_run_through_deepspeed(policy_setup, tmp_path, policy, adakd):
    out = tmp_path / "run"
    res = _run(_config(policy_setup, out, policy, adakd), launcher="deepspeed")
    assert res.returncode == 0, res.output[-4000:]
    _check_policy_history(read_history(out), policy)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/ce", "eval/kd", "policy/generated_share", "policy/gen_len"} <= tags, tags
    if policy["data_policy"] == "distillm":
        assert {"policy/phi", "policy/buffer_fill"} <= tags


@pytest.fixture(scope="module")
def dataset_reference(policy_setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset") / "run"
    res = _run(_config(policy_setup, out, {"data_policy": "dataset"}))
    assert res.returncode == 0, res.output[-4000:]
    return out


@pytest.mark.slow
def test_gkd_alpha_zero_is_exactly_dataset(policy_setup, dataset_reference, tmp_path):
    out = tmp_path / "gkd0"
    res = _run(_config(policy_setup, out, {"data_policy": "gkd", "gkd_alpha": 0.0}))
    assert res.returncode == 0, res.output[-4000:]
    hist = read_history(out)
    assert [h["policy/source"] for h in hist] == [0.0] * STEPS
    strip = [{k: v for k, v in h.items() if not k.startswith("policy/")} for h in _deterministic(hist)]
    assert strip == _deterministic(read_history(dataset_reference))
    ref_w, got_w = _weights(dataset_reference), _weights(out)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


@pytest.mark.slow
def test_a_checkpoint_without_policy_state_resumes_as_dataset(policy_setup, dataset_reference, tmp_path):
    out = tmp_path / "old"
    cfg = _config(policy_setup, out, {"data_policy": "dataset"})
    first = _run(cfg, env={"ADAKD_PREEMPT_AT_STEP": "3"})
    tag = out / "checkpoints" / "step_00000003"
    assert first.returncode != 0 and (tag / "COMPLETE.json").is_file()
    # rewrite it as the format before data policies: no "policy" entry in any rank's client state
    shards = sorted(tag.glob("*model_states.pt"))
    assert len(shards) == 2
    for shard in shards:
        state = torch.load(shard, weights_only=False)
        assert "policy" in state
        del state["policy"]
        torch.save(state, shard)
    trainer_state = json.loads((tag / "trainer_state.json").read_text())
    del trainer_state["policy"]
    (tag / "trainer_state.json").write_text(json.dumps(trainer_state))
    second = _run(cfg)
    assert second.returncode == 0 and "resumed from" in second.output, second.output[-4000:]
    _assert_same_run(dataset_reference, out)


@pytest.mark.slow
def test_heldout_eval_equals_a_single_process_float64_reference(policy_setup, dataset_reference):
    """The final eval/ce and eval/kd (2 ZeRO-3 ranks, sharded, all-reduced) == a plain loop over the held-out samples
    with the exported student and the teacher file, in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adakd_ds.config.load import load_config
    from adakd_ds.data import build_dataset

    cfg = load_config(str(dataset_reference.parent / f"{dataset_reference.name}.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(policy_setup.tokenizer)
    data = build_dataset(cfg.data, tokenizer, source=cfg.data.eval_source)
    student = AutoModelForCausalLM.from_pretrained(dataset_reference / "export").double().eval()
    teacher = AutoModelForCausalLM.from_pretrained(policy_setup.teacher).double().eval()
    ce = kd = n = 0.0
    with torch.no_grad():
        for row in data:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logq = torch.log_softmax(student(input_ids=ids).logits[0, :-1], -1)
            logp = torch.log_softmax(teacher(input_ids=ids).logits[0, :-1], -1)
            for t in range(len(labels) - 1):
                if labels[t + 1] != -100:
                    ce -= float(logq[t, labels[t + 1]])
                    kd += float((logq[t].exp() * (logq[t] - logp[t])).sum())  # rkl = loss.divergence of the run
                    n += 1
    final = read_history(dataset_reference)[-1]
    assert final["step"] == STEPS and final["eval/n_tokens"] == n
    assert final["eval/ce"] == pytest.approx(ce / n, rel=1e-5)
    assert final["eval/kd"] == pytest.approx(kd / n, rel=1e-4, abs=1e-7)
