#!/usr/bin/env bash
# Copy a run directory back from worker 0, where process 0 (jaxicl.runtime.distributed.write_once) writes.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tpu/fetch.sh --name NAME --zone ZONE --run-dir DIR [--dest LOCAL_DIR]
                    [--project PROJECT] [--dry-run]

  --run-dir DIR  on worker 0, relative to ~/jaxicl (e.g. runs/icl_accuracy) or absolute
  --dest DIR     local directory to copy into (default runs/tpu/NAME); DIR lands inside it
  --dry-run      print the commands, run nothing
USAGE
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN_DIR=
DEST=
while (($#)); do
  case $1 in
    --run-dir) need_value "$@"; RUN_DIR=$2; shift 2 ;;
    --dest) need_value "$@"; DEST=$2; shift 2 ;;
    *) parse_common "$@" || die_usage "unknown argument: $1"; shift "$SHIFT_BY" ;;
  esac
done

validate_target
[[ -n $RUN_DIR ]] || die_usage "missing --run-dir (e.g. runs/icl_accuracy)"
# scp hands the remote path to a shell on the worker: keep it to characters that need no quoting.
[[ $RUN_DIR =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]] || die_usage "--run-dir: use a path without spaces or shell characters"
[[ $RUN_DIR == /* || $RUN_DIR == "~"* ]] || RUN_DIR="$REMOTE_REPO/$RUN_DIR"
DEST=${DEST:-runs/tpu/$TPU_NAME}

run mkdir -p "$DEST"
gcloud_tpu scp --recurse "$TPU_NAME:${RUN_DIR%/}" "$DEST"
CMD+=(--worker=0)
run "${CMD[@]}"
