#!/usr/bin/env bash
# Delete the TPU VM: a TPU bills for every hour it exists, busy or idle, until it is deleted.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tpu/delete.sh --name NAME --zone ZONE [--yes] [--project PROJECT] [--dry-run]

  --yes      do not ask for confirmation (passes --quiet to gcloud)
  --dry-run  print the command, run nothing

Fetch results first (tpu/fetch.sh): the VM's disk, ~/jaxicl/runs included, goes with it.
USAGE
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUIET=()
while (($#)); do
  case $1 in
    -y | --yes) QUIET=(--quiet); shift ;;
    *) parse_common "$@" || die_usage "unknown argument: $1"; shift "$SHIFT_BY" ;;
  esac
done

validate_target
gcloud_tpu delete "$TPU_NAME"
CMD+=(${QUIET[@]+"${QUIET[@]}"})
run "${CMD[@]}"
