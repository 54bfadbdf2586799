"""Where the distillation gradient goes, by difficulty decile and family, along grid cells' checkpoints:
`python launch/gradient_share.py --cells runs/sensitivity/choose/paper/cells --out bench/results`."""

import sys

from adakd_ds.experiments.grid.gradient_share import main

if __name__ == "__main__":
    sys.exit(main())
