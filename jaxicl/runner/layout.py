"""The names of a run directory's parts, in one place: the runner writes them and the report
parses them.

    run.json, provenance.json, timing.json
    cells/<task>/<variant>/<method>-seed<S>-perm<P>.json
    controls/<control>/<task>/<variant>/<method>-seed<S>-perm<P>.json
    order/<task>/<variant>/seed<S>-perm<P>.json
    analyses/<analysis>/<task>/<variant>/seed<S>-perm<P>.json
    seconds/<task>/<variant>/<method>-seed<S>-perm<P>.json
    evals/<task>/<variant>/seed<S>-perm<P>/...      checkpoints/<task>/<variant>/<method>-seed<S>-perm<P>/
    revisions.json, revisions/<REV>/                (a run over training checkpoints)
"""

from __future__ import annotations

import re

RUN_FILE = "run.json"
PROVENANCE_FILE = "provenance.json"
TIMING_FILE = "timing.json"
REVISIONS_FILE = "revisions.json"
LOCK_FILE = ".jaxicl.lock"  # the one writer's PID, host, start time and command (runner/lock.py)
SELECTION_FILE = "lr_selection.json"  # `jaxicl tune`'s choice of learning rates
CELLS, CONTROLS, ORDER_DIR, SECONDS, ANALYSES_DIR = "cells", "controls", "order", "seconds", "analyses"
EVALS, CHECKPOINTS, REVISIONS = "evals", "checkpoints", "revisions"
CELL_FILE = re.compile(r"^(?P<method>[^/]+)-seed(?P<seed>-?\d+)-perm(?P<perm>-?\d+)\.json$")


def run_name(seed: int, perm: int) -> str:
    """One (seed, perm) run of a task: its evaluations' directory and its order cell's name."""
    return f"seed{seed}-perm{perm}"


def cell_file(method: str, seed: int, perm: int) -> str:
    """A cell's file name (and, without .json, its checkpoint directory's)."""
    return f"{method}-{run_name(seed, perm)}.json"
