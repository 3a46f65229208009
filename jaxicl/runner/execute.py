"""`run`: every unfinished cell of a config's grid, group by group, resumable.

Rerunning the same command skips finished cells; Ctrl-C or SIGTERM loses at most the cells in
progress. Several processes (e.g. one per host of a TPU pod slice, all running the same command):
process 0 opens and scans the run directory and broadcasts what it found, so every process runs
the same stages and collectives; one process behaves exactly as several would on one host.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Sequence

import jax
from tqdm import tqdm

from jaxicl.api import load
from jaxicl.data.tasks import get_task
from jaxicl.errors import InputError
from jaxicl.runner.batched import run_together
from jaxicl.runner.group import run_group
from jaxicl.runner.layout import TIMING_FILE
from jaxicl.runner.lock import holding
from jaxicl.runner.plan import (
    Cell,
    RunConfig,
    batch_runs_enabled,
    cells_of,
    check_config,
    groups,
    run_prompts,
    select_cells,
    token_wise_bytes,
)
from jaxicl.runner.rundir import all_written, open_and_scan
from jaxicl.runtime import compile_stats, distributed, memory
from jaxicl.runtime.stage_clock import StageClock


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped `run`: what it finished and which cells were in progress (lost;
    none of their files was written, and rerunning the same command computes them)."""

    def __init__(self, done: int, lost: Sequence[str]):
        super().__init__(f"{done} cells finished, {len(lost)} in progress lost")
        self.done, self.lost = done, list(lost)


def run(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    force: bool = False,
    only: dict[str, Sequence[str]] | None = None,
    lm=None,
    quiet: bool = False,
    profile_dir: str | os.PathLike | None = None,
    batch_runs: str = "auto",
) -> dict:
    """Run every unfinished cell of the grid, or of its slice `only` (e.g. {"method": ["gd"]}: the
    rest stays for a later run of the same config); returns counts of cells done, skipped (finished
    before), recomputed (their file was corrupt) and deferred (unfinished, outside `only`).

    Several processes: every one calls this with the same arguments; process 0 opens and scans
    `run_dir` and tells the others which cells to run (see the module docstring).
    Ctrl-C or SIGTERM raises RunInterrupted (a KeyboardInterrupt) naming the cells it lost.
    profile_dir: write a JAX profiler trace (TensorBoard / Perfetto) of the first group run there.
    batch_runs: "on" runs each (task, variant)'s finetuning runs, and then the zero-shot
    evaluations of the finetuned models, together (`run_together`) before its groups run; "auto"
    does so on an accelerator only. Cells equal the one-by-one run's up to
    float rounding (tests/test_experiment.py)."""
    run_dir = Path(run_dir)
    if config.checkpoints:
        raise InputError("a config with checkpoints runs one directory per revision: call "
                         "jaxicl.runner.checkpoints.run_checkpoints (`jaxicl run --checkpoints` does)")
    check_config(config, only, window=None if lm is None else lm.config.max_positions)
    with holding(run_dir):
        return _run_grid(config, run_dir, force, only, lm, quiet, profile_dir, batch_runs)


def _run_grid(config: RunConfig, run_dir: Path, force: bool, only, lm, quiet: bool, profile_dir, batch_runs: str) -> dict:
    """`run` once its arguments are checked and its directory is locked."""
    todo, skipped, recomputed, deferred = _cells_to_run(run_dir, config, force, only)
    tasks = {task.name: task for task in map(get_task, config.tasks)}
    together = batch_runs_enabled(batch_runs)
    if not todo:
        return {"done": 0, "skipped": skipped, "recomputed": recomputed, "deferred": deferred}

    t0 = time.perf_counter()
    done, group, load_s, batched = 0, [], None, {"runs": 0, "evaluations": 0, "seconds": 0.0}
    clock = StageClock()  # every stage of this invocation: wall, device, compile and host seconds

    def timing(finished: bool) -> None:  # after the load and every group: an interrupted run keeps it
        distributed.write_once(run_dir / TIMING_FILE, {
            "load_s": load_s, "total_s": time.perf_counter() - t0, "cells_done": done, "finished": finished,
            "compile": compiled.as_dict(), "batched": batched, "stages": clock.as_dict()})

    try:
        with compile_stats.counting() as compiled:
            lm = lm or load(config.model)
            load_s = time.perf_counter() - t0
            if config.token_wise:
                distributed.on_host0(_check_token_wise_memory, lm, config, todo, tasks)
            timing(False)
            quiet = quiet or not distributed.is_writer()
            overall = tqdm(total=len(todo), desc="cells", unit="cell", disable=quiet, position=0)
            ran_together: set[tuple[str, str]] = set()
            for group in groups(todo):
                if distributed.on_host0(all_written, run_dir, config, group):  # e.g. by another machine meanwhile
                    skipped += len(group)
                    overall.update(len(group))
                    continue
                task_variant = (group[0].task, group[0].variant)
                if together and task_variant not in ran_together:
                    ran_together.add(task_variant)
                    _run_together(lm, config, run_dir, tasks[group[0].task], group[0].variant, todo, clock, batched)
                profile = profile_dir if done == 0 else None
                try:
                    _run_group_with_bar(lm, config, run_dir, tasks[group[0].task], group, clock, quiet, profile)
                except KeyboardInterrupt:
                    overall.close()  # both bars off the screen before the interrupt is reported
                    raise
                overall.update(len(group))
                done += len(group)
                timing(False)
            overall.close()
    except KeyboardInterrupt as e:
        lost = [cell.name() for cell in group if not (run_dir / cell.relpath()).exists()]
        raise RunInterrupted(done, lost) from e
    timing(True)
    return {"done": done, "skipped": skipped, "recomputed": recomputed, "deferred": deferred}


def _check_token_wise_memory(lm, config: RunConfig, todo: Sequence[Cell], tasks: dict) -> None:
    """Refuse token-wise records that would not fit in host memory; log the estimate otherwise."""
    available = memory.available_bytes()
    for name in dict.fromkeys(c.task for c in todo):
        first = next(c for c in todo if c.task == name)
        need, formula = token_wise_bytes(config, lm.config, run_prompts(lm, config, tasks[name], first.seed, first.perm))
        if available is not None and need > available:
            raise InputError(f"--token-wise on {name}: its records need about {memory.gib(need)} of host memory "
                             f"({formula}), more than the {memory.gib(available)} available; lower --n-eval")
        print(f"jaxicl: token-wise records of {name}: about {memory.gib(need)} of host memory ({formula}; "
              f"{'unknown' if available is None else memory.gib(available)} available)")


def _cells_to_run(run_dir: Path, config: RunConfig, force: bool, only) -> tuple[list[Cell], int, int, int]:
    """(cells to run now, finished, recomputed, deferred): the directory opened and scanned by
    process 0 (and told to the others), then the `only` slice taken."""
    todo, skipped, recomputed = distributed.on_host0(open_and_scan, run_dir, config, force)
    if not only:
        return todo, skipped, recomputed, 0
    selected = select_cells(todo, only, grid=cells_of(config))
    return selected, skipped, recomputed, len(todo) - len(selected)


def _run_together(lm, config: RunConfig, run_dir: Path, task, variant: str, todo: Sequence[Cell],
                  clock: StageClock, batched: dict) -> None:
    """The batched engine for one (task, variant), its counts and seconds added to `batched`."""
    start = time.perf_counter()
    with clock("together"):
        got = run_together(lm, config, run_dir, task, variant, todo)
    batched["runs"] += got["runs"]
    batched["evaluations"] += got["evaluations"]
    batched["seconds"] += time.perf_counter() - start


def _run_group_with_bar(lm, config: RunConfig, run_dir: Path, task, group: Sequence[Cell], clock: StageClock,
                        quiet: bool, profile_dir: str | os.PathLike | None) -> None:
    """One group under its own progress bar, traced by the JAX profiler when `profile_dir` is set."""
    desc = f"{group[0].task}/{group[0].variant} seed {group[0].seed}"
    steps = 4 + (3 if config.stability_check else 2) * len(group)  # prompts, zero-shot, ICL; each cell's stages
    with tqdm(total=steps, desc=desc, leave=False, disable=quiet, position=1) as bar:

        def progress(msg):
            bar.set_postfix_str(msg)
            bar.update(1)

        with jax.profiler.trace(str(profile_dir)) if profile_dir is not None else contextlib.nullcontext():
            run_group(lm, config, run_dir, task, group, progress=progress, clock=clock)
