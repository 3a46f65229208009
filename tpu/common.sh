# shellcheck shell=bash
# Shared defaults and helpers for tpu/*.sh. Sourced, never run: every script gets the same
# option parsing, validation, remote layout and --dry-run behaviour from here.

# ---- defaults (override with the environment) ------------------------------------------------
TPU_NAME=${JAXICL_TPU_NAME:-}
TPU_ZONE=${JAXICL_TPU_ZONE:-}
TPU_PROJECT=${JAXICL_TPU_PROJECT:-}
TPU_ACCELERATOR=${JAXICL_TPU_ACCELERATOR:-v4-8}
TPU_VERSION=${JAXICL_TPU_VERSION:-}              # empty: chosen from the accelerator type
TPU_PYTHON=${JAXICL_TPU_PYTHON:-python3.11}      # the runtime images ship 3.10; jaxicl needs >= 3.11
DRY_RUN=0

# Layout on every worker, relative to the remote home directory.
REMOTE_REPO=jaxicl
REMOTE_VENV=jaxicl-venv
REMOTE_DATA=jaxicl-data
REMOTE_COMPILE_CACHE='$HOME/.cache/jaxicl/jax-compilation'   # expanded on the worker, not here

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAGE_ROOT=${TMPDIR:-/tmp}

# ---- messages ----------------------------------------------------------------------------------
die_usage() {  # a usage error: message, usage text, exit 2 (each script defines usage())
  echo "error: $*" >&2
  usage >&2
  exit 2
}

note() { echo "[tpu] $*" >&2; }

# ---- option parsing ----------------------------------------------------------------------------
# parse_common "$@": consume one option shared by all scripts; sets SHIFT_BY, returns 1 if unknown.
parse_common() {
  case $1 in
    -n | --name) need_value "$@"; TPU_NAME=$2; SHIFT_BY=2 ;;
    -z | --zone) need_value "$@"; TPU_ZONE=$2; SHIFT_BY=2 ;;
    -p | --project) need_value "$@"; TPU_PROJECT=$2; SHIFT_BY=2 ;;
    --dry-run) DRY_RUN=1; SHIFT_BY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

need_value() {  # need_value OPTION [VALUE...]: the option must be followed by a value
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die_usage "$1 needs a value"
}

# ---- validation --------------------------------------------------------------------------------
validate_target() {  # name and zone are required by every script; project is optional
  [[ -n $TPU_NAME ]] || die_usage "missing --name (or \$JAXICL_TPU_NAME)"
  [[ -n $TPU_ZONE ]] || die_usage "missing --zone (or \$JAXICL_TPU_ZONE)"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
    || die_usage "bad TPU name '$TPU_NAME' (lowercase letters, digits, hyphens; starts with a letter)"
  [[ $TPU_ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die_usage "bad zone '$TPU_ZONE' (like us-central2-b)"
  [[ -z $TPU_PROJECT || $TPU_PROJECT =~ ^[a-z][-a-z0-9:.]*[a-z0-9]$ ]] || die_usage "bad project '$TPU_PROJECT'"
}

default_runtime_version() {  # the software version Google lists for JAX on each TPU generation
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

# ---- command construction ----------------------------------------------------------------------
# gcloud_tpu SUBCOMMAND ARGS...: sets CMD to `gcloud compute tpus tpu-vm SUBCOMMAND ARGS... --zone Z
# [--project P]`; callers append the rest (--worker, a long --command last, for readable output).
gcloud_tpu() {
  CMD=(gcloud compute tpus tpu-vm "$@" --zone "$TPU_ZONE")
  [[ -z $TPU_PROJECT ]] || CMD+=(--project "$TPU_PROJECT")
}

shell_quote() {  # print the words as one line a POSIX shell splits back into the same words
  local IFS=' ' out=() w sq="'\\''"
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/$sq}'"); fi
  done
  printf '%s\n' "${out[*]}"
}

join_by() {  # join_by SEP WORDS...: for building one remote shell line from several steps
  local sep=$1 out=${2-} w
  shift
  (($# == 0)) || shift
  for w in "$@"; do out+="$sep$w"; done
  printf '%s' "$out"
}

# ---- execution ---------------------------------------------------------------------------------
run() {  # run CMD...: execute, or under --dry-run print it (stdout, one line) and do nothing
  if ((DRY_RUN)); then shell_quote "$@"; else "$@"; fi
}

run_logged() {  # run_logged LOGFILE CMD...: like run, with stdout+stderr also appended to LOGFILE
  local logfile=$1
  shift
  if ((DRY_RUN)); then
    printf '%s 2>&1 | tee -a %s\n' "$(shell_quote "$@")" "$(shell_quote "$logfile")"
  else
    "$@" 2>&1 | tee -a "$logfile"
  fi
}
