#!/usr/bin/env bash
# Runs the π1 experiment on one multi-GPU host (e.g. 8× H100 80GB).
#
#   MODEL=/data/Qwen2.5-Math-1.5B DATA=/data WORKDIR=/runs/pi1 bash launch/gpu.sh
#
# Extra arguments are passed on (e.g. --config.loss.pg_coef=0).
set -euo pipefail
: "${MODEL:?HF model dir}" "${DATA:?dir with dsr_sub.parquet and math500/verl_val.parquet}" "${WORKDIR:?}"
CONFIG=${CONFIG:-configs/pi1.py}
# Let XLA take GPU memory on demand rather than 75% up front: the sampler's KV
# cache and the learner's activations peak at different times.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec python -m rlvr_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.model.path="$MODEL" \
  --config.data.train_path="$DATA/dsr_sub.parquet" \
  --config.eval.path="$DATA/math500/verl_val.parquet" \
  --config.mesh.data=1 --config.mesh.fsdp=-1 "$@"
