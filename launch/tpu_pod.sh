#!/usr/bin/env bash
# Runs a training job on a Cloud TPU VM slice. Every worker runs the same
# command; jax.distributed finds the other workers from the TPU metadata.
#
#   TPU=pi1-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   MODEL=/data/Qwen2.5-Math-1.5B WORKDIR=gs://bucket/pi1 \
#     bash launch/tpu_pod.sh [--dry-run] run [-- --config.x=y ...]
#   TPU=... ZONE=... bash launch/tpu_pod.sh [--dry-run] stop    # VMs off, disks kept
#   TPU=... ZONE=... bash launch/tpu_pod.sh [--dry-run] delete  # the slice is gone
#
# run: creates the slice unless it exists (starts it when stopped), copies
# this repository's committed tree and MODEL (when it is a directory here;
# otherwise MODEL must exist on every worker) to every worker, installs the
# package, starts the job on --worker=all in the background and streams
# worker 0's log until the job ends; the exit status is worker 0's.
#
# SPOT=1 creates a spot slice. When it is preempted the script deletes and
# recreates it and starts the job again into the same WORKDIR, which resumes
# from the newest checkpoint there (so WORKDIR must be gs://: a worker's disk
# goes with the VM). At most MAX_RESTARTS (default 20) times.
#
# VERSION is the slice's TPU software version; by default Cloud TPU's runtime
# for ACCELERATOR's generation: tpu-ubuntu2204-base for v4 (v4-*),
# v2-alpha-tpuv5-lite for v5e (v5litepod-*), v2-alpha-tpuv5 for v5p (v5p-*),
# v2-alpha-tpuv6e for v6e (v6e-*). Another accelerator type needs VERSION.
#
# Optional: CONFIG (configs/pi1.py), PROJECT, PYTHON (python3 on the workers).
# --dry-run prints every command without running those that change anything;
# the read-only `describe` still runs, so the plan matches the slice's state.
set -euo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
SUB=${1:-run}
shift || true
if [[ ${1:-} == -- ]]; then shift; fi
: "${TPU:?name of the TPU VM slice}" "${ZONE:?zone}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
G=(gcloud compute tpus tpu-vm)
AT=(--zone "$ZONE")
if [[ -n ${PROJECT:-} ]]; then AT+=(--project "$PROJECT"); fi

# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"

state() {  # READY, STOPPED, PREEMPTED, ... or ABSENT
  "${G[@]}" describe "$TPU" "${AT[@]}" --format='value(state)' 2>/dev/null ||
    echo ABSENT
}

# The TPU software version to create an ACCELERATOR slice with: VERSION when
# set, else the runtime for the accelerator's generation.
tpu_version() {
  if [[ -n ${VERSION:-} ]]; then
    echo "$VERSION"
    return
  fi
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *)
      echo "unknown accelerator type $1 (known: v4-*, v5litepod-*, v5p-*, v6e-*): set VERSION to its TPU software version" >&2
      return 1
      ;;
  esac
}

create() {
  local spot=() version
  version=$(tpu_version "${ACCELERATOR:?accelerator type to create, e.g. v4-32}") ||
    exit 1
  if [[ ${SPOT:-0} == 1 ]]; then spot=(--spot); fi
  act "${G[@]}" create "$TPU" "${AT[@]}" \
    --accelerator-type "$ACCELERATOR" --version "$version" "${spot[@]}"
}

ensure_slice() {
  local s
  s=$(state)
  case $s in
    READY) ;;
    STOPPED) act "${G[@]}" start "$TPU" "${AT[@]}" ;;
    PREEMPTED | TERMINATED)
      act "${G[@]}" delete "$TPU" "${AT[@]}" --quiet
      create
      ;;
    ABSENT | "") create ;;
    *)
      echo "TPU $TPU is $s; try again when it is READY" >&2
      exit 1
      ;;
  esac
}

# The job each worker runs: written here, copied, so no quoting crosses ssh.
worker_script() {
  local model=$1
  shift
  local cmd=("${PYTHON:-python3}" -m rlvr_jax.main "--config=${CONFIG:-configs/pi1.py}"
    "--workdir=$WORKDIR" "--config.model.path=$model"
    --config.mesh.data=1 --config.mesh.fsdp=-1 "$@")
  cat <<EOF
#!/usr/bin/env bash
# Written by launch/tpu_pod.sh: unpack, install, start the job in the background.
set -e
rm -rf ~/rlvr_jax && mkdir -p ~/rlvr_jax && tar -xzf ~/rlvr_jax.tar.gz -C ~/rlvr_jax
cd ~/rlvr_jax
${PYTHON:-python3} -m pip install -q -e '.[tpu]'
rm -f ~/rlvr_jax.rc
cat > ~/rlvr_job.sh <<'JOB'
cd ~/rlvr_jax
$(say "${cmd[@]}" | sed 's/@HOME@/$HOME/g')
echo \$? > ~/rlvr_jax.rc
JOB
nohup bash ~/rlvr_job.sh > ~/rlvr_jax.log 2>&1 < /dev/null &
echo \$! > ~/rlvr_jax.pid
EOF
}

run() {
  : "${MODEL:?HF model directory}" "${WORKDIR:?workdir (gs:// for spot slices)}"
  # An unknown accelerator type stops here, not when a slice is (re)created.
  if [[ -n ${ACCELERATOR:-} ]]; then tpu_version "$ACCELERATOR" > /dev/null || exit 1; fi
  local tmp code start model=$MODEL copy_model=0
  tmp=$(mktemp -d)
  code=$tmp/rlvr_jax.tar.gz
  start=$tmp/rlvr_start.sh
  if [[ -d $MODEL ]]; then
    copy_model=1
    # In the worker's $HOME (expanded there by the job's shell); scp into
    # the home, not into a fixed name, so a reused slice gets it replaced.
    model=@HOME@/$(basename "$MODEL")
  fi
  worker_script "$model" "$@" > "$start"
  if [[ $DRY == 1 ]]; then
    echo "# $start:"
    sed 's/^/#   /' "$start"
  fi
  local restarts=0 rc
  while :; do
    ensure_slice
    act git -C "$REPO" archive --format=tar.gz -o "$code" HEAD
    act "${G[@]}" scp "$code" "$start" "$TPU:" "${AT[@]}" --worker=all
    if [[ $copy_model == 1 ]]; then
      act "${G[@]}" scp --recurse "$MODEL" "$TPU:" "${AT[@]}" --worker=all
    fi
    act "${G[@]}" ssh "$TPU" "${AT[@]}" --worker=all --command 'bash ~/rlvr_start.sh'
    rc=0
    act "${G[@]}" ssh "$TPU" "${AT[@]}" --worker=0 --command \
      'tail -n +1 --pid="$(cat ~/rlvr_jax.pid)" -F ~/rlvr_jax.log 2>/dev/null; exit "$(cat ~/rlvr_jax.rc 2>/dev/null || echo 255)"' ||
      rc=$?
    if [[ $DRY == 1 || $rc == 0 ]]; then return "$rc"; fi
    if [[ ${SPOT:-0} == 1 && $(state) == PREEMPTED && $restarts -lt ${MAX_RESTARTS:-20} ]]; then
      restarts=$((restarts + 1))
      echo "TPU $TPU was preempted; restart $restarts into $WORKDIR" >&2
      continue
    fi
    return "$rc"
  done
}

case $SUB in
  run) run "$@" ;;
  stop) act "${G[@]}" stop "$TPU" "${AT[@]}" ;;
  delete) act "${G[@]}" delete "$TPU" "${AT[@]}" --quiet ;;
  *)
    echo "usage: bash launch/tpu_pod.sh [--dry-run] run|stop|delete [-- main flags]" >&2
    exit 2
    ;;
esac
