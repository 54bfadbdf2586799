"""Entry script for `deepspeed --num_gpus N launch/distill.py --config RUN.yaml` and torchrun."""

import sys

from adakd_ds.engine.cli import distill_main
from adakd_ds.engine.guard.supervisor import report_exit

if __name__ == "__main__":
    sys.exit(report_exit(distill_main()))
