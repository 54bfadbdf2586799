"""DeepSpeed plumbing: config filling (pure dicts) and one real 2-rank ZeRO-3 run on CPU."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from adakd_ds.config.schema import DType, RunConfig
from adakd_ds.engine.ds_config import (
    DSConfigError,
    assert_no_auto,
    derive_teacher_config,
    fill_auto,
    fill_bucket_sizes,
    find_auto,
    load_ds_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = ["zero3.json", "zero3_offload.json", "teacher_zero3.json", "teacher_zero3_offload.json"]


def run_cfg(**train) -> RunConfig:
    cfg = RunConfig()
    for k, v in {"micro_batch": 3, "grad_accum": 4, "lr": 2e-5, "weight_decay": 0.1, "grad_clip": 0.5, **train}.items():
        setattr(cfg.train, k, v)
    return cfg


def student_json(name: str = "zero3.json") -> dict:
    return load_ds_config(os.path.join(ROOT, "ds_configs", name))


# ---------------------------------------------------------------- pure dict tests


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_fill_completely(name):
    ds = student_json(name)
    filled = fill_auto(ds, run_cfg(dtype=DType.BF16), world_size=8, hidden_size=64, source=name)
    assert find_auto(filled) == []
    assert filled["train_batch_size"] == 3 * 4 * 8
    assert filled["bf16"]["enabled"] is True
    assert filled["zero_optimization"]["stage"] == 3
    assert find_auto(ds), "the shipped file itself should defer to the RunConfig"


def test_fill_auto_values_and_no_mutation():
    ds = student_json()
    before = copy.deepcopy(ds)
    out = fill_auto(ds, run_cfg(), world_size=2)
    assert ds == before
    assert out["train_micro_batch_size_per_gpu"] == 3
    assert out["gradient_accumulation_steps"] == 4
    assert out["train_batch_size"] == 24
    assert out["gradient_clipping"] == 0.5
    assert out["optimizer"]["params"]["lr"] == 2e-5
    assert out["optimizer"]["params"]["weight_decay"] == 0.1
    assert out["optimizer"]["params"]["torch_adam"] is True
    assert out["bf16"]["enabled"] is False
    assert out["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert fill_auto(out, run_cfg(), world_size=2) == out  # idempotent: explicit equal values are accepted


@pytest.mark.parametrize(
    "path,value,rc_key",
    [
        (("train_micro_batch_size_per_gpu",), 8, "train.micro_batch"),
        (("gradient_accumulation_steps",), 1, "train.grad_accum"),
        (("train_batch_size",), 12, "train.micro_batch * train.grad_accum"),
        (("gradient_clipping",), 1.0, "train.grad_clip"),
        (("optimizer", "params", "lr"), 1e-3, "train.lr"),
        (("optimizer", "params", "weight_decay"), 0.0, "train.weight_decay"),
        (("bf16", "enabled"), True, "train.dtype"),
    ],
)
def test_fill_auto_rejects_contradictions(path, value, rc_key):
    ds = student_json()
    node = ds
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(DSConfigError) as err:
        fill_auto(ds, run_cfg(), world_size=2, source="my.json")
    msg = str(err.value)
    assert "my.json" in msg and ".".join(path) in msg and rc_key in msg


def test_fill_auto_rejects_fp16_and_unknown_auto_and_missing_zero():
    ds = student_json()
    ds["fp16"] = {"enabled": True}
    with pytest.raises(DSConfigError, match="fp16.enabled"):
        fill_auto(ds, run_cfg(), 1)
    ds = student_json()
    ds["scheduler"] = {"type": "WarmupLR", "params": {"warmup_max_lr": "auto"}}
    with pytest.raises(DSConfigError, match="scheduler.params.warmup_max_lr"):
        fill_auto(ds, run_cfg(), 1)
    ds = student_json()
    del ds["zero_optimization"]
    with pytest.raises(DSConfigError, match="zero_optimization"):
        fill_auto(ds, run_cfg(), 1)


def test_bucket_autos_trl_formula_and_leftover_error():
    ds = student_json()
    ds["zero_optimization"]["reduce_bucket_size"] = "auto"
    filled = fill_auto(ds, run_cfg(), 1)
    with pytest.raises(DSConfigError, match="zero_optimization.reduce_bucket_size"):
        assert_no_auto(filled, "x.json")
    z = fill_bucket_sizes(fill_auto(student_json("teacher_zero3.json"), run_cfg(), 1), 4096)["zero_optimization"]
    assert z["reduce_bucket_size"] == 4096 * 4096
    assert z["stage3_param_persistence_threshold"] == 40960
    assert z["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)


def test_derive_teacher_config():
    cfg = run_cfg(dtype=DType.BF16)
    ds = student_json("zero3_offload.json")
    ds["zero_optimization"]["offload_param"] = {"device": "cpu"}
    t = derive_teacher_config(ds, cfg, world_size=4)
    assert "optimizer" not in t and "scheduler" not in t and "gradient_clipping" not in t
    assert t["zero_optimization"]["stage"] == 3
    assert t["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert "offload_optimizer" not in t["zero_optimization"]
    assert t["bf16"] == {"enabled": True}
    assert (t["train_micro_batch_size_per_gpu"], t["gradient_accumulation_steps"], t["train_batch_size"]) == (3, 4, 48)
    assert set(find_auto(t)) == {
        f"zero_optimization.{k}"
        for k in ("reduce_bucket_size", "stage3_param_persistence_threshold", "stage3_prefetch_bucket_size")
    }


def test_derive_teacher_from_file(tmp_path):
    cfg = run_cfg()
    cfg.deepspeed.teacher = os.path.join(ROOT, "ds_configs", "teacher_zero3_offload.json")
    t = derive_teacher_config(student_json(), cfg, world_size=2)
    assert t["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert t["train_batch_size"] == 24
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({**student_json("teacher_zero3.json"), "optimizer": {"type": "AdamW"}}))
    cfg.deepspeed.teacher = str(bad)
    with pytest.raises(DSConfigError, match="must not have an 'optimizer'"):
        derive_teacher_config(student_json(), cfg, 2)


def test_load_ds_config_errors(tmp_path):
    with pytest.raises(DSConfigError, match="not found: .*nope.json"):
        load_ds_config(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(DSConfigError, match=r"bad.json:3: not valid JSON"):
        load_ds_config(str(bad))


# ---------------------------------------------------------------- real 2-rank run


def _tokenizer(path: str, n: int = 200) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(4, n)])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)


def _models(work: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    small = dict(
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    LlamaConfig(vocab_size=256, hidden_size=64, **small).save_pretrained(os.path.join(work, "student_cfg"))
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=96, **small))  # padded vocab
    teacher.save_pretrained(os.path.join(work, "teacher"))
    _tokenizer(os.path.join(work, "tok"))


def _run_workers(work: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "ADAKD_DIST_TIMEOUT": "120",
        "PYTHONPATH": ROOT,
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(ROOT, "tests", "engine", "ds_worker_plumbing.py"),
        "--work",
        work,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"2-rank run timed out after {timeout}s:\n{out[-6000:]}")
    finally:
        try:  # torchrun's workers share its session; leave nothing behind whatever happened
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


@pytest.mark.slow
def test_two_rank_zero3_build_train_export(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adakd_ds.checkpoint.export import export_main

    work = str(tmp_path)
    _models(work)
    t0 = time.time()
    res = _run_workers(work)
    assert res.returncode == 0, (
        f"workers failed (rc {res.returncode}) after {time.time() - t0:.0f}s:\n{res.stdout[-6000:]}"
    )
    assert "check_vocab raised as expected" in res.stdout
    ref = torch.load(os.path.join(work, "engine_out.pt"))
    assert ref["n_student"] == ref["n_teacher"] == 2 * 9 + 3  # 9 tensors per layer + embed, norm, lm_head

    live = os.path.join(work, "export_live")
    offline = os.path.join(work, "export_ckpt")
    assert export_main(["--checkpoint", os.path.join(work, "ckpt"), "--out", offline]) == 0

    for out_dir in (live, offline):
        files = set(os.listdir(out_dir))
        assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= files, files
        weights = load_file(os.path.join(out_dir, "model.safetensors"))
        assert set(weights) == set(ref["gathered"])
        for k, v in ref["gathered"].items():
            assert torch.equal(weights[k], v), f"{out_dir}: {k} differs from the gathered engine param"
        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=ref["probe"]).logits
        diff = (logits - ref["logits"]).abs().max().item()
        assert diff <= 1e-6, f"{out_dir}: logits differ from the engine's by {diff}"
        assert len(AutoTokenizer.from_pretrained(out_dir)) == 200


def test_export_main_errors(tmp_path, capsys):
    from adakd_ds.checkpoint.export import export_main

    assert export_main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no 'latest' file" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "latest").write_text("step9")
    assert export_main(["--checkpoint", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
