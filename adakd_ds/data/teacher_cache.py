"""The offline teacher's store: per response token, the teacher's top-k ids, log-probs and the log of the rest.

Layout of a cache directory:
- plan.json: what is being cached (format version, k, vocab, samples per shard, the teacher, tokenizer and data
  fingerprints), written first; a rerun with another plan is refused instead of mixing two caches.
- shard-NNNNN.safetensors: samples [first, first + count) of the dataset, in dataset order: `ids` int32 [n, k],
  `logp` float16 [n, k], `log_tail` float16 [n], `offsets` int64 [count + 1] (sample j's rows are
  offsets[j]:offsets[j+1], its response tokens in position order). Written to a temporary name, fsynced, renamed:
  a shard that exists is complete.
- manifest.json: the plan plus every shard and every sample's token count, written LAST by rank 0: a cache without
  it is unfinished, and training refuses it.
Why safetensors: a shard memory-maps (safe_open reads only the rows asked for), any sample is found from the
manifest without a scan, the files are byte-deterministic, and the package is already installed with transformers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
PLAN, MANIFEST = "plan.json", "manifest.json"
FINGERPRINT_KEYS = ("tokenizer_fingerprint", "data_fingerprint")


class CacheError(ValueError):
    """A cache that cannot serve this run (missing, unfinished, other data/tokenizer): one line, exit 2."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Sorted keys, no timestamp: the same content gives the same bytes."""
    _atomic_write_bytes(path, (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode())


def write_shard(path: Path, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int) -> int:
    """One shard from per-sample (ids [n, k], logp [n, k], log_tail [n]); returns its token count."""
    from safetensors.torch import save

    counts = [int(r[0].shape[0]) for r in rows]
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(counts, dtype=torch.int64).cumsum(0)
    cat = [torch.cat([r[i] for r in rows]) if rows else None for i in range(3)]
    tensors = {
        "ids": cat[0].to(torch.int32).reshape(-1, k).contiguous(),
        "logp": cat[1].to(torch.float16).reshape(-1, k).contiguous(),
        "log_tail": cat[2].to(torch.float16).reshape(-1).contiguous(),
        "offsets": offsets,
    }
    _atomic_write_bytes(path, save(tensors, metadata={"format_version": str(FORMAT_VERSION)}))
    return int(offsets[-1])


def read_plan(root: Path) -> dict[str, Any] | None:
    p = root / PLAN
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


@dataclass(frozen=True)
class SampleRows:
    ids: torch.Tensor  # [n, k] int64
    logp: torch.Tensor  # [n, k] float32
    log_tail: torch.Tensor  # [n] float32


class TeacherCache:
    """Random access to a finished cache: rows(i) gives sample i's cached distributions (memory-mapped)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            why = (
                "unfinished (no manifest.json: rerun adakd-cache-teacher)"
                if (self.root / PLAN).is_file()
                else "no cache"
            )
            raise CacheError(f"model.teacher_cache {self.root}: {why}")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"model.teacher_cache {self.root}: format version {self.manifest.get('format_version')} "
                f"(this adakd-ds reads {FORMAT_VERSION})"
            )
        self.k, self.vocab = int(self.manifest["k"]), int(self.manifest["vocab"])
        self.per_shard = int(self.manifest["shard_samples"])
        self.lengths = list(self.manifest["lengths"])
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def has_tail(self) -> bool:
        return self.k < self.vocab

    def mismatch(self, fingerprints: dict[str, str]) -> str | None:
        """The first fingerprint that differs from the run's, as one phrase; None when all match."""
        for key in FINGERPRINT_KEYS:
            if self.manifest.get(key) != fingerprints[key]:
                what = key.replace("_fingerprint", "")
                return (
                    f"model.teacher_cache {self.root}: its {what} fingerprint {str(self.manifest.get(key))[:12]} "
                    f"differs from this run's {fingerprints[key][:12]} (cached for {self.manifest.get(what, '?')})"
                )
        return None

    def _shard(self, index: int) -> Any:
        if index not in self._open:
            from safetensors import safe_open

            self._open[index] = safe_open(str(self.root / shard_name(index)), framework="pt")
        return self._open[index]

    def rows(self, sample: int) -> SampleRows:
        shard = self._shard(sample // self.per_shard)
        j = sample % self.per_shard
        offsets = shard.get_slice("offsets")[j : j + 2]
        a, b = int(offsets[0]), int(offsets[1])
        return SampleRows(
            shard.get_slice("ids")[a:b].long(),
            shard.get_slice("logp")[a:b].float(),
            shard.get_slice("log_tail")[a:b].float(),
        )


def batch_rows(cache: TeacherCache, indices: list[int], targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(ids [B, L, k], logp [B, L, k], log_tail [B, L]) aligned with a micro-batch's shifted targets [B, L].

    Row b holds sample indices[b]; its cached rows fill the positions whose target is a response token, in order.
    A count that differs means the cache was made from other samples: an error naming the sample.
    """
    b, length = targets.shape
    ids = torch.zeros(b, length, cache.k, dtype=torch.long)
    logp = torch.zeros(b, length, cache.k, dtype=torch.float32)
    tail = torch.zeros(b, length, dtype=torch.float32)
    for row, sample in enumerate(indices):
        pos = (targets[row] != -100).nonzero().squeeze(1)
        got = cache.rows(sample)
        if got.ids.shape[0] != pos.numel():
            raise CacheError(
                f"model.teacher_cache {cache.root}: sample {sample} has {got.ids.shape[0]} cached tokens but "
                f"{pos.numel()} response tokens in this run"
            )
        ids[row, pos], logp[row, pos], tail[row, pos] = got.ids, got.logp, got.log_tail
    return ids, logp, tail


def open_for_run(path: str, tokenizer: Any, data_cfg: Any) -> TeacherCache:
    """The cache, if its tokenizer and data fingerprints are this run's; else one line naming what differs."""
    from adakd_ds.data.source import dataset_fingerprint
    from adakd_ds.data.tokenize import tokenizer_fingerprint

    cache = TeacherCache(path)
    run = {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "data_fingerprint": dataset_fingerprint(data_cfg)}
    problem = cache.mismatch(run)
    if problem:
        raise CacheError(problem)
    return cache


__all__ = [
    "FORMAT_VERSION",
    "CacheError",
    "SampleRows",
    "TeacherCache",
    "batch_rows",
    "open_for_run",
    "read_plan",
    "write_json",
    "write_shard",
]
