"""Which tokens LATF selects and where IDTS puts its temperatures: python launch/token_analysis.py --help"""

import sys

from adakd_ds.experiments.grid.token_analysis import main

if __name__ == "__main__":
    sys.exit(main())
