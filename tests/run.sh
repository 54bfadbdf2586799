#!/usr/bin/env bash
# The README's test command: install what the tests need, then run them all (CPU only, about 10 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k loss`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/install.sh
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ruff check adakd_ds launch tests bench
set +e
# Two workers: most tests wait on subprocess start-up and collectives, so 2 cores run two of them well. The local
# Slurm cluster is one per machine: its tests share one worker (xdist_group "slurm"). ADAKD_TEST_WORKERS=0: serial.
python -m pytest -q --durations=15 -n "${ADAKD_TEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: that is a failure here" >&2
  exit 1
fi
exit "$rc"
