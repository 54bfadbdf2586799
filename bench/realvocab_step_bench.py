"""Engine steps with a real-vocab student: fused head vs unfused, tokens/s and peak RSS per rank, per micro-batch.

A small Llama pair whose vocab is Qwen2's 151936 (the tokenizer uses only its first pieces, which check_vocab
allows): at that vocab the [tokens, V] logits, not the model, fill the memory. Each (micro-batch, variant) runs the
real launcher (1 rank, ZeRO-3, fp32, AdaKD-rkl) in a fresh process; its peak RSS is the child's own ru_maxrss
(os.wait4), and the step time the median of the history after the warm-up steps. The largest micro-batch that stays
under --budget-mib is reported for each way.

    OMP_NUM_THREADS=1 python bench/realvocab_step_bench.py --micro 4 8 16 32 --steps 6 --skip 2 --budget-mib 3072
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_common import load  # noqa: E402

QWEN2_VOCAB = 151936
WAYS = {"fused": "true", "unfused": "false"}


def build_assets(root: Path, vocab: int, teacher_hidden: int, student_hidden: int) -> dict[str, str]:
    import torch
    from transformers import AutoModelForCausalLM

    from adakd_ds.experiments.testbed.spec import llama_config
    from adakd_ds.experiments.testbed.synthetic_tasks import generate_records, write_jsonl
    from adakd_ds.experiments.testbed.tokenizer_train import train_tokenizer

    write_jsonl(generate_records(512, seed=0), str(root / "train.jsonl"))
    tok_dir = train_tokenizer(str(root / "train.jsonl"), str(root / "tokenizer"), vocab_size=512)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llama_config(vocab, teacher_hidden, 2)).save_pretrained(root / "teacher")
    llama_config(vocab, student_hidden, 2).save_pretrained(root / "student_config")
    return {"teacher": str(root / "teacher"), "student_config": str(root / "student_config"), "tokenizer": tok_dir}


def run(root: Path, assets: dict[str, str], way: str, micro: int, steps: int) -> tuple[list[dict], float, int]:
    """(history, the rank's peak RSS in MiB, exit code) of one run of the real launcher."""
    out = root / f"{way}_{micro}"
    cfg = {
        "model": {k: assets[k] for k in ("teacher", "student_config", "tokenizer")},
        "data": {"source": str(root / "train.jsonl"), "max_prompt_len": 64, "max_len": 96},
        "loss": {"divergence": "rkl", "adakd": True, "warmup_frac": 0.0, "fused_head": WAYS[way]},
        "train": {"max_steps": steps, "micro_batch": micro, "lr": 1e-3},
        "output": {"dir": str(out), "export": False, "tensorboard": False, "log_interval": 1000},
    }
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {"DS_ACCELERATOR": "cpu", **os.environ, "HF_HUB_OFFLINE": "1"}  # cpu unless the caller chose (gpu_check.sh)
    cmd = [sys.executable, str(REPO / "launch" / "distill.py"), "--config", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    hist_file = out / "history.jsonl"
    hist = [json.loads(line) for line in hist_file.read_text().splitlines()] if hist_file.exists() else []
    return hist, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=QWEN2_VOCAB)
    ap.add_argument("--micro", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the medians")
    ap.add_argument("--teacher-hidden", type=int, default=128)
    ap.add_argument("--student-hidden", type=int, default=64)
    ap.add_argument("--budget-mib", type=float, default=3072.0)
    args = ap.parse_args()
    rows = []
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assets = build_assets(root, args.vocab, args.teacher_hidden, args.student_hidden)
        for micro in args.micro:
            for way in WAYS:  # interleaved: both ways of one micro-batch back to back
                hist, peak, code = run(root, assets, way, micro, args.steps)
                hist = hist[args.skip :]
                step = statistics.median(h["seconds"] for h in hist) if hist else float("nan")
                tok = statistics.median(h["tokens"] / h["seconds"] for h in hist) if hist else float("nan")
                rows.append((micro, way, step, tok, peak, code))
    print(
        f"1 rank, ZeRO-3, fp32, AdaKD-rkl, vocab {args.vocab}, teacher hidden {args.teacher_hidden} x2, student hidden "
        f"{args.student_hidden} x2, CPU threads={os.environ.get('OMP_NUM_THREADS', 'default')}, medians over steps "
        f"{args.skip + 1}..{args.steps}; machine: {load_before} before, {load()} after"
    )
    print("| micro-batch | way | step (s) | tokens/s | peak RSS per rank (MiB) | exit |")
    print("|---:|---|---:|---:|---:|---:|")
    for micro, way, step, tok, peak, code in rows:
        print(f"| {micro} | {way} | {step:.2f} | {tok:.0f} | {peak:.0f} | {code} |")
    for way in WAYS:
        fits = [m for m, w, _, _, peak, code in rows if w == way and code == 0 and peak <= args.budget_mib]
        print(f"largest micro-batch under {args.budget_mib:.0f} MiB, {way}: {max(fits) if fits else 'none tried'}")


if __name__ == "__main__":
    main()
