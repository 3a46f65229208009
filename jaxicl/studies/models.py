"""`jaxicl study`: the paper's protocol on several models, one command, and their claims side by side.

Per model, in its own resumable directory OUT/<model>/: the learning rates (`jaxicl tune`, the
coarse-to-unimodal search by default), then one run directory `grid/` at the selected rates holding
the trained model's GD and LCGD cells (Table 2) and the untrained variants' GD cells (Table 1),
task by task, and its report. Cells of earlier runs (`adopt`) whose settings give the same numbers
are copied in instead of recomputed, and so is a complete learning-rate selection of the same tune
config (an `lr_selection*.json` given to `adopt`); a model's published folder given to `adopt`
brings back its selection, the tune's saved rate evaluations, its cells and its study record. A
model that fails to load is named and skipped; a task a model cannot run (its label words, its
context window) is named and skipped for that model. The
last step writes the cross-model summary (`jaxicl.report.models`) to OUT/summary, or to `publish`
with each model's selection and report beside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

from jaxicl.api import load
from jaxicl.data.tasks import PAPER_TASKS, get_task
from jaxicl.errors import CheckpointError, DataError, InputError, ModelNotFoundError
from jaxicl.io.results import write_json_atomic
from jaxicl.report import write_report
from jaxicl.report.cells import load_cells
from jaxicl.report.summary import write_summary
from jaxicl.runner import checks
from jaxicl.runner.execute import run
from jaxicl.runner.layout import CELLS, SELECTION_FILE
from jaxicl.runner.plan import RunConfig
from jaxicl.runner.tune import DAI_GRID, TUNE_CONFIG_FILE, TuneConfig, rates_for, tune

STUDY_FILE = "study.json"  # per model: status, skipped tasks, seconds per stage (summed over invocations)
UNTRAINED = ("trained-embeddings", "no-training")
# Settings that change a cell's numbers, besides its task, run, variant, method and rate.
CELL_SETTINGS = ("k", "n_eval", "max_len", "separator", "probe", "loss_tokens", "layer_reduction", "lcgd_readout",
                 "finetune_dtype", "stepped",
                 "metric_seed", "token_wise")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    models: tuple[str, ...]
    tasks: tuple[str, ...] = PAPER_TASKS
    n_runs: int | None = None  # each task's paper runs (three)
    search: str = "coarse-to-unimodal"
    grid: tuple[float, ...] = DAI_GRID
    k: int = 32
    n_eval: int | None = 200
    batch_size: int | str = 16
    data_dir: str | None = None

    def tune_config(self, model: str) -> TuneConfig:
        return TuneConfig(model=model, tasks=self.tasks, n_runs=self.n_runs, search=self.search, grid=self.grid,
                          k=self.k, batch_size=self.batch_size, data_dir=self.data_dir)  # fmt: skip

    def run_config(self, model: str, rates: dict[str, float]) -> RunConfig:
        return RunConfig(model=model, tasks=self.tasks, n_runs=self.n_runs, methods=("gd", "lcgd"),
                         variants=("trained", *UNTRAINED), k=self.k, n_eval=self.n_eval, batch_size=self.batch_size,
                         data_dir=self.data_dir, lrs=tuple(sorted(rates.items())), lrs_source="selected")  # fmt: skip


def model_dir(out: Path, model: str) -> Path:
    """OUT/<model>, a model's name made a folder name (a path's last part)."""
    return out / Path(model.removeprefix("hf:")).name.replace("@", "-")


def study(config: StudyConfig, out: str | Path, *, adopt: Sequence[str | Path] = (), publish: str | Path | None = None,
          batch_runs: str = "auto", force: bool = False, lms: dict | None = None) -> dict[str, dict]:
    """Every model's tune, grid and report, then the summary; returns each model's study.json."""
    if not config.models:
        raise InputError("--models names no model")
    checks.check_tasks(config.tasks)
    out = Path(out)
    status = {}
    for model in config.models:
        status[model] = _study_model(config, model, model_dir(out, model), adopt, (lms or {}).get(model),
                                     dict(batch_runs=batch_runs, force=force))
    dest = Path(publish or out / "summary")
    models, failed = {}, {}
    for model in config.models:
        cells, _ = load_cells(model_dir(out, model) / "grid")
        if cells:
            models[model] = cells
            if publish is not None:
                publish_model(model_dir(out, model), dest / model_dir(out, model).name)
        else:
            failed[model] = status[model].get("reason", "no cells")
    write_summary(models, failed, status, dest)
    return status


def _study_model(config: StudyConfig, model: str, where: Path, adopt, lm, engine: dict) -> dict:
    """One model's tune, grid (task by task) and report; engine: batch_runs and force."""
    record_path = where / STUDY_FILE
    # this model's own published folder (it holds its study record): its work is this study's, its
    # seconds go on adding up here; what comes from any other source is counted as adopted
    own = [Path(a) for a in adopt if (Path(a) / STUDY_FILE).is_file()
           and json.loads((Path(a) / STUDY_FILE).read_text()).get("model") == model]  # fmt: skip
    if own and not record_path.exists():
        write_json_atomic(record_path, json.loads((own[0] / STUDY_FILE).read_text()))
    record = json.loads(record_path.read_text()) if record_path.exists() else {"seconds": {}, "skipped_tasks": {}}
    adopted = record.setdefault("adopted", {"selection": None, "cells": 0})
    record.update(model=model, status="running")

    def timed(stage: str, work):
        start = time.perf_counter()
        try:
            return work()
        finally:
            record["seconds"][stage] = record["seconds"].get(stage, 0.0) + time.perf_counter() - start
            write_json_atomic(record_path, record)

    try:
        lm = lm or timed("load", lambda: load(model))
    except (ModelNotFoundError, CheckpointError) as e:
        print(f"jaxicl study: {model}: skipped, it does not load ({e})")
        record.update(status="failed", reason=f"does not load: {e}")
        write_json_atomic(record_path, record)
        return record
    folders = [Path(a) for a in adopt if not str(a).endswith(".json")]
    selections = [Path(a) for a in adopt if str(a).endswith(".json")]
    selections += [f / SELECTION_FILE for f in folders if (f / SELECTION_FILE).exists()]
    for source in folders:
        _adopt_tune(source, where / "tune", config.tune_config(model))
    chosen = _adopt_selection(where / "tune", config.tune_config(model), selections)
    if chosen is not None and chosen.parent not in own:
        adopted["selection"] = str(chosen)
    rates = timed("tune", lambda: _selected_rates(config, model, where / "tune", lm, engine, selections))
    grid = config.run_config(model, rates)
    for source in folders:
        copied = _adopt_cells(source, where / "grid", grid)
        adopted["cells"] += 0 if source in own else copied
    for task in [get_task(t).name for t in config.tasks]:
        for stage, only in (("trained", {"variant": ["trained"]}),
                            ("untrained", {"variant": list(UNTRAINED), "method": ["gd"]})):  # fmt: skip
            try:
                timed(stage, lambda o=only: run(grid, where / "grid", only={"task": [task], **o}, lm=lm, **engine))
            except (DataError, InputError, CheckpointError) as e:  # this model cannot run this task (its label
                # words, its context window, its tokenizer): name it, go on
                print(f"jaxicl study: {model}: task {task} skipped ({e})")
                record["skipped_tasks"][task] = str(e)
                break
    timed("report", lambda: write_report(where / "grid"))
    record["status"] = "done"
    write_json_atomic(record_path, record)
    return record


def _selected_rates(config: StudyConfig, model: str, tune_dir: Path, lm, engine: dict,
                    adopt: Sequence[Path] = ()) -> dict[str, float]:
    """The tune's rates: a complete selection of the same config is used as it is (one in the tune
    directory, or an adopted lr_selection file), else `jaxicl tune` runs (resuming its saved rates)."""
    tune_config = config.tune_config(model)
    path = tune_dir / SELECTION_FILE
    _adopt_selection(tune_dir, tune_config, adopt)
    done = json.loads(path.read_text()) if path.exists() else {}
    if not (done.get("complete") and done.get("config") == tune_config.to_json()):
        tune(tune_config, tune_dir, lm=lm, **engine)
    return rates_for(str(path), [get_task(t).name for t in config.tasks])


def _adopt_selection(tune_dir: Path, config: TuneConfig, sources: Sequence[Path]) -> Path | None:
    """When the tune directory has no selection yet, copy in the first complete one of this config
    among `sources`; returns which (None: none copied)."""
    path = tune_dir / SELECTION_FILE
    for source in sources:
        theirs = json.loads(source.read_text())
        if not path.exists() and theirs.get("complete") and theirs.get("config") == config.to_json():
            write_json_atomic(path, theirs)
            return source
    return None


def _adopt_tune(source: Path, tune_dir: Path, config: TuneConfig) -> int:
    """Copy into `tune_dir` the saved rate evaluations of an earlier tune of this config (a tune
    directory, or a model's published directory), so that this tune resumes where that one stopped;
    returns how many files."""
    theirs = source / "tune" / TUNE_CONFIG_FILE
    if not theirs.exists() or json.loads(theirs.read_text()) != config.to_json():
        return 0
    copied = 0
    for path in sorted((source / "tune").rglob("*.json")):
        target = tune_dir / "tune" / path.relative_to(source / "tune")
        if not target.exists():
            write_json_atomic(target, json.loads(path.read_text()))
            copied += 1
    return copied


def _adopt_cells(source: Path, run_dir: Path, config: RunConfig) -> int:
    """Copy into `run_dir` the cells of an earlier run whose model, rate and settings are this
    config's (so their numbers are what this run would compute); returns how many."""
    rates = dict(config.lrs or ())
    copied = 0
    for path in sorted((source / CELLS).rglob("*.json")):
        target = run_dir / path.relative_to(source)
        cell = json.loads(path.read_text())
        theirs = cell.get("config", {})
        same = (cell.get("model") == config.model and cell.get("lr") == rates.get(cell.get("task"))
                and all(theirs.get(k, getattr(RunConfig(), k)) == getattr(config, k) for k in CELL_SETTINGS))  # fmt: skip
        if same and not target.exists():
            write_json_atomic(target, cell)
            copied += 1
    return copied


def publish_model(where: Path, dest: Path) -> None:
    """A model's selection (with the tune's rate evaluations), cells, study record and report, copied
    beside the summary; `--adopt` of that folder later resumes the model from them."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, source in ((SELECTION_FILE, where / "tune" / SELECTION_FILE), (STUDY_FILE, where / STUDY_FILE)):
        if source.exists():
            shutil.copyfile(source, dest / name)
    for folder, source in (("tune", where / "tune" / "tune"), (CELLS, where / "grid" / CELLS)):
        for path in sorted(source.rglob("*.json")):
            (dest / folder / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / folder / path.relative_to(source))
    report = where / "grid" / "report"
    if report.is_dir():
        shutil.copytree(report, dest / "report", dirs_exist_ok=True)


