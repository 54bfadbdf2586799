"""Render and submit the Slurm batch script for a run: ``python launch/submit.py --config CFG [--dry-run] [-- overrides]``.

Same as the ``adakd-submit`` console script; see adakd_ds/slurm/submit.py.
"""

import sys

from adakd_ds.slurm.submit import submit_main

if __name__ == "__main__":
    sys.exit(submit_main())
