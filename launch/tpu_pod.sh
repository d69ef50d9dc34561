#!/usr/bin/env bash
# Runs the π1 experiment on a Cloud TPU pod slice (every worker runs the same
# command; jax.distributed is initialised automatically on a pod).
#
#   REPO=<git url> TPU=my-v4-32 ZONE=us-central2-b MODEL=/mnt/Qwen2.5-Math-1.5B \
#   DATA=/mnt/data WORKDIR=gs://bucket/pi1 bash launch/tpu_pod.sh
#
# MODEL and DATA must exist on every worker (a mounted disk or a copy);
# WORKDIR may be a gs:// path.
set -euo pipefail
: "${TPU:?name of the TPU VM}" "${ZONE:?zone}" "${MODEL:?HF model dir}" \
  "${DATA:?dir with dsr_sub.parquet and math500/verl_val.parquet}" "${WORKDIR:?}"
CONFIG=${CONFIG:-configs/pi1.py}
REPO=${REPO:?git URL of this repository}

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d rlvr_jax ] || git clone $REPO rlvr_jax
  cd rlvr_jax && pip install -q -e '.[tpu]'
  python -m rlvr_jax.main --config=$CONFIG --workdir=$WORKDIR \
    --config.model.path=$MODEL \
    --config.data.train_path=$DATA/dsr_sub.parquet \
    --config.eval.path=$DATA/math500/verl_val.parquet \
    --config.mesh.data=1 --config.mesh.fsdp=-1 $*
"
