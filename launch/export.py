"""Entry script: turn a ZeRO-3 checkpoint into a HF model directory (`adakd-export` does the same)."""

import sys

from adakd_ds.checkpoint.export import export_main

if __name__ == "__main__":
    sys.exit(export_main())
