#!/usr/bin/env bash
# Put jaxicl on every worker of a TPU VM: copy a `git archive` tarball (or clone), make a Python
# venv, `pip install -e ".[tpu]"`. Re-running updates the code in place and keeps ~/jaxicl/runs.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tpu/install.sh --name NAME --zone ZONE [--ref REF | --git URL [--ref BRANCH]]
                      [--data DIR] [--python BIN] [--project PROJECT] [--dry-run]

  --ref REF     commit to ship as a tarball (`git archive`; default HEAD: commit your changes first)
  --git URL     clone URL on each worker instead of copying (--ref then names a branch or tag)
  --data DIR    also copy a local datasets directory (<task>/<split>.jsonl) to ~/jaxicl-data on
                each worker; `tpu/run.sh --data` points $JAXICL_DATA_DIR at it
  --python BIN  interpreter for the venv (default python3.11, apt-installed if missing)
  --dry-run     print the commands, run nothing
EOF
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REF=HEAD
GIT_URL=
DATA_DIR=
while (($#)); do
  case $1 in
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --git) need_value "$@"; GIT_URL=$2; shift 2 ;;
    --data) need_value "$@"; DATA_DIR=$2; shift 2 ;;
    --python) need_value "$@"; TPU_PYTHON=$2; shift 2 ;;
    *) parse_common "$@" || die_usage "unknown argument: $1"; shift "$SHIFT_BY" ;;
  esac
done

validate_target
[[ $TPU_PYTHON =~ ^python3(\.[0-9]+)?$ ]] || die_usage "bad --python '$TPU_PYTHON' (like python3.11)"
[[ -z $DATA_DIR || -d $DATA_DIR ]] || die_usage "--data: no such directory: $DATA_DIR"
if [[ -z $GIT_URL ]]; then
  git -C "$REPO_ROOT" rev-parse --quiet --verify "$REF^{tree}" >/dev/null \
    || die_usage "--ref: not a commit in $REPO_ROOT: $REF"
fi

STAGE="$STAGE_ROOT/jaxicl-tpu-$TPU_NAME"
UPLOADS=()
if [[ -z $GIT_URL || -n $DATA_DIR ]]; then
  run mkdir -p "$STAGE"
fi
if [[ -z $GIT_URL ]]; then
  if ((!DRY_RUN)) && [[ $REF == HEAD && -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    note "uncommitted changes are not shipped: the tarball holds HEAD"
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$STAGE/$REMOTE_REPO.tar.gz" "$REF"
  UPLOADS+=("$STAGE/$REMOTE_REPO.tar.gz")
fi
if [[ -n $DATA_DIR ]]; then
  run tar -czf "$STAGE/$REMOTE_DATA.tar.gz" -C "$DATA_DIR" .
  UPLOADS+=("$STAGE/$REMOTE_DATA.tar.gz")
fi
if ((${#UPLOADS[@]})); then
  gcloud_tpu scp "${UPLOADS[@]}" "$TPU_NAME:"
  CMD+=(--worker=all)
  run "${CMD[@]}"
fi

# One shell line per worker; `set -e` stops at the first failing step.
py_venv="\$HOME/$REMOTE_VENV/bin/python"
steps=("set -e")
steps+=("command -v $TPU_PYTHON >/dev/null || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $TPU_PYTHON $TPU_PYTHON-venv; }")
if [[ -z $GIT_URL ]]; then
  steps+=("mkdir -p $REMOTE_REPO && tar -xzf $REMOTE_REPO.tar.gz -C $REMOTE_REPO && rm $REMOTE_REPO.tar.gz")
else
  url=$(shell_quote "$GIT_URL")
  ref=$(shell_quote "$REF")
  branch=""
  [[ $REF == HEAD ]] || branch=" --branch $ref"
  steps+=("if [ -d $REMOTE_REPO/.git ]; then git -C $REMOTE_REPO fetch -q --depth 1 origin $ref && git -C $REMOTE_REPO checkout -q --force FETCH_HEAD; else git clone -q --depth 1$branch $url $REMOTE_REPO; fi")
fi
if [[ -n $DATA_DIR ]]; then
  steps+=("rm -rf $REMOTE_DATA && mkdir -p $REMOTE_DATA && tar -xzf $REMOTE_DATA.tar.gz -C $REMOTE_DATA && rm $REMOTE_DATA.tar.gz")
fi
steps+=("test -x $py_venv || $TPU_PYTHON -m venv \$HOME/$REMOTE_VENV")
steps+=("$py_venv -m pip install -q --upgrade pip")
steps+=("cd $REMOTE_REPO && $py_venv -m pip install -q -e '.[tpu]'")

gcloud_tpu ssh "$TPU_NAME"
CMD+=(--worker=all --command "$(join_by '; ' "${steps[@]}")")
run "${CMD[@]}"
