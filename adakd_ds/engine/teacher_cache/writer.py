"""The cache writer: the teacher runs once over the training data, on N ranks, and its top-k distributions are stored.

The samples are exactly the trainer's (data/: the same formats, prompt masking, lengths and tokenizer, collated
the same way, and the same target shift: the logits at t predict token t + 1). Shards are cut by dataset order, so a
shard's bytes depend only on the plan, never on the number of ranks or on what ran before: a rerun after kill -9
skips the complete shards and rewrites the rest, which ends in the same bytes as a run that was never stopped.

ZeRO-3: every teacher forward is a collective, so every rank runs the same number of forwards; a rank with fewer
batches left runs one-token dummy forwards. The progress counts (one all-reduce per forward) also carry the stop
flag of a SIGTERM/SIGINT, so every rank stops at the same forward; the complete shards stay and exit is 75.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adakd_ds.config.schema import RunConfig
from adakd_ds.data import Collator, build_dataset, dataset_fingerprint, tokenizer_fingerprint
from adakd_ds.data.teacher_cache import (
    FORMAT_VERSION,
    MANIFEST,
    PLAN,
    CacheError,
    read_plan,
    shard_name,
    write_json,
    write_shard,
)
from adakd_ds.engine.distributed import init_distributed, shutdown_distributed
from adakd_ds.engine.ds_config import derive_teacher_config, fill_auto, load_ds_config
from adakd_ds.engine.models import build_teacher, load_tokenizer, torch_dtype
from adakd_ds.loss.dist_stats import all_gather_rows, all_reduce_sum

DRILL_ENV = "ADAKD_CACHE_KILL_AFTER"  # tests: rank 0 kills itself (SIGKILL) after writing this many shards


class Placement(str, enum.Enum):
    ZERO3 = "zero3"  # the teacher's parameters sharded over the ranks (a teacher too large for one rank)
    REPLICATED = "replicated"  # plain data parallel: each rank holds the whole teacher, no collective per forward


@dataclass
class CacheSettings:
    out: Path
    k: int = 32
    shard_samples: int = 256  # samples per shard file
    batch: int = 4  # samples per teacher forward
    placement: Placement = Placement.ZERO3


def teacher_fingerprint(path: str) -> str:
    """sha256 of the teacher's config.json and of the names and sizes of its files: cheap even for a 70B teacher."""
    root = Path(path)
    h = hashlib.sha256()
    config = root / "config.json"
    h.update(config.read_bytes() if config.is_file() else path.encode())
    for f in sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def _teacher_vocab(path: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(path).vocab_size)


def response_rows(labels: list[int]) -> list[int]:
    """Positions t whose logits are distilled: the target labels[t + 1] is a response token (as the trainer shifts)."""
    return [t for t in range(len(labels) - 1) if labels[t + 1] != -100]


@torch.no_grad()
def top_k_rows(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [n, k], log-probs [n, k], log of the rest [n]) at T = 1, in float32; the rest by logsumexp (no 1 - sum)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top, ids = logp.topk(k, dim=-1)
    tail = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)
    return ids, top, tail


class CacheWriter:
    """One cache run: `run()` returns the exit code (0 done, 75 stopped by a signal)."""

    def __init__(self, cfg: RunConfig, settings: CacheSettings) -> None:
        self.cfg, self.settings = cfg, settings
        self.teacher: Any = None
        self.stop = False

    def _plan(self, n_samples: int) -> dict[str, Any]:
        cfg, s = self.cfg, self.settings
        vocab = _teacher_vocab(cfg.model.teacher)
        if s.k > vocab:
            raise CacheError(f"--k {s.k} is larger than the teacher's vocab {vocab}")
        return {
            "format_version": FORMAT_VERSION,
            "k": s.k,
            "vocab": vocab,
            "shard_samples": s.shard_samples,
            "batch": s.batch,
            "n_samples": n_samples,
            "teacher": cfg.model.teacher,
            "teacher_fingerprint": teacher_fingerprint(cfg.model.teacher),
            "tokenizer": cfg.model.tokenizer or cfg.model.teacher,
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer),
            "data": cfg.data.source,
            "data_fingerprint": dataset_fingerprint(cfg.data),
            "dtype": cfg.train.dtype.value,
            "values": {"ids": "int32", "logp": "float16", "log_tail": "float16"},
        }

    def setup(self) -> None:
        info = init_distributed()
        self.rank, self.world = info.rank, info.world_size
        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = load_tokenizer(self.cfg.model)
        if self.rank != 0:  # rank 0 fills the datasets cache first, as in the trainer
            _barrier()
        try:
            self.dataset = build_dataset(self.cfg.data, self.tokenizer)
        finally:
            if self.rank == 0:
                _barrier()
        self.collate = Collator.for_tokenizer(self.tokenizer)
        self.plan = self._plan(len(self.dataset))
        old = read_plan(out)
        if old is not None and old != self.plan:
            diff = sorted(k for k in set(old) | set(self.plan) if old.get(k) != self.plan.get(k))
            raise CacheError(f"{out}: holds a cache with another plan ({', '.join(diff)} differ); use another --out")
        _barrier()
        if self.rank == 0 and old is None:
            write_json(out / PLAN, self.plan)
        self.lengths = [len(response_rows(lab)) for lab in self.dataset["labels"]]
        self.todo = self._missing_shards()
        if self.todo:
            self._build_teacher()

    def _missing_shards(self) -> list[int]:
        """Shards not yet on disk, as rank 0 sees them (stale temporaries removed); the same list on every rank."""
        out, n = self.settings.out, self.plan["n_samples"]
        todo: list[Any] = [None]
        if self.rank == 0:
            for tmp in out.glob(".*.tmp"):
                tmp.unlink()
            n_shards = math.ceil(n / self.settings.shard_samples)
            todo = [[j for j in range(n_shards) if not (out / shard_name(j)).is_file()]]
        if self.world > 1:
            torch.distributed.broadcast_object_list(todo, src=0)
        return list(todo[0])

    def _build_teacher(self) -> None:
        cfg = self.cfg
        if self.settings.placement is Placement.REPLICATED:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(cfg.model.teacher, dtype=torch_dtype(cfg.train.dtype))
            self.teacher = model.eval().requires_grad_(False)
            return
        student_ds = fill_auto(load_ds_config(cfg.deepspeed.student), cfg, self.world, source=cfg.deepspeed.student)
        self.teacher = build_teacher(cfg.model, derive_teacher_config(student_ds, cfg, self.world), cfg.train.dtype)

    # ----------------------------------------------------------------------------------------------------- run
    def _batches(self, shard: int) -> list[list[int]]:
        first = shard * self.settings.shard_samples
        idx = list(range(first, min(first + self.settings.shard_samples, self.plan["n_samples"])))
        return [idx[i : i + self.settings.batch] for i in range(0, len(idx), self.settings.batch)]

    @torch.no_grad()
    def _forward(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        samples = [self.dataset[i] for i in indices] if indices else [self.dataset[0]]
        batch = self.collate(samples)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not indices:  # a dummy forward: ZeRO-3 needs every rank in every forward; one token is enough
            ids, mask = ids[:1, :1], mask[:1, :1]
        logits = self.teacher(input_ids=ids, attention_mask=mask).logits[..., : self.plan["vocab"]]
        out = []
        for row in range(len(indices)):
            pos = torch.tensor(response_rows(samples[row]["labels"]), dtype=torch.long)
            out.append(top_k_rows(logits[row].index_select(0, pos), self.settings.k))
        return out

    def _install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.stop = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def run(self) -> int:
        from tqdm import tqdm

        out, per = self.settings.out, self.settings.shard_samples
        mine = self.todo[self.rank :: self.world]
        work = [(j, b) for j in mine for b in self._batches(j)]  # (shard, sample indices) per forward
        slots = int(all_gather_rows(torch.tensor([len(work)])).max())  # the longest rank's forwards, on every rank
        total = sum(self.lengths[i] for j in self.todo for b in self._batches(j) for i in b)
        bar = tqdm(
            total=total, unit="tok", unit_scale=True, disable=self.rank != 0, desc=f"caching on {self.world} ranks"
        )
        self._install_signals()
        kill_after = int(os.environ.get(DRILL_ENV, "0"))
        rows: list[Any] = []
        written = 0
        stopped = False
        for slot in range(slots):
            shard, indices = work[slot] if slot < len(work) else (None, [])
            rows += self._forward(indices)
            counts = all_reduce_sum(torch.tensor([float(sum(self.lengths[i] for i in indices)), float(self.stop)]))
            bar.update(int(counts[0]))
            if float(counts[1]) > 0:
                stopped = True
                break
            last_of_shard = shard is not None and (slot + 1 == len(work) or work[slot + 1][0] != shard)
            if last_of_shard:
                write_shard(out / shard_name(shard), rows, self.settings.k)
                rows, written = [], written + 1
                if self.rank == 0 and kill_after and written >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        _barrier()
        if stopped:
            return 75
        if self.rank == 0:
            self._write_manifest(per)
        _barrier()
        return 0

    def _write_manifest(self, per: int) -> None:
        out, n = self.settings.out, self.plan["n_samples"]
        n_shards = math.ceil(n / per)
        missing = [j for j in range(n_shards) if not (out / shard_name(j)).is_file()]
        if missing:
            raise CacheError(f"{out}: shards {missing[:5]} are missing after the run")
        shards = [{"file": shard_name(j), "first": j * per, "count": min(per, n - j * per)} for j in range(n_shards)]
        manifest = {**self.plan, "shards": shards, "lengths": self.lengths, "tokens": sum(self.lengths)}
        write_json(out / MANIFEST, manifest)

    def close(self) -> None:
        holders = {"teacher": self.teacher}
        self.teacher = None
        shutdown_distributed(holders)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def manifest_summary(out: Path) -> str:
    m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    size = sum((out / s["file"]).stat().st_size for s in m["shards"])
    return f"{m['tokens']} tokens of {m['n_samples']} samples, k {m['k']}, {size / max(m['tokens'], 1):.1f} bytes/token"


__all__ = ["CacheSettings", "CacheWriter", "Placement", "manifest_summary", "response_rows", "top_k_rows"]
