"""The sensitivity study of AdaKD on the testbed: `python launch/sensitivity.py --phase choose --out runs/sensitivity`."""

import sys

from adakd_ds.experiments.grid.sensitivity import main

if __name__ == "__main__":
    sys.exit(main())
