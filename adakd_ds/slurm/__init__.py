"""Slurm: rendering the batch script (a pure function) and submitting it (`adakd-submit`). May import config only."""
