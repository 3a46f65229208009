#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice for jaxicl runs.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tpu/create.sh --name NAME --zone ZONE [--accelerator TYPE] [--version RUNTIME]
                     [--spot | --preemptible] [--project PROJECT] [--dry-run] [-- GCLOUD_ARGS...]

  --accelerator TYPE  v4-8 (default; one host), v5litepod-8, v6e-8, v4-32 (a 4-host pod slice), ...
  --version RUNTIME   TPU software version; default from the type: v4 and older tpu-ubuntu2204-base,
                      v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot              Spot capacity: much cheaper, can be reclaimed at any time
  --preemptible       the older preemptible model (runs at most 24 h)
  --dry-run           print the commands, run nothing
  -- GCLOUD_ARGS      passed to `gcloud compute tpus tpu-vm create` as they are (--network, --labels, ...)

Environment defaults: JAXICL_TPU_NAME, JAXICL_TPU_ZONE, JAXICL_TPU_PROJECT, JAXICL_TPU_ACCELERATOR,
JAXICL_TPU_VERSION.
EOF
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CAPACITY=()
EXTRA=()
while (($#)); do
  case $1 in
    -a | --accelerator) need_value "$@"; TPU_ACCELERATOR=$2; shift 2 ;;
    --version) need_value "$@"; TPU_VERSION=$2; shift 2 ;;
    --spot | --preemptible)
      ((${#CAPACITY[@]} == 0)) || die_usage "--spot and --preemptible exclude each other"
      CAPACITY=("$1"); shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) parse_common "$@" || die_usage "unknown argument: $1"; shift "$SHIFT_BY" ;;
  esac
done

validate_target
[[ $TPU_ACCELERATOR =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] \
  || die_usage "bad accelerator type '$TPU_ACCELERATOR' (like v4-8, v5litepod-8, v4-32)"
TPU_VERSION=${TPU_VERSION:-$(default_runtime_version "$TPU_ACCELERATOR")}
[[ $TPU_VERSION =~ ^[a-z0-9][-a-z0-9.]*$ ]] || die_usage "bad runtime version '$TPU_VERSION'"

gcloud_tpu create "$TPU_NAME"
CMD+=(--accelerator-type "$TPU_ACCELERATOR" --version "$TPU_VERSION" ${CAPACITY[@]+"${CAPACITY[@]}"})
run "${CMD[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
