"""Step-time benchmark of the real engine (1 rank, ZeRO-3): SFT vs distill(rkl) vs distill(AdaKD-rkl), and a step
that trains on the student's own samples (gkd, gkd_alpha 1: every step generates) vs the same step without.

Each variant runs `launch/distill.py` in a fresh process on the same models and data; the per-step times come from
the run's history.jsonl, skipping the first steps (warm-up). Run by hand:

    OMP_NUM_THREADS=2 python bench/step_bench.py [--steps 40] [--skip 5] [--variants NAME ...]
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

VARIANTS = {
    "sft": {"mode": "sft"},
    "distill rkl": {"mode": "distill", "loss": {"divergence": "rkl", "adakd": False}},
    "distill AdaKD-rkl": {"mode": "distill", "loss": {"divergence": "rkl", "adakd": True, "warmup_frac": 0.0}},
    "gkd AdaKD-rkl (generates every step)": {
        "mode": "distill",
        "loss": {"divergence": "rkl", "adakd": True, "warmup_frac": 0.0},
        "policy": {"data_policy": "gkd", "gkd_alpha": 1.0},
    },
}
GEN, NO_GEN = "gkd AdaKD-rkl (generates every step)", "distill AdaKD-rkl"


def build_assets(root: Path, teacher_hidden: int, student_hidden: int) -> dict[str, str]:
    import torch
    from transformers import AutoModelForCausalLM

    from adakd_ds.experiments.testbed.spec import llama_config
    from adakd_ds.experiments.testbed.synthetic_tasks import generate_records, write_jsonl
    from adakd_ds.experiments.testbed.tokenizer_train import train_tokenizer

    records = generate_records(512, seed=0)
    write_jsonl(records, str(root / "train.jsonl"))
    tok_dir = train_tokenizer(str(root / "train.jsonl"), str(root / "tokenizer"), vocab_size=512)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llama_config(vocab, teacher_hidden, 4)).save_pretrained(root / "teacher")
    llama_config(vocab, student_hidden, 2).save_pretrained(root / "student_config")
    return {"teacher": str(root / "teacher"), "student_config": str(root / "student_config"), "tokenizer": tok_dir}


def run_variant(root: Path, assets: dict[str, str], name: str, steps: int) -> list[dict[str, float]]:
    out = root / name.replace(" ", "_")
    cfg = {
        "model": {k: assets[k] for k in ("teacher", "student_config", "tokenizer")},
        "data": {"source": str(root / "train.jsonl"), "max_prompt_len": 64, "max_len": 96},
        "train": {"max_steps": steps, "micro_batch": 16, "lr": 1e-3},
        "output": {"dir": str(out), "export": False, "tensorboard": False, "log_interval": 1000},
    }
    for section, values in VARIANTS[name].items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, str(REPO / "launch" / "distill.py"), "--config", str(path)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the medians")
    ap.add_argument("--teacher-hidden", type=int, default=256)
    ap.add_argument("--student-hidden", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assets = build_assets(root, args.teacher_hidden, args.student_hidden)
        rows, gen_len = {}, None
        for name in args.variants:
            hist = run_variant(root, assets, name, args.steps)[args.skip :]
            step_s = statistics.median(h["seconds"] for h in hist)
            tok_s = statistics.median(h["tokens"] / h["seconds"] for h in hist)
            rows[name] = (step_s, tok_s)
            if name == GEN:
                gen_len = statistics.mean(h["policy/gen_len"] for h in hist)
    base_name = "distill rkl" if "distill rkl" in rows else next(iter(rows))
    base = rows[base_name][0]
    print(
        f"1 rank, ZeRO-3, fp32, CPU threads={os.environ.get('OMP_NUM_THREADS', 'default')}, micro_batch 16, "
        f"teacher hidden {args.teacher_hidden} x4 layers, student hidden {args.student_hidden} x2 layers, "
        f"medians over steps {args.skip + 1}..{args.steps}"
    )
    print(f"| variant | step (ms) | tokens/s | time vs {base_name} |")
    print("|---|---:|---:|---:|")
    for name, (step_s, tok_s) in rows.items():
        print(f"| {name} | {step_s * 1e3:.1f} | {tok_s:.0f} | {step_s / base:.3f}x |")
    if "distill AdaKD-rkl" in rows and "distill rkl" in rows:
        ratio = rows["distill AdaKD-rkl"][0] / base
        print(f"\ntarget AdaKD step <= 1.10x distill rkl: {'met' if ratio <= 1.10 else 'NOT met'} ({ratio:.3f}x)")
    if GEN in rows and NO_GEN in rows:
        print(
            f"\na step with generation (mean {gen_len:.1f} new tokens per sample) costs "
            f"{rows[GEN][0] / rows[NO_GEN][0]:.2f}x the same AdaKD step on dataset responses"
        )


if __name__ == "__main__":
    main()
