"""Experiments on disk: the paper's protocol as a resumable run directory of one results file per
cell, learning-rate selection, runs across training checkpoints, and `jaxicl eval`.

The stages, one file each: `plan` (the config, the grid and its slices), `rundir` (the directory's
layout and atomic reads and writes), `group` (one task/seed group of cells), `batched` (several
runs at once), `execute` (`run`: the grid, resumable). `checkpoints`, `tune` and `evaluation` are
callers of those. The names below are the ones `jaxicl.experiment` used to hold.
"""

from jaxicl.runner.batched import run_together
from jaxicl.runner.execute import RunInterrupted, run
from jaxicl.runner.group import run_group
from jaxicl.runner.plan import (
    BATCH_RUNS,
    CELL_KEYS,
    METHODS,
    ORDER,
    ORDER_KEYS,
    PAPER_TASKS,
    SELECT_KEYS,
    TOKEN_RECORD,
    Cell,
    RunConfig,
    batch_runs_enabled,
    cells_of,
    finetune_options,
    parse_only,
    run_prompts,
    select_cells,
)  # fmt: skip
from jaxicl.runner.rundir import cached_eval, load_eval, open_run_dir, read_cell

__all__ = [
    "BATCH_RUNS", "CELL_KEYS", "METHODS", "ORDER", "ORDER_KEYS", "PAPER_TASKS", "SELECT_KEYS", "TOKEN_RECORD",
    "Cell", "RunConfig", "RunInterrupted", "batch_runs_enabled", "cached_eval", "cells_of", "finetune_options",
    "load_eval", "open_run_dir", "parse_only", "read_cell", "run", "run_group", "run_prompts", "run_together",
    "select_cells",
]  # fmt: skip
