"""Entry script for `python launch/supervise.py deepspeed|torchrun ...` (the adakd-launch console script)."""

import sys

from adakd_ds.engine.guard.supervisor import main

if __name__ == "__main__":
    sys.exit(main())
