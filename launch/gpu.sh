#!/usr/bin/env bash
# Runs a training job on GPUs: one host with all its GPUs, or a SLURM job of
# several nodes (one process per node, each with all of its node's GPUs).
#
#   MODEL=/data/Qwen2.5-Math-1.5B WORKDIR=/runs/pi1 \
#     bash launch/gpu.sh [--dry-run] local [-- --config.x=y ...]
#   MODEL=... WORKDIR=/shared/runs/pi1 NODES=4 \
#     bash launch/gpu.sh [--dry-run] slurm [-- --config.x=y ...]
#
# slurm writes a batch script next to the workdir's name (WORKDIR.sbatch) and
# submits it with sbatch. In the job, srun starts `gpu.sh slurm-task` once per
# node; each task passes --coordinator_address (the job's first node),
# --num_processes=$SLURM_NTASKS and --process_id=$SLURM_PROCID to
# rlvr_jax.main. MODEL and WORKDIR must be on a filesystem every node sees.
#
# Optional: CONFIG (configs/pi1.py), GPUS_PER_NODE (8), PORT (the
# coordinator's port, 12355), TIME (the job's time limit, 24:00:00),
# PARTITION, PYTHON (python3).
# --dry-run prints the commands (and the batch script) without running them.
set -euo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
SUB=${1:-local}
shift || true
if [[ ${1:-} == -- ]]; then shift; fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"

main_cmd() {  # the training command, the same on every process
  : "${MODEL:?HF model directory}" "${WORKDIR:?workdir}"
  CMD=("${PYTHON:-python3}" -m rlvr_jax.main "--config=${CONFIG:-configs/pi1.py}"
    "--workdir=$WORKDIR" "--config.model.path=$MODEL"
    --config.mesh.data=1 --config.mesh.fsdp=-1 "$@")
}

# Let XLA take GPU memory on demand rather than 75% up front: the sampler's KV
# cache and the learner's activations peak at different times.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

case $SUB in
  local)
    main_cmd "$@"
    cd "$REPO"
    act "${CMD[@]}"
    ;;
  slurm)
    main_cmd "$@"
    batch=${WORKDIR%/}.sbatch
    partition=()
    if [[ -n ${PARTITION:-} ]]; then partition=("#SBATCH --partition=$PARTITION"); fi
    script=$(
      cat <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=rlvr_jax
#SBATCH --nodes=${NODES:?number of nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${GPUS_PER_NODE:-8}
#SBATCH --time=${TIME:-24:00:00}
#SBATCH --output=${WORKDIR%/}.%j.log
${partition[*]}
# Written by launch/gpu.sh. Process 0 runs on the first node of the job.
set -euo pipefail
export $(say MODEL="$MODEL" WORKDIR="$WORKDIR" CONFIG="${CONFIG:-configs/pi1.py}" PYTHON="${PYTHON:-python3}")
export RLVR_COORDINATOR=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1):${PORT:-12355}
cd $(printf '%q' "$REPO")
srun bash launch/gpu.sh slurm-task -- $(say "${@}")
EOF
    )
    if [[ $DRY == 1 ]]; then
      echo "# $batch:"
      sed 's/^/#   /' <<<"$script"
    else
      mkdir -p "$(dirname "$batch")"
      printf '%s\n' "$script" > "$batch"
    fi
    act sbatch "$batch"
    ;;
  slurm-task)
    : "${RLVR_COORDINATOR:?set by the batch script}" "${SLURM_NTASKS:?}" "${SLURM_PROCID:?}"
    main_cmd "$@"
    act "${CMD[@]}" "--coordinator_address=$RLVR_COORDINATOR" \
      "--num_processes=$SLURM_NTASKS" "--process_id=$SLURM_PROCID"
    ;;
  *)
    echo "usage: bash launch/gpu.sh [--dry-run] local|slurm [-- main flags]" >&2
    exit 2
    ;;
esac
