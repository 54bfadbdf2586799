"""Run a loss x variant x seed grid: `python launch/experiment.py --embedded --losses rkl fkl --variants base adakd`."""

import sys

from adakd_ds.experiments.grid.runner import main

if __name__ == "__main__":
    sys.exit(main())
