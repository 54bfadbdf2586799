"""What the pipeline pins so that every stage gives the same bits run to run, and what it cannot pin.

Measured on the reduced quickstart: two runs on one machine give byte-identical tokenizers, data, trained models and
predictions. What changed the bits was the number of CPU threads: a 10-step teacher SFT with OMP_NUM_THREADS=2 per
rank gives other weights than with 1 (float sums are reduced in another order), and 900 steps turn that into other
ROUGE-L scores. The stages used to take OMP_NUM_THREADS from the caller's environment when it was set, and the
quickstart's in-process evaluation used torch's default (one thread per core, so another machine, other bits). Now
every stage runs with one thread, whatever the caller set.

What stays outside our control, and is recorded next to the results by ``environment()``: the versions of torch,
transformers, deepspeed and the tokenizer libraries (a fresh install may pull newer ones), and the CPU's instruction
set (torch picks other kernels on AVX-512 than on AVX2, with other rounding).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata

# Forced on every stage's environment (not defaults): the caller's own values would change the results.
PINNED_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",  # torch's intra-op threads: the order of float reductions
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",  # set and dict-of-str orders, in case any library iterates one
}
THREADS = int(PINNED_ENV["OMP_NUM_THREADS"])
PACKAGES = ("torch", "deepspeed", "transformers", "tokenizers", "sentencepiece", "datasets", "accelerate")


def pinned_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with PINNED_ENV forced over it."""
    return {**base, **PINNED_ENV}


def overridden(base: Mapping[str, str]) -> list[str]:
    """'NAME=caller value -> pinned value' for each pinned variable the caller had set to something else."""
    return [f"{k}={base[k]} -> {v}" for k, v in PINNED_ENV.items() if k in base and base[k] != v]


@contextmanager
def pinned_threads() -> Iterator[None]:
    """Work done in this process (the quickstart's in-process evaluation) uses the stages' thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()


def environment() -> dict[str, object]:
    """What a rerun elsewhere must match to give the same bits: package versions, CPU, torch's kernel choice."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads_per_rank": THREADS,
    }
