#!/usr/bin/env bash
# Run one experiments module on every worker at once (a pod slice needs all hosts in the program),
# each output line prefixed with its worker, the whole stream also appended to a local log file.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tpu/run.sh --name NAME --zone ZONE [--env KEY=VALUE]... [--data] [--log FILE]
                  [--project PROJECT] [--dry-run] MODULE [MODULE_ARGS...]

  MODULE          a Python module run from the repo root, e.g. experiments.icl_accuracy
                  (a bare name like icl_accuracy means experiments.icl_accuracy)
  MODULE_ARGS     everything after MODULE goes to it unchanged, quoting kept
  --env KEY=VAL   extra environment for the run (repeatable; overrides the defaults below)
  --data          set JAXICL_DATA_DIR to the ~/jaxicl-data that `tpu/install.sh --data` copied
  --log FILE      local log (default runs/tpu/NAME/run-<UTC time>.log)
  --dry-run       print the commands, run nothing

Every worker gets PYTHONUNBUFFERED=1 (logs stream), JAXICL_DISTRIBUTED=1 (jaxicl.runtime.distributed.initialize
joins the pod's processes) and JAX_COMPILATION_CACHE_DIR=~/.cache/jaxicl/jax-compilation (compiled
programs persist across runs on the same VM).
EOF
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ENVS=()
USE_DATA=0
LOG=
MODULE=
while (($#)); do
  case $1 in
    -e | --env)
      need_value "$@"
      [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die_usage "--env wants KEY=VALUE, got '$2'"
      ENVS+=("$2"); shift 2 ;;
    --data) USE_DATA=1; shift ;;
    --log) need_value "$@"; LOG=$2; shift 2 ;;
    --) shift; (($#)) || die_usage "missing MODULE after --"; MODULE=$1; shift; break ;;
    -*) parse_common "$@" || die_usage "unknown argument: $1"; shift "$SHIFT_BY" ;;
    *) MODULE=$1; shift; break ;;
  esac
done
MODULE_ARGS=("$@")

validate_target
[[ -n $MODULE ]] || die_usage "missing MODULE (e.g. experiments.icl_accuracy)"
[[ $MODULE == *.* ]] || MODULE="experiments.$MODULE"
[[ $MODULE =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$ ]] || die_usage "bad module name '$MODULE'"
LOG=${LOG:-runs/tpu/$TPU_NAME/run-$(date -u +%Y%m%dT%H%M%SZ).log}

# The remote line. $HOME and $W stay literal here and expand on the worker.
env_words=(PYTHONUNBUFFERED=1 JAXICL_DISTRIBUTED=1 "JAX_COMPILATION_CACHE_DIR=\"$REMOTE_COMPILE_CACHE\"")
((!USE_DATA)) || env_words+=("JAXICL_DATA_DIR=\"\$HOME/$REMOTE_DATA\"")
for kv in ${ENVS[@]+"${ENVS[@]}"}; do env_words+=("$(shell_quote "$kv")"); done
program="\$HOME/$REMOTE_VENV/bin/python -m $MODULE"
((${#MODULE_ARGS[@]} == 0)) || program+=" $(shell_quote "${MODULE_ARGS[@]}")"
worker_id='W=$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
remote="set -o pipefail; cd $REMOTE_REPO && $worker_id && env ${env_words[*]} $program 2>&1 | sed -u \"s/^/[worker \$W] /\""

gcloud_tpu ssh "$TPU_NAME"
CMD+=(--worker=all --command "$remote")
run mkdir -p "$(dirname "$LOG")"
((DRY_RUN)) || note "log: $LOG"
run_logged "$LOG" "${CMD[@]}"
