#!/usr/bin/env bash
# The README's test command: install what the tests need, then run them all (CPU only, about 18 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k loss`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/install.sh
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ruff check adakd_ds launch tests bench
set +e
# Two workers: most tests wait on subprocess start-up and collectives, so 2 cores run two of them well
# (ADAKD_TEST_WORKERS=0: serial). The real local Slurm cluster's tests run afterwards, alone: its daemons once lost
# munged while the other worker's drills ran beside them. With arguments, one pytest call gets them all.
workers=(-n "${ADAKD_TEST_WORKERS:-2}" --dist loadgroup)
if [ "$#" -gt 0 ]; then
  python -m pytest -q --durations=15 "${workers[@]}" "$@"
  rc=$?
else
  python -m pytest -q --durations=15 "${workers[@]}" -m "not slurm"
  rc=$?
  python -m pytest -q --durations=5 -m slurm
  rc_slurm=$?
  [ "$rc" -ne 0 ] || rc=$rc_slurm
fi
set -e
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: that is a failure here" >&2
  exit 1
fi
exit "$rc"
