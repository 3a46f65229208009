"""The run directory: its one layout, and every read and atomic write of it.

    RUN_DIR/run.json                                   the full config (a rerun must match it)
    RUN_DIR/provenance.json                            package versions and machine
    RUN_DIR/evals/<task>/<variant>/seed<S>-perm<P>/{zs,icl}.npz, <method>-ft.npz
                                                       (trained: zs.npz one level up, shared by seeds)
    RUN_DIR/checkpoints/<task>/<variant>/<method>-seed<S>-perm<P>/
    RUN_DIR/cells/<task>/<variant>/<method>-seed<S>-perm<P>.json   (deterministic: no wall times)
    RUN_DIR/controls/<control>/...  and  RUN_DIR/order/...         control and order cells
    RUN_DIR/seconds/<task>/<variant>/<method>-seed<S>-perm<P>.json time per stage of that cell
    RUN_DIR/timing.json   model load, elapsed time, XLA compilations, the batched engine's share,
                          and each stage's seconds split into device, compile and host

Every file is written atomically (temp file + rename), so an interrupt loses at most the cell in
progress and never leaves a partial file. Several processes: process 0 alone reads and writes it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxicl.engine.scoring import EvalResult
from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.io.results import machine, versions, write_config, write_json_atomic
from jaxicl.runner.layout import CHECKPOINTS, PROVENANCE_FILE, RUN_FILE, cell_file, run_name
from jaxicl.runner.plan import CELL_KEYS, Cell, RunConfig, cells_of
from jaxicl.runtime import distributed


def open_run_dir(run_dir: Path, config: RunConfig, force: bool = False) -> None:
    """Create the run directory, or check that an existing one was made by the same config."""
    write_config(run_dir / RUN_FILE, config.to_json(), force, defaults=RunConfig().to_json())
    write_json_atomic(run_dir / PROVENANCE_FILE, {"versions": versions(), "machine": machine()})


def read_cell(path: Path, keys: Sequence[str] = CELL_KEYS) -> tuple[dict | None, str | None]:
    """(cell, None) for a complete cell file (holding `keys`), (None, why) for a corrupt one, (None,
    None) if absent."""
    if not path.exists():
        return None, None
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path}: not valid JSON ({e})"
    missing = [k for k in keys if k not in cell] if isinstance(cell, dict) else list(keys)
    if missing:
        return None, f"{path}: missing keys {missing}"
    return cell, None


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def eval_arrays(result: EvalResult) -> dict[str, np.ndarray]:
    out = {f"rec_{k}": v for k, v in result.records.items()}
    out.update(scores=result.scores, predictions=result.predictions, map_lengths=result.map_lengths,
               prefix_len=np.asarray(result.prefix_len))
    return out


def load_eval(path: Path, records_needed: Sequence[str] = ()) -> EvalResult | None:
    """The evaluation cached at `path`; None if absent, unreadable or lacking a needed record (e.g.
    a run resumed with --token-wise over evaluations made without it)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            if any(f"rec_{name}" not in z.files for name in records_needed):
                return None
            records = {k[4:]: z[k] for k in z.files if k.startswith("rec_")}
            return EvalResult(scores=z["scores"], predictions=z["predictions"], records=records,
                              map_lengths=z["map_lengths"], prefix_len=int(z["prefix_len"]))
    except Exception:  # unreadable cache: recompute rather than trust it
        return None


def cached_eval(path: Path, compute, records_needed: Sequence[str] = ()) -> tuple[EvalResult | None, bool]:
    """(result, reused): the evaluation stored at `path` (if it has `records_needed`), or compute
    and store it.

    Several processes: process 0's file decides for all, and only process 0 stores; where it reuses
    the file, the others get None (only process 0 uses the results)."""
    found = load_eval(path, records_needed) if distributed.is_writer() else None
    if distributed.broadcast_from_host0(found is not None):
        return found, True
    result = compute()
    if distributed.is_writer():
        save_npz_atomic(path, eval_arrays(result))
    return result, False


def checkpoint_dir(run_dir: Path, cell: Cell, finetuning: str = "") -> Path:
    """finetuning: "" for the cell's own demonstrations, else a control's name for its finetuning."""
    name = cell.method + (f"-{finetuning}" if finetuning else "")
    return run_dir / CHECKPOINTS / cell.task / cell.variant / cell_file(name, cell.seed, cell.perm).removesuffix(".json")


def finetune_base(config: RunConfig, cell: Cell) -> str:
    """Names the starting params of a cell's finetuning (part of its checkpoint key)."""
    return f"{config.model}/{cell.variant}/{cell.seed}"


def group_relpath(cell: Cell) -> Path:
    """evals/<this>: where a group's evaluations are cached."""
    return Path(cell.task, cell.variant, run_name(cell.seed, cell.perm))


def open_and_scan(run_dir: Path, config: RunConfig, force: bool) -> tuple[list[Cell], int, int]:
    """(unfinished cells, finished cells, corrupt cell files) after opening the run directory."""
    open_run_dir(run_dir, config, force)
    todo, skipped, corrupt = [], 0, []
    for cell in cells_of(config):
        found, problem = read_cell(run_dir / cell.relpath(), cell.required_keys)
        if problem:
            corrupt.append(problem)
        if found is None or not set(config.cell_keys(cell)) <= set(found):  # e.g. no stability record yet
            todo.append(cell)
        else:
            skipped += 1
    for problem in corrupt:
        print(f"jaxicl: corrupt cell file, recomputing: {problem}")
    return todo, skipped, len(corrupt)


def all_written(run_dir: Path, config: RunConfig, cells: Sequence[Cell]) -> bool:
    """Whether every cell's file is complete under `config` (e.g. written meanwhile by another machine)."""
    return all(read_cell(run_dir / cell.relpath(), config.cell_keys(cell))[0] is not None for cell in cells)
