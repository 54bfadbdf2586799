#!/bin/bash
# Write a DeepSpeed/MPI-style hostfile for the current Slurm allocation: one "host slots=G" line per node.
#
#   slurm/make_hostfile.sh [SLOTS] > hostfile
#
# SLOTS (ranks per node) defaults to $GPUS_PER_NODE, then $SLURM_GPUS_ON_NODE, then 8. Run it inside a job (it reads
# SLURM_JOB_NODELIST, e.g. "gpu[001-004]", and expands it with `scontrol show hostnames`). For pdsh/ssh launching:
#   slurm/make_hostfile.sh 8 > hostfile && deepspeed --hostfile hostfile launch/distill.py --config CFG
set -euo pipefail
slots=${1:-${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}}
if ! [[ "$slots" =~ ^[1-9][0-9]*$ ]]; then
    echo "make_hostfile.sh: slots must be a positive integer, got '$slots'" >&2
    exit 2
fi
if [ -z "${SLURM_JOB_NODELIST:-}" ]; then
    echo "make_hostfile.sh: SLURM_JOB_NODELIST is not set (run it inside a Slurm job or export it)" >&2
    exit 2
fi
hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
if [ -z "$hosts" ]; then
    echo "make_hostfile.sh: scontrol expanded '$SLURM_JOB_NODELIST' to no hosts" >&2
    exit 1
fi
while read -r host; do
    if [ -n "$host" ]; then echo "$host slots=$slots"; fi
done <<< "$hosts"
