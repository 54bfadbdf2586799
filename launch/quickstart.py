"""The offline quickstart: python launch/quickstart.py [--out DIR] [--fast]  (launch/quickstart.sh also installs)."""

import sys

from adakd_ds.experiments.testbed.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
