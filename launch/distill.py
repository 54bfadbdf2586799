"""Entry script for `deepspeed --num_gpus N launch/distill.py --config RUN.yaml` and torchrun."""

import sys

from adakd_ds.engine.cli import distill_main

if __name__ == "__main__":
    sys.exit(distill_main())
