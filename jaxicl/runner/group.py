"""One group of cells, (task, variant, seed, perm): the shared prompts, zero-shot and ICL, then
each method's finetuning, its zero-shot evaluation and the metrics; controls and the order cell.

Several processes (jax.distributed): each scores its share of the queries and finetunes
replicated; process 0 alone computes the metrics and writes the cell files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from jaxicl.analyses import controls, order, stability
from jaxicl.analyses.stability import STABILITY
from jaxicl.data.prompts import PromptSet, relabel
from jaxicl.data.tasks import get_task
from jaxicl.engine import metrics, transforms
from jaxicl.engine.across_hosts import evaluate_across_hosts
from jaxicl.engine.finetune import finetune_cached, finetune_many
from jaxicl.engine.scoring import EvalResult
from jaxicl.errors import JaxiclError
from jaxicl.io.results import versions, write_json_atomic
from jaxicl.runner import vectors
from jaxicl.runner.layout import CELLS, EVALS, SECONDS
from jaxicl.runner.plan import ANALYSES, ORDER, Cell, RunConfig, batch_runs_enabled, finetune_options, run_prompts
from jaxicl.runner.rundir import cached_eval, checkpoint_dir, finetune_base, group_relpath, load_eval
from jaxicl.runtime import distributed
from jaxicl.runtime.stage_clock import StageClock


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
    """The real cell's plan, or a control's (jaxicl/analyses/controls.py): cross-task finetunes on the
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
    group_dir = group_relpath(cell)
    icl_shuffled, _ = cached_eval(run_dir / EVALS / group_dir / "icl-shuffled.npz", ev(shuffled.prefix_ids),
                                  config.eval_options().records)  # fmt: skip
    return _Plan("shuffled", task, shuffled, icl_shuffled, describe)


def _order_record(lm, config: RunConfig, run_dir: Path, task, cell: Cell, prompts: PromptSet, params: dict,
                  icl: EvalResult) -> dict:
    """The order cell of one run (jaxicl/analyses/order.py): ICL and each method's finetuned model scored under
    P orders of the demonstrations. The first order is the run's own, so its ICL and finetuned
    scores are the group's; the others' scores are cached under evals/.../order/ (no checkpoints)."""
    orders = order.permutations(prompts.k_icl, config.order_permutations, cell.seed, cell.perm)
    reordered = [order.reorder(prompts, o) for o in orders]
    scores_only = dataclasses.replace(config.eval_options(), records=())
    where = run_dir / EVALS / group_relpath(cell) / "order"

    def ev(prefix, p):
        return lambda: evaluate_across_hosts(p, lm.config, prefix, prompts.query_ids, prompts.candidate_ids,
                                                         scores_only)  # fmt: skip

    scores = {"icl": [icl] + [cached_eval(where / f"{i}-icl.npz", ev(r.prefix_ids, params))[0]
                              for i, r in enumerate(reordered) if i]}  # fmt: skip
    for method in config.methods:
        paths = [run_dir / EVALS / group_relpath(cell) / f"{method}-ft.npz"]  # the run's own order
        paths += [where / f"{i}-{method}-ft.npz" for i in range(1, len(orders))]
        todo = distributed.on_host0(lambda: [i for i, p in enumerate(paths) if load_eval(p) is None])
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


def _finetune(lm, config: RunConfig, run_dir: Path, cell: Cell, plan: _Plan, params: dict, options, name: str):
    """A cell's finetuning (restored from its checkpoint when saved): `name` tells a control's or the
    stability check's finetuning apart from the cell's own."""
    result, _ = finetune_cached(
        checkpoint_dir(run_dir, cell, name), params, lm.config, plan.prompts.ft_sequences, options,
        label_starts=plan.prompts.ft_label_starts, base=finetune_base(config, cell),
        demo_names=[f"dataset index {i}" for i in plan.prompts.demo_indices],
    )  # fmt: skip
    return result


def _cell_record(config: RunConfig, cell: Cell, plan: _Plan, prompts: PromptSet, evals: dict[str, EvalResult],
                 values: dict, result) -> dict:
    """The results file of one cell: its coordinates and settings, the zero-shot, ICL and finetuned
    accuracies, the metrics, the finetuning's gradient norms and losses, and what a control is."""
    gold = list(prompts.gold_labels)
    lr, lr_origin = config.learning_rate(plan.task)
    record = {
        "task": cell.task, "model": config.model, "revision": config.revision, "variant": cell.variant,
        "method": cell.method,
        "seed": cell.seed, "perm": cell.perm, "k": config.k, "k_icl": prompts.k_icl, "n_eval": prompts.n_eval,
        "lr": lr, "lr_origin": lr_origin,
        "accuracy": {name: evals[name].accuracy(gold) for name in ("zs", "icl", "ft")},
        "per_layer": values["per_layer"], "scalar": values["scalar"], "counts": values["counts"],
        "per_example": values["per_example"],
        "grad_norms": {"kv": result.kv_grad_norms.tolist(), "all": result.grad_norms.tolist()},
        "losses": result.losses.tolist(),
        "demo_indices": list(prompts.demo_indices), "format": prompts.format.to_dict(),
        "config": config.to_json(), "versions": versions(),
    }  # fmt: skip
    if cell.kind is not None:
        record |= {"control": cell.kind, **plan.describe}
    return record


def _finetuned_lookup(lm, config: RunConfig, run_dir: Path, task, cell: Cell, plan: _Plan, params: dict,
                      tuned: dict[str, dict]):
    """method -> its finetuned params: from `tuned` (filled as the group's method cells run), else
    restored from the method cell's checkpoint (or finetuned anew) on first use."""

    def finetuned(method: str) -> dict:
        if method not in tuned:
            real = dataclasses.replace(cell, method=method, kind=None)
            tuned[method] = _finetune(lm, config, run_dir, real, plan, params, finetune_options(config, task, method), "").params
        return tuned[method]

    return finetuned


def _metrics(config: RunConfig, cell: Cell, zs: EvalResult, icl: EvalResult, ft: EvalResult, gold: list) -> dict:
    values = metrics.all_metrics(zs, icl, ft, gold=gold, seed=config.metric_seed)
    if config.token_wise and metrics.TOKENWISE_KEY not in values["scalar"]:
        raise JaxiclError(f"{cell.name()}: token-wise SimAOU was asked for but a record of it is missing")
    return values


def _alpha(zs: EvalResult, ft_results: dict[str, EvalResult], gd_path: Path) -> dict:
    """The LCGD cell's α: it needs GD's finetuned records, from this group, else from the cache (a
    resumed group or an `only` slice that ran GD earlier); {} without them."""
    gd_ft = ft_results.get("gd") or load_eval(gd_path)
    if gd_ft is None:
        return {}
    a = metrics.alpha_metrics(zs, ft_results["lcgd"], gd_ft)
    return {"alpha": {"per_layer": a["per_layer"]["alpha"], "scalar": a["scalar"]["alpha"]}}


def run_group(lm, config: RunConfig, run_dir: Path, task, cells: Sequence[Cell], progress=None,
              clock: StageClock | None = None) -> list[Path]:
    """Run the cells of one (task, variant, seed, perm): shared prompts and ICL, then each method.
    clock: also add this group's stage times (wall, device, compile, host) to it."""
    task_name, variant, seed, perm = cells[0].group
    watch = StageClock()
    step = (lambda msg: progress(msg)) if progress else (lambda msg: None)
    group_dir = group_relpath(cells[0])
    options = config.eval_options()

    with watch("prompts"):
        prompts = run_prompts(lm, config, task, seed, perm)
        params = transforms.reinit(lm.params, lm.config, variant, seed)

    def ev(prefix, p=params):  # each process scores its share of the queries; all get every result
        return lambda: evaluate_across_hosts(
            p, lm.config, prefix, prompts.query_ids, prompts.candidate_ids, options)

    step("zero-shot")
    with watch("zero_shot"):  # the trained model's zero-shot run is the same for every seed/perm
        zs_dir = Path(task_name, variant) if variant == "trained" else group_dir
        zs, _ = cached_eval(run_dir / EVALS / zs_dir / "zs.npz", ev(prompts.zs_prefix_ids), options.records)
    step("ICL")
    with watch("icl"):
        icl, _ = cached_eval(run_dir / EVALS / group_dir / "icl.npz", ev(prompts.prefix_ids), options.records)

    ft_results: dict[str, EvalResult] = {}
    tuned: dict[str, dict] = {}  # each method's finetuned params, for the analyses
    finetuned = _finetuned_lookup(lm, config, run_dir, task, cells[0], _plan(lm, config, run_dir, task,
                                  dataclasses.replace(cells[0], kind=None), prompts, icl, ev), params, tuned)  # fmt: skip

    gold = list(prompts.gold_labels)
    written = []
    for cell in cells:
        if cell.kind in ANALYSES or cell.kind == ORDER:  # one cell per run, beside the methods'
            step(cell.kind)
            with watch(cell.kind):
                record = (vectors.RECORDS[cell.kind](lm, config, run_dir, cell, prompts, params, finetuned)
                          if cell.kind in ANALYSES else _order_record(lm, config, run_dir, task, cell, prompts, params, icl))
            if distributed.is_writer():
                written.append(write_json_atomic(run_dir / cell.relpath(), record))
            continue
        plan = _plan(lm, config, run_dir, task, cell, prompts, icl, ev)
        stage = cell.method if cell.kind is None else f"{cell.method}_{plan.name}"
        options_ft = finetune_options(config, plan.task, cell.method)
        step(f"{stage} finetune")
        with watch(f"finetune_{stage}"):
            result = _finetune(lm, config, run_dir, cell, plan, params, options_ft, plan.name)
        if cell.kind is None:
            tuned[cell.method] = result.params
        step(f"{stage} evaluate")
        with watch(f"ftzs_{stage}"):
            ft, _ = cached_eval(run_dir / EVALS / group_dir / f"{cell.method}{plan.suffix}-ft.npz",
                                ev(prompts.zs_prefix_ids, result.params), options.records)
        perturbed = again = None
        if config.stability_check and cell.kind is None:
            step(f"{stage} stability check")
            with watch(f"stability_{stage}"):  # the same finetuning and scoring, other rounding
                again = _finetune(lm, config, run_dir, cell, plan, params, stability.perturbed(options_ft), STABILITY)
                perturbed, _ = cached_eval(run_dir / EVALS / group_dir / f"{cell.method}-ft-{STABILITY}.npz",
                                           ev(prompts.zs_prefix_ids, again.params), options.records)
        if not distributed.is_writer():  # the others only joined the collectives
            continue
        if cell.kind is None:
            ft_results[cell.method] = ft
        with watch(f"metrics_{stage}"):
            values = _metrics(config, cell, zs, plan.icl, ft, gold)
        record = _cell_record(config, cell, plan, prompts, {"zs": zs, "icl": plan.icl, "ft": ft}, values, result)
        if perturbed is not None:
            again_values = metrics.all_metrics(zs, plan.icl, perturbed, gold=gold, seed=config.metric_seed)
            record["stability"] = stability.difference(values, again_values, ft.accuracy(gold), perturbed.accuracy(gold),
                                                        options_ft, stability.run_difference(result, again))
        if cell.kind is None and cell.method == "lcgd":
            record |= _alpha(zs, ft_results, run_dir / EVALS / group_dir / "gd-ft.npz")
        if cell.kind is None:  # the report's time per stage reads the real cells' seconds
            write_json_atomic(run_dir / SECONDS / cell.relpath().relative_to(CELLS), dict(watch.seconds))
        written.append(write_json_atomic(run_dir / cell.relpath(), record))
    if clock is not None:
        clock.merge(watch)
    return written
