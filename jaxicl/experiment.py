"""The paper's protocol end to end, as a resumable run directory of one results JSON per cell.

A cell is (task, variant, seed, perm, method). Cells of one (task, variant, seed, perm) share the
prompts and the zero-shot and ICL evaluations; those records are kept in `evals/` so GD and LCGD
(or a resumed run) never recompute them. Finetuned params live in `checkpoints/` (orbax).

    RUN_DIR/run.json                                   the full config (a rerun must match it)
    RUN_DIR/provenance.json                            package versions and machine
    RUN_DIR/evals/<task>/<variant>/seed<S>-perm<P>/{zs,icl}.npz, <method>-ft.npz
                                                       (trained: zs.npz one level up, shared by seeds)
    RUN_DIR/checkpoints/<task>/<variant>/<method>-seed<S>-perm<P>/
    RUN_DIR/cells/<task>/<variant>/<method>-seed<S>-perm<P>.json   (deterministic: no wall times)
    RUN_DIR/seconds/<task>/<variant>/<method>-seed<S>-perm<P>.json time per stage of that cell
    RUN_DIR/timing.json   model load, elapsed time, XLA compilations (programs, seconds, persistent
                          cache hits), the batched engine's share, and each stage's seconds split into
                          device, compile and host (jaxicl/stage_clock.py) of the last invocation
                          (rewritten after each group)

Every file is written atomically (temp file + rename), so an interrupt loses at most the cell in
progress and never leaves a partial file; rerunning the same command skips finished cells.

Several processes (jax.distributed, e.g. one per host of a TPU pod slice, all running the same
command): the run directory is process 0's. Each process evaluates its share of the queries
(`distributed.evaluate_across_hosts`) and finetunes replicated; process 0 alone reads the directory
(which cells are done, which stages are cached, the checkpoints) and broadcasts what it found, so
every process runs the same stages and collectives even where the directory is not shared; process 0
alone computes the metrics and writes every file, once. One process behaves exactly as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from jaxicl import compile_stats, controls, distributed, metrics, order
from jaxicl.data.prompts import PromptSet, build_prompts, relabel
from jaxicl.data.tasks import get_task
from jaxicl.errors import JaxiclError
from jaxicl.icl import RECORD_TAPS, EvalOptions, EvalResult
from jaxicl.models.transformer import EVERY_POSITION
from jaxicl.io.results import machine, versions, write_config, write_json_atomic
from jaxicl.stage_clock import StageClock

METHODS = ("gd", "lcgd")
CELL_KEYS = ("task", "variant", "method", "seed", "perm", "accuracy", "per_layer", "scalar")
ORDER = "order"  # the order-sensitivity cell of a run (jaxicl/order.py)
ORDER_KEYS = ("task", "variant", "seed", "perm", "permutations", "methods")

TOKEN_RECORD = "attn_out" + EVERY_POSITION  # attn_out at every query token (--token-wise)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers; a run directory refuses a different one."""

    model: str = "gemma3-270m"
    tasks: tuple[str, ...] = ("sst2", "sst5", "mr", "subj", "agnews", "cb")
    runs: tuple[tuple[int, int], ...] | None = None  # (seed, perm) pairs; None: each task's paper runs
    n_runs: int | None = None  # keep only the first n of those runs
    methods: tuple[str, ...] = METHODS
    variants: tuple[str, ...] = ("trained",)
    k: int = 32
    n_eval: int | None = 200
    max_len: int | None = None  # context window for ICL; None: the model's
    separator: str = "\n"
    probe: str = "label"
    batch_size: int | str = 16  # query rows per batch, or "auto" (sized to the device)
    loss_tokens: str = "all"
    layer_reduction: str = "sum"
    lcgd_readout: str = "block"
    metric_seed: int = 0
    data_dir: str | None = None
    lrs: tuple[tuple[str, float], ...] | None = None  # (task, rate) pairs; None: each task's paper rate
    lrs_source: str | None = None  # where `lrs` came from ("selected", a file); None: the paper
    token_wise: bool = False  # also record attn_out at every query token: IA2's token-wise SimAOU
    order_permutations: int = 0  # P >= 2: order sensitivity over P orders of each run's demos (order.py)
    checkpoints: tuple[str, ...] | None = None  # revisions of `model`: the grid runs on each (revisions.py)
    revision: str | None = None  # set by revisions.py in each revision's own run directory
    controls: tuple[str, ...] = ()  # task-specificity controls (jaxicl/controls.py), GD only
    cross_task: tuple[tuple[str, str], ...] | None = None  # (A, B): A's cross-task partner; default next task

    def eval_options(self) -> EvalOptions:
        """The evaluation settings of every zero-shot, ICL and finetuned scoring of the run."""
        records = RECORD_TAPS + ((TOKEN_RECORD,) if self.token_wise else ())
        return EvalOptions(batch_size=self.batch_size, probe=self.probe, records=records)

    def learning_rate(self, task) -> tuple[float, str]:
        """(rate, origin) of a task's finetuning: the paper's, or the one `--lrs` gave."""
        if self.lrs is None:
            if task.lr is None:
                raise JaxiclError(f"task {task.name} has no learning rate; add 'lr' to its spec or pass --lrs")
            return task.lr, "paper"
        rates = dict(self.lrs)
        if task.name not in rates:
            raise JaxiclError(f"the learning rates from {self.lrs_source} have none for task {task.name}")
        return rates[task.name], str(self.lrs_source)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class Cell:
    task: str
    variant: str
    seed: int
    perm: int
    method: str
    kind: str | None = None  # None: a real cell; a control's name (jaxicl/controls.py); or ORDER

    @property
    def group(self) -> tuple[str, str, int, int]:
        return (self.task, self.variant, self.seed, self.perm)

    def relpath(self) -> Path:
        """cells/... for the real grid; controls/<control>/... and order/... apart, so neither ever
        enters Tables 1-2."""
        if self.kind == ORDER:
            return Path("order", self.task, self.variant, f"seed{self.seed}-perm{self.perm}.json")
        root = ("cells",) if self.kind is None else ("controls", self.kind)
        return Path(*root, self.task, self.variant, f"{self.method}-seed{self.seed}-perm{self.perm}.json")

    @property
    def required_keys(self) -> tuple[str, ...]:
        """What a complete results file of this cell holds (an incomplete one is recomputed)."""
        return ORDER_KEYS if self.kind == ORDER else CELL_KEYS

    def name(self) -> str:
        kind = "" if self.kind is None else f" [{self.kind}]"
        return f"{self.task}/{self.variant}/{self.method}{kind} seed {self.seed} perm {self.perm}"


def cells_of(config: RunConfig) -> list[Cell]:
    """The grid, grouped so cells sharing prompts and ICL records run back to back; variant-major,
    so a long run completes the trained model's tables before the untrained baselines'."""
    out = []
    tasks = [get_task(name) for name in config.tasks]
    for variant in config.variants:
        for task in tasks:
            for seed, perm in (config.runs or task.runs)[: config.n_runs]:
                out += [Cell(task.name, variant, seed, perm, m) for m in config.methods]
                out += [Cell(task.name, variant, seed, perm, "gd", control) for control in config.controls]
                if config.order_permutations:
                    out.append(Cell(task.name, variant, seed, perm, "+".join(config.methods), ORDER))
    return out


# --- run directory -------------------------------------------------------------------------------


def open_run_dir(run_dir: Path, config: RunConfig, force: bool = False) -> None:
    """Create the run directory, or check that an existing one was made by the same config."""
    write_config(run_dir / "run.json", config.to_json(), force, defaults=RunConfig().to_json())
    write_json_atomic(run_dir / "provenance.json", {"versions": versions(), "machine": machine()})


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


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _result_arrays(result: EvalResult) -> dict[str, np.ndarray]:
    out = {f"rec_{k}": v for k, v in result.records.items()}
    out.update(scores=result.scores, predictions=result.predictions, map_lengths=result.map_lengths,
               prefix_len=np.asarray(result.prefix_len))
    return out


def _load_result(path: Path, records_needed: Sequence[str] = ()) -> EvalResult | None:
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
    found = _load_result(path, records_needed) if distributed.is_writer() else None
    if distributed.broadcast_from_host0(found is not None):
        return found, True
    result = compute()
    if distributed.is_writer():
        _save_npz_atomic(path, _result_arrays(result))
    return result, False


# --- one group of cells ----------------------------------------------------------------------------


def run_prompts(lm, config: RunConfig, task, seed: int, perm: int) -> PromptSet:
    """The prompts of one (task, seed, perm) run under this config (also `jaxicl tune`'s)."""
    return build_prompts(
        task, lm.tokenizer, seed=seed, perm=perm, k=config.k, n_eval=config.n_eval,
        max_len=config.max_len or lm.config.max_positions, separator=config.separator, data_dir=config.data_dir,
    )  # fmt: skip


def finetune_options(config: RunConfig, task, method: str):
    """The finetuning settings of a task and method under this config: its rate (`--lrs`), the
    method's objective and the loss tokens (also `jaxicl tune`'s, with the rate replaced)."""
    from jaxicl.finetune import FinetuneOptions, Objective

    lr, _ = config.learning_rate(task)
    objective = Objective() if method == "gd" else Objective(
        readout=config.lcgd_readout, causal=True, layer_reduction=config.layer_reduction)
    return FinetuneOptions(lr=lr, objective=objective, loss_tokens=config.loss_tokens)


def _checkpoint_dir(run_dir: Path, cell: Cell, finetuning: str = "") -> Path:
    """finetuning: "" for the cell's own demonstrations, else a control's name for its finetuning."""
    name = cell.method + (f"-{finetuning}" if finetuning else "")
    return run_dir / "checkpoints" / cell.task / cell.variant / f"{name}-seed{cell.seed}-perm{cell.perm}"


def _base(config: RunConfig, cell: Cell) -> str:
    """Names the starting params of a cell's finetuning (part of its checkpoint key)."""
    return f"{config.model}/{cell.variant}/{cell.seed}"


BATCH_RUNS = ("auto", "on", "off")


def batch_runs_enabled(batch_runs: str) -> bool:
    """`--batch-runs`: "auto" batches on an accelerator only (on a 2-core CPU one task's grid ran
    slower batched than one by one: experiments/bench_grid.py, README)."""
    import jax

    if batch_runs not in BATCH_RUNS:
        raise JaxiclError(f"--batch-runs must be one of {', '.join(BATCH_RUNS)}; got {batch_runs!r}")
    return batch_runs == "on" or (batch_runs == "auto" and jax.default_backend() != "cpu")


def _group_dir(cell: Cell) -> Path:
    return Path(cell.task, cell.variant, f"seed{cell.seed}-perm{cell.perm}")


def run_together(lm, config: RunConfig, run_dir: Path, task, variant: str, cells: Sequence[Cell]) -> dict:
    """The batched engine for one (task, variant), before its groups run (`run_group` then finds
    every result saved and reuses it):

    1. finetuning: per method, the runs step together under `jax.vmap` (`finetune_many_cached`),
       on an accelerator each run's steps as one `lax.scan` padded to its longest demonstration,
       on a CPU one dispatch per step, each padded to its own bucket (on the 2-core CPU, one
       task's batched grid took 1.84x the one-by-one time with the scan, 1.20x without:
       experiments/bench_grid.py, README); the untrained variants' runs start from their own
       re-initialisations (stacked params), the trained variant's from the one model;
    2. the zero-shot evaluation of every finetuned model ("ftzs") as one vmapped program per batch
       of queries (`icl.evaluate_many`; one process only: several use `evaluate_across_hosts`).

    Returns {"runs": finetuning runs computed, "evaluations": ftzs evaluations computed}."""
    import jax

    from jaxicl import transforms
    from jaxicl.finetune import finetune_cached, finetune_many_cached
    from jaxicl.icl import evaluate_many

    scan = jax.default_backend() != "cpu"  # a 2-core CPU pays more for the padding than for dispatches
    mine = [c for c in cells if c.task == task.name and c.variant == variant and c.kind is None]
    prompts = {c.group: run_prompts(lm, config, task, c.seed, c.perm) for c in mine}
    starts = {seed: transforms.reinit(lm.params, lm.config, variant, seed) for seed in {c.seed for c in mine}}
    done = {"runs": 0, "evaluations": 0}
    for method in config.methods:
        batch = [c for c in mine if c.method == method]
        if len(batch) < 2:
            continue
        ps = [prompts[c.group] for c in batch]
        params = lm.params if variant == "trained" else [starts[c.seed] for c in batch]
        computed = finetune_many_cached(
            [_checkpoint_dir(run_dir, c) for c in batch], params, lm.config, [p.ft_sequences for p in ps],
            finetune_options(config, task, method), bases=[_base(config, c) for c in batch],
            label_starts_sets=[p.ft_label_starts for p in ps], scan=scan,
        )  # fmt: skip
        done["runs"] += sum(computed)
    if jax.process_count() > 1 or len(mine) < 2:
        return done
    options = config.eval_options()
    todo = [c for c in mine if _load_result(run_dir / "evals" / _group_dir(c) / f"{c.method}-ft.npz",
                                            options.records) is None]  # fmt: skip
    same_queries: dict[tuple, list[Cell]] = {}  # the models scored on the same queries go together
    for c in todo:
        p = prompts[c.group]
        key = (tuple(p.zs_prefix_ids), tuple(map(tuple, p.query_ids)), tuple(map(tuple, p.candidate_ids)))
        same_queries.setdefault(key, []).append(c)
    for (prefix, queries, candidates), together in same_queries.items():
        if len(together) < 2:
            continue
        finetuned = [
            finetune_cached(
                _checkpoint_dir(run_dir, c), starts[c.seed], lm.config, prompts[c.group].ft_sequences,
                finetune_options(config, task, c.method), label_starts=prompts[c.group].ft_label_starts,
                base=_base(config, c),
            )[0].params
            for c in together
        ]  # fmt: skip
        results = evaluate_many(finetuned, lm.config, prefix, queries, candidates, options)
        for c, result in zip(together, results, strict=True):
            _save_npz_atomic(run_dir / "evals" / _group_dir(c) / f"{c.method}-ft.npz", _result_arrays(result))
        done["evaluations"] += len(together)
    return done


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a cell finetunes on and which ICL result its updates are compared with."""

    name: str  # "" for a real cell; the finetuning's name for a control ("cross-mr", "shuffled")
    task: object  # the Task whose demonstrations (and learning rate) the finetuning uses
    prompts: PromptSet  # whose ft_sequences are finetuned on
    icl: EvalResult  # the ICL result compared with the finetuned one
    describe: dict  # what a control cell records about itself

    @property
    def suffix(self) -> str:
        return f"-{self.name}" if self.name else ""


def _plan(lm, config: RunConfig, run_dir: Path, task, cell: Cell, prompts: PromptSet, icl: EvalResult, ev) -> _Plan:
    """The real cell's plan, or a control's (jaxicl/controls.py): cross-task finetunes on the
    partner task's demonstrations of the same run index; the shuffled controls on this run's
    demonstrations with permuted labels, compared with real ICL (shuffled-gd) or with ICL on the
    permuted labels (shuffled-icl, cached as icl-shuffled.npz)."""
    if cell.kind is None:
        return _Plan("", task, prompts, icl, {})
    if cell.kind == "cross-task":
        names = [get_task(n).name for n in config.tasks]
        other = get_task(config.tasks[names.index(controls.partner(task.name, names, config.cross_task))])
        index = list((config.runs or task.runs)[: config.n_runs]).index((cell.seed, cell.perm))
        seed, perm = (config.runs or other.runs)[index]
        theirs = run_prompts(lm, config, other, seed, perm)
        return _Plan(f"cross-{other.name}", other, theirs, icl,
                     {"partner": other.name, "partner_run": [seed, perm], "partner_demo_indices": list(theirs.demo_indices)})  # fmt: skip
    labels = controls.shuffled_labels(prompts.demo_labels, cell.seed, cell.perm)
    shuffled = relabel(prompts, labels)
    describe = {"original_labels": list(prompts.demo_labels), "shuffled_labels": list(labels)}
    if cell.kind == "shuffled-gd":
        return _Plan("shuffled", task, shuffled, icl, describe)
    group_dir = _group_dir(cell)
    icl_shuffled, _ = cached_eval(run_dir / "evals" / group_dir / "icl-shuffled.npz", ev(shuffled.prefix_ids),
                                  config.eval_options().records)  # fmt: skip
    return _Plan("shuffled", task, shuffled, icl_shuffled, describe)


def _order_record(lm, config: RunConfig, run_dir: Path, task, cell: Cell, prompts: PromptSet, params: dict,
                  icl: EvalResult) -> dict:
    """The order cell of one run (jaxicl/order.py): ICL and each method's finetuned model scored under
    P orders of the demonstrations. The first order is the run's own, so its ICL and finetuned
    scores are the group's; the others' scores are cached under evals/.../order/ (no checkpoints)."""
    from jaxicl.finetune import finetune_many

    orders = order.permutations(prompts.k_icl, config.order_permutations, cell.seed, cell.perm)
    reordered = [order.reorder(prompts, o) for o in orders]
    scores_only = dataclasses.replace(config.eval_options(), records=())
    where = run_dir / "evals" / _group_dir(cell) / "order"

    def ev(prefix, p):
        return lambda: distributed.evaluate_across_hosts(p, lm.config, prefix, prompts.query_ids, prompts.candidate_ids,
                                                         scores_only)  # fmt: skip

    scores = {"icl": [icl] + [cached_eval(where / f"{i}-icl.npz", ev(r.prefix_ids, params))[0]
                              for i, r in enumerate(reordered) if i]}  # fmt: skip
    for method in config.methods:
        paths = [run_dir / "evals" / _group_dir(cell) / f"{method}-ft.npz"]  # the run's own order
        paths += [where / f"{i}-{method}-ft.npz" for i in range(1, len(orders))]
        todo = distributed.on_host0(lambda: [i for i, p in enumerate(paths) if _load_result(p) is None])
        # the orders batch like seeds: vmapped, one lax.scan each, on an accelerator; one by one on a CPU
        accelerator = batch_runs_enabled("auto")
        finetuned = dict(zip(todo, finetune_many(
            params, lm.config, [reordered[i].ft_sequences for i in todo], finetune_options(config, task, method),
            label_starts_sets=[reordered[i].ft_label_starts for i in todo], scan=accelerator,
            max_parallel=None if accelerator else 1,
        ) if todo else []))  # fmt: skip
        scores[method] = [cached_eval(path, ev(prompts.zs_prefix_ids, finetuned[i].params) if i in finetuned else None)[0]
                          for i, path in enumerate(paths)]  # fmt: skip
    if not distributed.is_writer():  # the others only joined the collectives
        return {}
    scores = {m: [r.scores for r in per_order] for m, per_order in scores.items()}
    lr, lr_origin = config.learning_rate(task)
    return {
        "task": task.name, "model": config.model, "revision": config.revision, "variant": cell.variant,
        "seed": cell.seed, "perm": cell.perm,
        "k_icl": prompts.k_icl, "n_eval": prompts.n_eval, "lr": lr, "lr_origin": lr_origin,
        "permutations": [list(o) for o in orders], **order.summarize(scores, prompts.gold_labels),
        "config": config.to_json(), "versions": versions(),
    }  # fmt: skip


def run_group(lm, config: RunConfig, run_dir: Path, task, cells: Sequence[Cell], progress=None,
              clock: StageClock | None = None) -> list[Path]:
    """Run the cells of one (task, variant, seed, perm): shared prompts and ICL, then each method.
    clock: also add this group's stage times (wall, device, compile, host) to it."""
    from jaxicl import transforms
    from jaxicl.finetune import finetune_cached

    task_name, variant, seed, perm = cells[0].group
    watch = StageClock()
    step = (lambda msg: progress(msg)) if progress else (lambda msg: None)
    group_dir = _group_dir(cells[0])
    options = config.eval_options()

    with watch("prompts"):
        prompts = run_prompts(lm, config, task, seed, perm)
        params = transforms.reinit(lm.params, lm.config, variant, seed)

    def ev(prefix, p=params):  # each process scores its share of the queries; all get every result
        return lambda: distributed.evaluate_across_hosts(
            p, lm.config, prefix, prompts.query_ids, prompts.candidate_ids, options)

    step("zero-shot")
    with watch("zero_shot"):  # the trained model's zero-shot run is the same for every seed/perm
        zs_dir = Path(task_name, variant) if variant == "trained" else group_dir
        zs, _ = cached_eval(run_dir / "evals" / zs_dir / "zs.npz", ev(prompts.zs_prefix_ids), options.records)
    step("ICL")
    with watch("icl"):
        icl, _ = cached_eval(run_dir / "evals" / group_dir / "icl.npz", ev(prompts.prefix_ids), options.records)

    gold = list(prompts.gold_labels)
    ft_results: dict[str, EvalResult] = {}
    written = []
    for cell in cells:
        if cell.kind == ORDER:
            step("order sensitivity")
            with watch("order"):
                record = _order_record(lm, config, run_dir, task, cell, prompts, params, icl)
            if distributed.is_writer():
                written.append(write_json_atomic(run_dir / cell.relpath(), record))
            continue
        plan = _plan(lm, config, run_dir, task, cell, prompts, icl, ev)
        stage = cell.method if cell.kind is None else f"{cell.method}_{plan.name}"
        step(f"{stage} finetune")
        with watch(f"finetune_{stage}"):
            result, _ = finetune_cached(
                _checkpoint_dir(run_dir, cell, plan.name), params, lm.config, plan.prompts.ft_sequences,
                finetune_options(config, plan.task, cell.method), label_starts=plan.prompts.ft_label_starts,
                base=_base(config, cell), demo_names=[f"dataset index {i}" for i in plan.prompts.demo_indices],
            )  # fmt: skip
        step(f"{stage} evaluate")
        with watch(f"ftzs_{stage}"):
            ft, _ = cached_eval(run_dir / "evals" / group_dir / f"{cell.method}{plan.suffix}-ft.npz",
                                ev(prompts.zs_prefix_ids, result.params), options.records)
        if not distributed.is_writer():  # the others only joined the collectives
            continue
        if cell.kind is None:
            ft_results[cell.method] = ft
        with watch(f"metrics_{stage}"):
            values = metrics.all_metrics(zs, plan.icl, ft, gold=gold, seed=config.metric_seed)
            if config.token_wise and metrics.TOKENWISE_KEY not in values["scalar"]:
                raise JaxiclError(f"{cell.name()}: token-wise SimAOU was asked for but a record of it is missing")
        lr, lr_origin = config.learning_rate(plan.task)
        record = {
            "task": task_name, "model": config.model, "revision": config.revision, "variant": variant,
            "method": cell.method,
            "seed": seed, "perm": perm, "k": config.k, "k_icl": prompts.k_icl, "n_eval": prompts.n_eval,
            "lr": lr, "lr_origin": lr_origin,
            "accuracy": {"zs": zs.accuracy(gold), "icl": plan.icl.accuracy(gold), "ft": ft.accuracy(gold)},
            "per_layer": values["per_layer"], "scalar": values["scalar"], "counts": values["counts"],
            "per_example": values["per_example"],
            "grad_norms": {"kv": result.kv_grad_norms.tolist(), "all": result.grad_norms.tolist()},
            "losses": result.losses.tolist(),
            "demo_indices": list(prompts.demo_indices), "format": prompts.format.to_dict(),
            "config": config.to_json(), "versions": versions(),
        }  # fmt: skip
        if cell.kind is not None:
            record |= {"control": cell.kind, **plan.describe}
        # α needs GD's finetuned records: from this group, else from the cache (a resumed group
        # or an `only` slice that ran GD earlier)
        gd_ft = ft_results.get("gd") or _load_result(run_dir / "evals" / group_dir / "gd-ft.npz")
        if cell.kind is None and cell.method == "lcgd" and gd_ft is not None:
            a = metrics.alpha_metrics(zs, ft_results["lcgd"], gd_ft)
            record["alpha"] = {"per_layer": a["per_layer"]["alpha"], "scalar": a["scalar"]["alpha"]}
        if cell.kind is None:  # the report's time per stage reads the real cells' seconds
            write_json_atomic(run_dir / "seconds" / cell.relpath().relative_to("cells"), dict(watch.seconds))
        written.append(write_json_atomic(run_dir / cell.relpath(), record))
    if clock is not None:
        clock.merge(watch)
    return written


# --- the run -----------------------------------------------------------------------------------


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped `run`: what it finished and which cells were in progress (lost;
    none of their files was written, and rerunning the same command computes them)."""

    def __init__(self, done: int, lost: Sequence[str]):
        super().__init__(f"{done} cells finished, {len(lost)} in progress lost")
        self.done, self.lost = done, list(lost)


def _groups(cells: Sequence[Cell]) -> Iterator[list[Cell]]:
    current: list[Cell] = []
    for cell in cells:
        if current and cell.group != current[0].group:
            yield current
            current = []
        current.append(cell)
    if current:
        yield current


SELECT_KEYS = ("task", "variant", "method", "seed", "perm")


def parse_only(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`KEY=V1,V2` strings (the `--only` flags) → {key: values}: a slice of the grid to run now."""
    only: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in SELECT_KEYS or not values:
            raise JaxiclError(f"--only takes KEY=V1,V2 with KEY one of {', '.join(SELECT_KEYS)}; got {item!r}")
        only[key] = only.get(key, ()) + tuple(v for v in values.split(",") if v)
    return only


def select_cells(cells: Sequence[Cell], only: dict[str, Sequence[str]], grid: Sequence[Cell]) -> list[Cell]:
    """The cells matching every key of `only`; a value that matches no cell of the `grid` is an
    error, so a typo never silently selects nothing."""
    for key, values in only.items():
        if key not in SELECT_KEYS:
            raise JaxiclError(f"cannot select cells by {key!r}; use one of {', '.join(SELECT_KEYS)}")
        present = {str(getattr(c, key)) for c in grid}
        unknown = [str(v) for v in values if str(v) not in present]
        if unknown:
            raise JaxiclError(f"--only {key}={','.join(unknown)} matches no cell of this config's grid "
                              f"(its {key}s: {', '.join(sorted(present))})")
    return [c for c in cells if all(str(getattr(c, k)) in {str(v) for v in vs} for k, vs in only.items())]


def _open_and_scan(run_dir: Path, config: RunConfig, force: bool) -> tuple[list[Cell], int, int]:
    """(unfinished cells, finished cells, corrupt cell files) after opening the run directory."""
    open_run_dir(run_dir, config, force)
    todo, skipped, corrupt = [], 0, []
    for cell in cells_of(config):
        found, problem = read_cell(run_dir / cell.relpath(), cell.required_keys)
        if problem:
            corrupt.append(problem)
        if found is None:
            todo.append(cell)
        else:
            skipped += 1
    for problem in corrupt:
        print(f"jaxicl: corrupt cell file, recomputing: {problem}")
    return todo, skipped, len(corrupt)


def _all_written(run_dir: Path, cells: Sequence[Cell]) -> bool:
    return all(read_cell(run_dir / cell.relpath(), cell.required_keys)[0] is not None for cell in cells)


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
    import jax
    from tqdm import tqdm

    import jaxicl

    run_dir = Path(run_dir)
    task_names = [get_task(name).name for name in config.tasks]
    controls.check_controls(config.controls, task_names, config.cross_task, config.methods)
    order.check_permutations(config.order_permutations)
    if config.checkpoints:  # one run directory per revision, under this one
        from jaxicl.revisions import run_checkpoints

        if lm is not None:
            raise JaxiclError("a run over --checkpoints loads each revision itself: pass no lm")
        return run_checkpoints(config, run_dir, force=force, only=only, quiet=quiet, batch_runs=batch_runs)
    todo, skipped, recomputed = distributed.on_host0(_open_and_scan, run_dir, config, force)
    if only:
        unfinished = len(todo)
        todo = select_cells(todo, only, grid=cells_of(config))
        deferred = unfinished - len(todo)
    else:
        deferred = 0
    tasks = {task.name: task for task in map(get_task, config.tasks)}
    together = batch_runs_enabled(batch_runs)
    if not todo:
        return {"done": 0, "skipped": skipped, "recomputed": recomputed, "deferred": deferred}

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    t0 = time.perf_counter()
    done, group, load_s, batched = 0, [], None, {"runs": 0, "evaluations": 0, "seconds": 0.0}
    clock = StageClock()  # every stage of this invocation: wall, device, compile and host seconds

    def timing(finished: bool) -> None:  # after the load and every group: an interrupted run keeps it
        distributed.write_once(run_dir / "timing.json", {
            "load_s": load_s, "total_s": time.perf_counter() - t0, "cells_done": done, "finished": finished,
            "compile": compiled.as_dict(), "batched": batched, "stages": clock.as_dict()})

    try:
        with compile_stats.counting() as compiled:
            lm = lm or jaxicl.load(config.model)
            load_s = time.perf_counter() - t0
            timing(False)
            quiet = quiet or not distributed.is_writer()
            overall = tqdm(total=len(todo), desc="cells", unit="cell", disable=quiet, position=0)
            ran_together: set[tuple[str, str]] = set()
            for group in _groups(todo):
                if distributed.on_host0(_all_written, run_dir, group):  # e.g. by another machine meanwhile
                    skipped += len(group)
                    overall.update(len(group))
                    continue
                task_variant = (group[0].task, group[0].variant)
                if together and task_variant not in ran_together:
                    ran_together.add(task_variant)
                    start = time.perf_counter()
                    with clock("together"):
                        got = run_together(lm, config, run_dir, tasks[group[0].task], group[0].variant, todo)
                    batched["runs"] += got["runs"]
                    batched["evaluations"] += got["evaluations"]
                    batched["seconds"] += time.perf_counter() - start
                desc = f"{group[0].task}/{group[0].variant} seed {group[0].seed}"
                with tqdm(total=4 + 2 * len(group), desc=desc, leave=False, disable=quiet, position=1) as bar:

                    def progress(msg, bar=bar):
                        bar.set_postfix_str(msg)
                        bar.update(1)

                    profiling = profile_dir is not None and done == 0
                    try:
                        with jax.profiler.trace(str(profile_dir)) if profiling else contextlib.nullcontext():
                            run_group(lm, config, run_dir, tasks[group[0].task], group, progress=progress, clock=clock)
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
    finally:
        signal.signal(signal.SIGTERM, previous)
    timing(True)
    return {"done": done, "skipped": skipped, "recomputed": recomputed, "deferred": deferred}
