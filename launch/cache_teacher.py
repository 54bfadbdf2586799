"""Entry script for `torchrun --nproc_per_node N launch/cache_teacher.py --config RUN.yaml --out DIR` (or deepspeed)."""

import sys

from adakd_ds.engine.teacher_cache.cli import cache_main

if __name__ == "__main__":
    sys.exit(cache_main())
