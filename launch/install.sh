#!/usr/bin/env bash
# Install adakd-ds and everything it needs into ./.venv (or into the virtualenv that is already active).
# Where no NVIDIA GPU is visible, the CPU build of torch goes in FIRST: a bare `torch` requirement would pull a
# multi-GB CUDA build. A user with CUDA installs their own torch before this script, and it is kept.
#   ADAKD_TORCH_SPEC   the torch requirement for CPU machines (default: torch==2.13.0)
#   ADAKD_EXTRAS       pip extras to install (default: test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"adakd-ds needs Python 3.10+, this is {sys.version.split()[0]}")
PY
bash launch/pip_bootstrap.sh  # a current pip and wheel before anything else is installed

pip_q() { python -m pip install --quiet --disable-pip-version-check "$@"; }
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[install] GPU found: installing the default (CUDA) torch build"
    pip_q "torch>=2.3"
  else
    echo "[install] no GPU: installing the CPU build (${ADAKD_TORCH_SPEC:-torch==2.13.0})"
    pip_q "${ADAKD_TORCH_SPEC:-torch==2.13.0}"
  fi
fi
echo "[install] adakd-ds[${ADAKD_EXTRAS:-test}] and its dependencies"
pip_q -e ".[${ADAKD_EXTRAS:-test}]"
python -c "import torch, deepspeed, transformers; print(f'[install] torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')" 2>/dev/null | tail -1
