"""How far the cached (top-k + tail) loss is from the exact one, on the shipped testbed teacher's real distributions.

    python bench/cache_error.py --out /tmp/cache_error

Students (the teacher is real; no trained student ships, so say which is which):
- `untrained`: a randomly initialised testbed student (hidden 128, 2 layers): far from the teacher.
- `near`: the teacher's own logits plus Gaussian noise (sd 1): a student close to the teacher, synthetic.
Per k: the objective's relative error (full AdaKD, rkl, r = 0.75), the difficulty scores' largest error, the
fraction of tokens whose LATF selection differs, the largest temperature error, the gradient's cosine with the exact
one and its relative norm error, and the bytes per token of real shards (write_shard, fp16 values as stored).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from adakd_ds.config.schema import DataConfig, LossConfig
from adakd_ds.data import Collator, build_dataset
from adakd_ds.data.teacher_cache import write_shard
from adakd_ds.engine.teacher_cache.writer import top_k_rows
from adakd_ds.experiments.testbed.spec import SHIPPED_TEACHER, Plan, llama_config, write_data
from adakd_ds.loss.adakd_loss import AdaKDLoss
from adakd_ds.loss.cached_target import CachedTarget


def _loss(student: torch.Tensor, teacher, targets: torch.Tensor):
    fn = AdaKDLoss(LossConfig())
    fn.controller.ratio = 0.75
    x = student.clone().requires_grad_(True)
    loss, stats = fn(x, teacher, targets)
    loss.backward()
    return float(loss.detach()), stats, x.grad


def _tau_err(a, b) -> float:
    ta, tb = (torch.zeros(s.selected.shape, dtype=torch.float64) for s in (a, b))
    ta[a.selected], tb[b.selected] = a.taus.double(), b.taus.double()
    both = a.selected & b.selected
    return float((ta[both] - tb[both]).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/cache_error")
    ap.add_argument("--samples", type=int, default=48)
    args = ap.parse_args()
    out = Path(args.out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = write_data(out, Plan())
    tok = AutoTokenizer.from_pretrained(str(SHIPPED_TEACHER))
    data = build_dataset(DataConfig(source=str(paths["train"]), max_prompt_len=48, max_len=80), tok)
    batch = Collator.for_tokenizer(tok)([data[i] for i in range(args.samples)])
    targets = torch.full_like(batch["labels"], -100)
    targets[:, :-1] = batch["labels"][:, 1:]
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(str(SHIPPED_TEACHER)).eval()
    student = AutoModelForCausalLM.from_config(llama_config(teacher.config.vocab_size, 128, 2)).eval()
    with torch.no_grad():
        zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    students = {"untrained": zs, "near": zt + torch.randn(zt.shape, dtype=torch.float64)}
    v = zt.shape[-1]
    valid = targets != -100
    rows = []
    for name, z in students.items():
        exact = _loss(z, zt, targets)
        for k in (8, 32, 128):
            ids, top, tail = top_k_rows(zt.reshape(-1, v), k)
            as_stored = CachedTarget(
                ids.reshape(*zt.shape[:-1], k),
                top.half().double().reshape(*zt.shape[:-1], k),
                tail.half().double().reshape(zt.shape[:-1]),
            )
            got = _loss(z, as_stored, targets)
            g0, g1 = exact[2][valid], got[2][valid]
            tail_mass = tail.reshape(zt.shape[:-1])[valid].exp()
            shard = out / f"shard_k{k}.safetensors"
            n = write_shard(shard, [(ids.reshape(-1, k)[valid.reshape(-1)], top.reshape(-1, k)[valid.reshape(-1)],
                                     tail[valid.reshape(-1)])], k)  # fmt: skip
            rows.append(
                {
                    "student": name,
                    "k": k,
                    "tail_mass_mean": float(tail_mass.mean()),
                    "loss_exact": exact[0],
                    "loss_rel_err": abs(got[0] - exact[0]) / abs(exact[0]),
                    "score_max_err": float((got[1].scores - exact[1].scores).abs().max()),
                    "selection_diff_frac": float((got[1].selected != exact[1].selected).double().mean()),
                    "tau_max_err": _tau_err(exact[1], got[1]),  # over the tokens both select
                    "grad_cos": float(torch.nn.functional.cosine_similarity(g0.flatten(), g1.flatten(), dim=0)),
                    "grad_norm_rel_err": float((g1.norm() - g0.norm()).abs() / g0.norm()),
                    "bytes_per_token": shard.stat().st_size / n,
                    "tokens": n,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (out / "cache_error.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
