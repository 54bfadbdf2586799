#!/usr/bin/env bash
# Bring the active environment's packaging tools up to date: the newest pip, and wheel.
# Why: a venv starts with the pip that its Python bundles (23.x here), and without `wheel` pip builds sdists such as
# deepspeed and rouge-score through the deprecated `setup.py install` path, with warnings. launch/install.sh runs
# this first. Offline, the old pip is kept with a warning (the rest of the install may still work from local wheels).
set -euo pipefail
before=$(python -m pip --version | cut -d' ' -f2)
if python -m pip install --quiet --disable-pip-version-check --upgrade pip wheel; then
  echo "[install] pip ${before} -> $(python -m pip --version | cut -d' ' -f2), wheel $(python -c 'import wheel; print(wheel.__version__)')"
else
  echo "[install] warning: could not upgrade pip and install wheel (offline?); continuing with pip ${before}" >&2
fi
