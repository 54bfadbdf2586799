#!/usr/bin/env bash
# The README's first command: install, then run the offline quickstart (embedded data, shipped teacher, three student
# rows x 3 seeds, evaluation) and print the results table. About 8 minutes on 2 CPU cores, install included.
# Arguments go to launch/quickstart.py (e.g. --out DIR, --fast). Rerunning continues where an interrupted run stopped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ADAKD_EXTRAS="${ADAKD_EXTRAS:-test}" bash launch/install.sh
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec python launch/quickstart.py "$@"
