"""Learning-rate selection by the paper's own protocol (docs/method.md#runs-and-learning-rates), for any model.

Dai et al. chose each task's rate for one 1.3B model by grid search over {1..9} × {1e-1..1e-4},
selecting by the finetuned model's zero-shot accuracy. `tune` runs that search for the model at
hand: for each rate, finetune (GD by default) on each run's demonstrations, score the finetuned
model zero-shot on a *selection set*, and pick the rate with the best mean accuracy over the runs
(ties: the smaller rate).

The selection set is drawn from the train split with a fixed seed and is disjoint from every
demonstration set of the grid and from the eval set (checked on dataset indices), so selecting a
rate does not look at the numbers it will be judged on. `select_on="eval"` reproduces Dai's own
choice (the eval set) and the output says so.

Search: "full" (every rate of the grid) or "coarse-to-fine" (the smallest rate of each decade
first, then every rate of the best decade), which on Dai's grid is 4 + 8 = 12 rates, not 36.

Resumable: each (task, rate) result is its own file, written atomically, under
RUN_DIR/tune/<task>/<method>/; a rerun skips them. RUN_DIR/lr_selection.json holds the choice
(deterministic: no wall times); RUN_DIR/tune/timing.json the seconds per rate and per invocation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import jax
import numpy as np

from jaxicl.api import load
from jaxicl.data.prompts import encode_queries
from jaxicl.data.tasks import PAPER_TASKS, hf_shuffle_indices, load_split, select_eval
from jaxicl.engine import finetune as F
from jaxicl.engine.scoring import EvalOptions, evaluate, evaluate_many
from jaxicl.errors import DataError, DivergenceError, InputError, JaxiclError, TrainingError
from jaxicl.io.registry import DEFAULT_MODEL
from jaxicl.io.results import write_config, write_json_atomic
from jaxicl.runner import checks
from jaxicl.runner.checks import check_rate
from jaxicl.runner.layout import SELECTION_FILE
from jaxicl.runner.lock import holding
from jaxicl.runner.plan import LOSS_TOKENS, METHODS, RunConfig, batch_runs_enabled, finetune_options, run_prompts

DAI_GRID = tuple(float(f"{m}e-{e}") for e in (1, 2, 3, 4) for m in range(1, 10))
SELECTION_SEED = 20231113  # the train-split shuffle of the selection set (the paper's arXiv date)
SEARCHES = ("full", "coarse-to-fine", "coarse-to-unimodal")
TUNE_CONFIG_FILE = "tune.json"  # in RUN_DIR/tune/: the config that made the saved rate evaluations


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Everything that determines a tune's numbers; a tune directory refuses a different one."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = PAPER_TASKS
    n_runs: int | None = None  # the first n of each task's paper runs (None: all three)
    method: str = "gd"
    grid: tuple[float, ...] = DAI_GRID
    search: Literal["full", "coarse-to-fine", "coarse-to-unimodal"] = "full"
    select_on: Literal["selection", "eval"] = "selection"
    selection_size: int = 200
    k: int = 32
    max_len: int | None = None
    separator: str = "\n"
    loss_tokens: str = "all"
    batch_size: int | str = 16
    data_dir: str | None = None

    def __post_init__(self):
        check_grid(self.grid)
        object.__setattr__(self, "grid", tuple(sorted(float(r) for r in self.grid)))
        if self.search not in SEARCHES:
            raise InputError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.select_on not in ("selection", "eval"):
            raise InputError(f"select_on must be 'selection' or 'eval', got {self.select_on!r}")
        if self.method not in METHODS:
            raise InputError(f"method must be 'gd' or 'lcgd', got {self.method!r}")
        if self.selection_size < 1:
            raise InputError(f"selection_size must be >= 1, got {self.selection_size}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def check_grid(grid: Sequence[float]) -> None:
    """Refuse a learning-rate grid with a non-positive or non-finite rate, or none at all."""
    if not len(grid):
        raise InputError("the learning-rate grid is empty")
    for rate in grid:
        check_rate(rate, "in the grid")
    if len(set(grid)) != len(grid):
        raise InputError("the learning-rate grid repeats a rate")


# --- the selection rule ---------------------------------------------------------------------------


def choose(mean_accuracy: dict[float, float | None], zero_shot: float) -> dict[str, Any]:
    """Dai's rule: the rate with the best mean selection accuracy, ties broken toward the smaller
    rate; a diverged rate (accuracy None) is excluded. Says plainly when even the best rate does not
    beat the zero-shot accuracy."""
    if not mean_accuracy:
        raise JaxiclError("no learning rate was evaluated")
    excluded = sorted(r for r, acc in mean_accuracy.items() if acc is None)
    mean_accuracy = {r: acc for r, acc in mean_accuracy.items() if acc is not None}
    if not mean_accuracy:
        tried = ", ".join(f"{r:g}" for r in excluded)
        raise TrainingError(f"finetuning diverged at every learning rate tried ({tried})")
    best = max(mean_accuracy.values())
    rate = min(r for r, acc in mean_accuracy.items() if acc == best)
    tied = sorted(r for r, acc in mean_accuracy.items() if acc == best)
    helps = best > zero_shot
    reason = f"best mean selection accuracy {best:.4f}"
    if len(tied) > 1:
        reason += f", tied with {', '.join(f'{r:g}' for r in tied if r != rate)} (the smaller rate wins)"
    if not helps:
        reason += f"; finetuning does not help here: zero-shot accuracy on the same set is {zero_shot:.4f}"
    if excluded:
        reason += f"; diverged, excluded: {', '.join(f'{r:g}' for r in excluded)}"
    return {"lr": rate, "accuracy": best, "zero_shot": zero_shot, "finetuning_helps": helps, "reason": reason}


def decade(rate: float) -> int:
    return math.floor(math.log10(rate) + 1e-9)


def coarse_rates(grid: Sequence[float]) -> list[float]:
    """The smallest rate of each decade present in the grid (Dai's grid: 1e-1, 1e-2, 1e-3, 1e-4)."""
    firsts: dict[int, float] = {}
    for rate in sorted(grid):
        firsts.setdefault(decade(rate), rate)
    return sorted(firsts.values())


def fine_rates(grid: Sequence[float], best: float) -> list[float]:
    """Every rate of the grid in `best`'s decade."""
    return sorted(r for r in grid if decade(r) == decade(best))


def unimodal_search(n: int, score: Callable[[Sequence[int]], Sequence[float | None]]) -> None:
    """Ternary search for the best of n candidates whose score is unimodal in their order (accuracy
    against the multiplier within a decade); `score(indices)` evaluates those candidates (together:
    one batch) and returns their scores, None for a diverged one (worst). About 5 of 9 candidates
    are evaluated, where coarse-to-fine evaluates all; the caller then chooses among those."""
    lo, hi = 0, n - 1
    while hi - lo > 2:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        s1, s2 = (-math.inf if v is None else v for v in score([m1, m2]))
        if s1 < s2:
            lo = m1 + 1
        else:  # ties keep the smaller side (Dai's tie-break toward the smaller rate)
            hi = m2 - 1
    score(list(range(lo, hi + 1)))


# --- the selection set ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SelectionSet:
    split: str
    indices: tuple[int, ...]
    query_ids: tuple[tuple[int, ...], ...]
    gold: tuple[int, ...]
    labelled_as: str  # "selection set (train split, disjoint ...)" or "eval set (Dai's choice)"


def selection_indices(n_rows: int, excluded: set[int], size: int, seed: int = SELECTION_SEED) -> list[int]:
    """`size` train-split indices in a seeded shuffle, skipping `excluded` (the demonstrations, and
    the eval set where it shares the split); an error giving the counts when too few are left."""
    left = [int(i) for i in hf_shuffle_indices(n_rows, seed) if int(i) not in excluded]
    if len(left) < size:
        raise DataError(
            f"the selection set needs {size} examples disjoint from the demonstrations and the eval set, "
            f"but the train split has {n_rows} rows of which {len(excluded)} are excluded, leaving {len(left)}; "
            "pass a smaller selection size"
        )
    return left[:size]


def build_selection(task, tokenizer, prompt_sets: Sequence, config: TuneConfig) -> SelectionSet:
    """The task's selection set: disjoint, on dataset indices, from every demonstration set of the
    grid (`prompt_sets`: every run's PromptSet, whose `selected_indices` are all k drawn) and from
    the eval set. CB (250 train rows) gets as many as its split allows when the default is too big."""
    first = prompt_sets[0]
    if config.select_on == "eval":
        return SelectionSet(task.eval_split, first.eval_indices, tuple(map(tuple, first.query_ids)),
                            tuple(first.gold_labels), "eval set (Dai et al.'s choice: not disjoint from it)")  # fmt: skip
    rows = load_split(task, task.demo_split, config.data_dir)
    excluded = {i for p in prompt_sets for i in p.selected_indices}
    if task.eval_split == task.demo_split:
        eval_rows = len(rows)
        excluded |= set(select_eval(eval_rows, None, task.eval_seed, task.eval_pool))
    size = config.selection_size
    if size == TuneConfig.selection_size and len(rows) - len(excluded) < size:
        size = len(rows) - len(excluded)  # e.g. CB: as many as the split allows
    indices = selection_indices(len(rows), excluded, size)
    assert not set(indices) & excluded  # disjoint on dataset indices, whatever the code above does
    for p in prompt_sets:
        assert not set(indices) & set(p.selected_indices)
        if task.eval_split == task.demo_split:
            assert not set(indices) & set(p.eval_indices)
    queries = encode_queries(task, tokenizer, rows, indices)
    gold = tuple(int(rows[i][task.label_field]) for i in indices)
    where = f"selection set ({task.demo_split} split, disjoint from every demonstration set and the eval set)"
    return SelectionSet(task.demo_split, tuple(indices), queries, gold, where)


# --- one task ---------------------------------------------------------------------------------------


def _rate_path(run_dir: Path, task: str, method: str, rate: float) -> Path:
    return run_dir / "tune" / task / method / f"lr-{rate:.6g}.json"


def evaluate_rates(lm, config: TuneConfig, run_dir: Path, task, prompt_sets, selection: SelectionSet,
                   rates: Sequence[float], together: bool) -> dict[float, dict]:
    """Each rate's result (from its file, or computed and saved): per-run selection accuracy, the
    final demonstration loss, and their means. together: all (rate, run) pairs finetune in one
    `finetune_many` and score in one `evaluate_many` (the batched engine); else one by one."""
    out, todo = {}, []
    for rate in rates:
        path = _rate_path(run_dir, task.name, config.method, rate)
        if path.exists():
            out[rate] = json.loads(path.read_text())
        else:
            todo.append(rate)
    if not todo:
        return out
    # all_grad_norms off: a selection needs no per-block gradient norms, and skipping the weight
    # gradients of every block but the stepped keys and values makes each step cheaper
    base = dataclasses.replace(finetune_options(_run_config(config, task), task, config.method), lr=todo[0],
                               all_grad_norms=False)  # fmt: skip
    if together:  # every (rate, run) pair at once: an interrupt loses this batch
        batches = [todo]
    else:  # rate by rate: an interrupt loses at most the rate in progress
        batches = [[rate] for rate in todo]
    for rates_now in batches:
        out |= _evaluate_batch(lm, config, run_dir, task, prompt_sets, selection, rates_now, base, together)
    return out


def _evaluate_batch(lm, config, run_dir, task, prompt_sets, selection, rates, base, together) -> dict[float, dict]:
    options = EvalOptions(batch_size=config.batch_size, records=())
    prefix, cands = prompt_sets[0].zs_prefix_ids, prompt_sets[0].candidate_ids
    pairs = [(rate, p) for rate in rates for p in prompt_sets]
    start = time.perf_counter()
    if together:  # a diverged run is marked, not raised: the sweep goes on without it
        results = F.finetune_many(
            lm.params, lm.config, [p.ft_sequences for _, p in pairs], base,
            label_starts_sets=[p.ft_label_starts for _, p in pairs], lrs=[r for r, _ in pairs],
            scan=_accelerator(), on_divergence="mark",
        )  # fmt: skip
        finite = [i for i, r in enumerate(results) if r.diverged is None]
        diverged = {i: r.diverged for i, r in enumerate(results) if r.diverged is not None}
        scored = dict(zip(finite, evaluate_many([results[i].params for i in finite], lm.config, prefix,
                                                selection.query_ids, cands, options) if finite else []))  # fmt: skip
    else:
        results, scored, diverged = {}, {}, {}
        for i, (rate, p) in enumerate(pairs):
            try:
                results[i] = F.finetune(lm.params, lm.config, p.ft_sequences, dataclasses.replace(base, lr=rate),
                                        label_starts=p.ft_label_starts)  # fmt: skip
            except DivergenceError as e:
                diverged[i] = str(e)
                continue
            scored[i] = evaluate(results[i].params, lm.config, prefix, selection.query_ids, cands, options)
    _add_seconds(run_dir, task.name, rates, time.perf_counter() - start)
    out = {}
    for rate in rates:
        mine = [i for i, (r, _) in enumerate(pairs) if r == rate]
        record = {"task": task.name, "method": config.method, "lr": rate,
                  "runs": [[pairs[i][1].seed, pairs[i][1].perm] for i in mine]}  # fmt: skip
        if any(i in diverged for i in mine):  # excluded from the choice, reported as such
            record |= {
                "diverged": [f"run (seed {pairs[i][1].seed}, perm {pairs[i][1].perm}): {diverged[i]}"
                             for i in mine if i in diverged],  # fmt: skip
                "accuracy": [scored[i].accuracy(selection.gold) if i in scored else None for i in mine],
                "final_loss": [None if i in diverged else float(results[i].losses[-1]) for i in mine],
                "mean_accuracy": None, "mean_final_loss": None,
            }  # fmt: skip
        else:
            accuracy = [scored[i].accuracy(selection.gold) for i in mine]
            final_loss = [float(results[i].losses[-1]) for i in mine]
            record |= {"accuracy": accuracy, "mean_accuracy": float(np.mean(accuracy)),
                       "final_loss": final_loss, "mean_final_loss": float(np.mean(final_loss))}  # fmt: skip
        write_json_atomic(_rate_path(run_dir, task.name, config.method, rate), record)
        out[rate] = record
    return out


def _add_seconds(run_dir: Path, task: str, rates: Sequence[float], seconds: float) -> None:
    """Wall times go to RUN_DIR/tune/timing.json, not into the (deterministic) selection files."""
    path = run_dir / "tune" / "timing.json"
    timing = json.loads(path.read_text()) if path.exists() else {}
    timing.setdefault(task, {}).update({f"{r:g}": seconds / len(rates) for r in rates})
    write_json_atomic(path, timing)


def _accelerator() -> bool:
    return jax.default_backend() != "cpu"


def _run_config(config: TuneConfig, task):
    """The runner's settings for this task's prompts and finetuning options (its rate is replaced)."""
    return RunConfig(model=config.model, tasks=config.tasks, k=config.k, max_len=config.max_len,
                     separator=config.separator, loss_tokens=config.loss_tokens, data_dir=config.data_dir,
                     lrs=((task.name, config.grid[0]),), lrs_source="the tune's grid")  # fmt: skip


def tune_task(lm, config: TuneConfig, run_dir: Path, task, together: bool) -> dict:
    """The selection of one task: rates evaluated (all, or coarse then fine), zero-shot accuracy on
    the selection set, the chosen rate and why."""
    run_config = _run_config(config, task)
    runs = task.runs[: config.n_runs]
    prompt_sets = [run_prompts(lm, run_config, task, seed, perm) for seed, perm in runs]
    selection = build_selection(task, lm.tokenizer, prompt_sets, config)
    zs_path = run_dir / "tune" / task.name / "zero_shot.json"
    saved = json.loads(zs_path.read_text()) if zs_path.exists() else None
    if saved is not None and saved["indices"] == list(selection.indices):
        zero_shot = saved["accuracy"]
    else:
        p = prompt_sets[0]
        zs = evaluate(lm.params, lm.config, p.zs_prefix_ids, selection.query_ids, p.candidate_ids,
                      EvalOptions(batch_size=config.batch_size, records=()))  # fmt: skip
        zero_shot = zs.accuracy(selection.gold)
        write_json_atomic(zs_path, {"indices": list(selection.indices), "accuracy": zero_shot})
    def evaluate_some(rates: Sequence[float]) -> dict[float, dict]:
        return evaluate_rates(lm, config, run_dir, task, prompt_sets, selection, rates, together)

    if config.search == "full":
        results = evaluate_some(list(config.grid))
    else:
        coarse = coarse_rates(config.grid)
        results = evaluate_some(coarse)
        best = choose({r: results[r]["mean_accuracy"] for r in coarse}, zero_shot)["lr"]
        fine = fine_rates(config.grid, best)
        if config.search == "coarse-to-fine":
            results |= evaluate_some([r for r in fine if r not in results])
        else:

            def score(indices: Sequence[int]) -> list[float | None]:
                results.update(evaluate_some([fine[i] for i in indices if fine[i] not in results]))
                return [results[fine[i]]["mean_accuracy"] for i in indices]

            unimodal_search(len(fine), score)
    chosen = choose({r: v["mean_accuracy"] for r, v in results.items()}, zero_shot)
    return {
        "task": task.name,
        "method": config.method,
        "paper_lr": task.lr,
        "search": config.search,
        "rates_evaluated": len(results),
        "selected_on": selection.labelled_as,
        "selection_split": selection.split,
        "selection_indices": list(selection.indices),
        "runs": [list(r) for r in runs],
        "zero_shot_accuracy": zero_shot,
        "rates": {f"{r:g}": results[r] for r in sorted(results)},
        "chosen": chosen,
    }


def open_tune_dir(run_dir: Path, config: TuneConfig, force: bool = False) -> None:
    """Create the tune directory, or check that an existing one was made by the same config."""
    write_config(run_dir / "tune" / TUNE_CONFIG_FILE, config.to_json(), force)


def tune(config: TuneConfig, run_dir: str | os.PathLike, *, lm=None, batch_runs: str = "auto",
         force: bool = False) -> dict:
    """Select a learning rate per task; writes RUN_DIR/lr_selection.json after each task ("complete":
    false until the last) and returns its content."""
    run_dir = Path(run_dir)
    tasks = check_tune(config, window=None if lm is None else lm.config.max_positions)
    together = batch_runs_enabled(batch_runs)
    with holding(run_dir):
        return _tune_tasks(config, run_dir, tasks, lm, together, force)


def check_tune(config: TuneConfig, window: int | None = None) -> list:
    """Every setting of a tune that its config does not check itself, before a model loads or a
    file is written; returns the tasks. window: that of a model loaded already."""
    tasks = checks.check_tasks(config.tasks)
    checks.check_count("--n-runs", config.n_runs)
    checks.check_count("--k", config.k, minimum=0, allow_none=False)
    checks.check_batch_size(config.batch_size)
    checks.check_choices("--loss-tokens", (config.loss_tokens,), LOSS_TOKENS)
    checks.check_data(tasks, config.data_dir, config.k)
    checks.check_model_and_window(config.model, config.max_len, window)
    return tasks


def _tune_tasks(config: TuneConfig, run_dir: Path, tasks: list, lm, together: bool, force: bool) -> dict:
    """`tune` once its arguments are checked and its directory is locked."""
    open_tune_dir(run_dir, config, force)
    start = time.perf_counter()
    lm = lm or load(config.model)
    selection = {"config": config.to_json(), "engine": "batched" if together else "one by one", "tasks": {}}
    for task in tasks:  # the file is rewritten after each task, so a long tune's first choices are usable
        selection["tasks"][task.name] = tune_task(lm, config, run_dir, task, together)
        write_json_atomic(run_dir / SELECTION_FILE, selection | {"complete": task is tasks[-1]})
    seconds = time.perf_counter() - start
    timing_path = run_dir / "tune" / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    write_json_atomic(timing_path, timing | {"last_invocation_s": seconds})
    return selection | {"seconds": seconds}


# --- using the selection -------------------------------------------------------------------------


def rates_for(source: str, tasks: Sequence[str], run_dir: str | os.PathLike | None = None) -> dict[str, float] | None:
    """`--lrs`: None for "paper" (each task's own rate), else {task: rate} from "selected"
    (RUN_DIR/lr_selection.json) or a JSON file (a tune's output, or a plain {task: rate} map).
    A file that lacks a task of the grid is an error naming the task."""
    if source == "paper":
        return None
    if source == "selected":
        if run_dir is None:
            raise InputError("--lrs selected needs the run directory that holds lr_selection.json")
        path = Path(run_dir) / SELECTION_FILE
        if not path.exists():
            raise InputError(f"--lrs selected: {path} does not exist; run `jaxicl tune --out {run_dir}` first")
    else:
        path = Path(source)
        if not path.suffix == ".json" or not path.exists():
            raise InputError(f"--lrs must be 'paper', 'selected' or an existing .json file; got {source!r}")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"--lrs {path}: not valid JSON ({e})") from e
    if isinstance(data, dict) and "tasks" in data:
        data = {name: entry["chosen"]["lr"] for name, entry in data["tasks"].items()}
    if not isinstance(data, dict):
        raise InputError(f"--lrs {path}: expected a tune's lr_selection.json or a {{task: rate}} object")
    missing = [t for t in tasks if t not in data]
    if missing:
        raise InputError(f"--lrs {path} has no learning rate for task {', '.join(missing)}")
    for t in tasks:
        check_rate(data[t], f"for task {t} in {path}")
    return {t: float(data[t]) for t in tasks}
