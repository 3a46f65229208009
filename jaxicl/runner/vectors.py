"""The task-vector and function-vector cells of one run (`jaxicl run --analyses ...`): the analyses
of jaxicl/analyses/task_vectors.py and function_vectors.py on the run's prompts, and each method's
finetuned model against them.

They read evaluations at the prediction position (`task_vectors.eval_options`), cached beside the
group's own: evals/<group>/icl-last.npz, <method>-ft-last.npz, and the zero-shot one (shared by the
trained model's runs, like zs.npz). The finetuned models are the cells' own (restored from their
checkpoints). Deterministic: no wall times in the records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from jaxicl.analyses import controls
from jaxicl.analyses import function_vectors as fv
from jaxicl.analyses import task_vectors as tv
from jaxicl.data.prompts import PromptSet, relabel
from jaxicl.engine.across_hosts import evaluate_across_hosts
from jaxicl.engine.scoring import EvalOptions, EvalResult
from jaxicl.io.results import versions
from jaxicl.runner.layout import EVALS
from jaxicl.runner.plan import Cell, RunConfig
from jaxicl.runner.rundir import cached_eval, group_relpath

TASK_VECTORS, FUNCTION_VECTORS = "task-vectors", "function-vectors"


def _finite(values) -> list:
    """A JSON-safe list: NaN (undefined, e.g. a cosine with a zero vector) becomes null."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(values, float).tolist()]


class _Evaluations:
    """The run's evaluations at the prediction position, computed once and cached on disk."""

    def __init__(self, lm, config: RunConfig, run_dir: Path, cell: Cell, prompts: PromptSet, params: dict):
        self.lm, self.prompts, self.params = lm, prompts, params
        self.options = tv.eval_options(config.batch_size)
        self.group = run_dir / EVALS / group_relpath(cell)
        self.zs_path = (run_dir / EVALS / cell.task / cell.variant if cell.variant == "trained" else self.group) / "zs-last.npz"

    def _get(self, path: Path, prefix, params) -> EvalResult:
        p = self.prompts
        compute = lambda: evaluate_across_hosts(params, self.lm.config, prefix, p.query_ids, p.candidate_ids, self.options)  # noqa: E731
        return cached_eval(path, compute, self.options.records)[0]

    def zs(self) -> EvalResult:
        return self._get(self.zs_path, self.prompts.zs_prefix_ids, self.params)

    def icl(self) -> EvalResult:
        return self._get(self.group / "icl-last.npz", self.prompts.prefix_ids, self.params)

    def finetuned(self, method: str, params: dict) -> EvalResult:
        return self._get(self.group / f"{method}-ft-last.npz", self.prompts.zs_prefix_ids, params)


def _header(config: RunConfig, cell: Cell, prompts: PromptSet) -> dict:
    return {
        "task": cell.task, "model": config.model, "revision": config.revision, "variant": cell.variant,
        "seed": cell.seed, "perm": cell.perm, "k_icl": prompts.k_icl, "n_eval": prompts.n_eval,
        "position": "the query's last token (the position whose next-token scores classify it)",
    }  # fmt: skip


def _sweep(correct: np.ndarray) -> dict:
    """A layer sweep's record: accuracy per layer, the best layer (the first of equal bests) and its
    accuracy, and the accuracy at a layer chosen on other queries (tv.heldout_accuracy)."""
    accuracy = correct.mean(axis=1)
    layer = int(np.argmax(accuracy))
    return {"layers": {"accuracy": accuracy.tolist()}, "best_layer": layer, "best_accuracy": float(accuracy[layer]),
            "heldout_accuracy": tv.heldout_accuracy(correct)}


def task_vector_record(lm, config: RunConfig, run_dir: Path, cell: Cell, prompts: PromptSet, params: dict,
                       finetuned: Callable[[str], dict]) -> dict:
    """θ per layer patched into zero-shot runs, and each method's alignment with it."""
    ev = _Evaluations(lm, config, run_dir, cell, prompts, params)
    zs, icl, gold = ev.zs(), ev.icl(), list(prompts.gold_labels)
    theta = tv.task_vectors(icl)
    correct = tv.layer_sweep(params, lm.config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids,
                             theta, gold, add=False, batch_size=config.batch_size)  # fmt: skip
    methods = {}
    for method in config.methods:
        ft = ev.finetuned(method, finetuned(method))
        methods[method] = {"accuracy_ft": ft.accuracy(gold), "alignment": _finite(tv.gd_alignment(zs, ft, theta))}
    return {
        **_header(config, cell, prompts),
        "accuracy": {"zs": zs.accuracy(gold), "icl": icl.accuracy(gold)},
        **_sweep(correct), "theta_norm": np.linalg.norm(theta, axis=-1).tolist(),
        "methods": methods, "config": config.to_json(), "versions": versions(),
    }  # fmt: skip


def function_vector_record(lm, config: RunConfig, run_dir: Path, cell: Cell, prompts: PromptSet, params: dict,
                           finetuned: Callable[[str], dict]) -> dict:
    """Every head's CIE on shuffled-label prompts, the function vector of the top heads added per
    layer in zero-shot runs, and each method's update of the heads against their CIE."""
    ev = _Evaluations(lm, config, run_dir, cell, prompts, params)
    zs, icl, gold = ev.zs(), ev.icl(), list(prompts.gold_labels)
    mean_z = fv.mean_head_outputs(icl)
    labels = controls.shuffled_labels(prompts.demo_labels, cell.seed, cell.perm)
    corrupted = relabel(prompts, labels)
    n = min(config.cie_queries, prompts.n_eval)
    scores_only = EvalOptions(batch_size=config.batch_size, probe="last", records=())
    shuffled = evaluate_across_hosts(params, lm.config, corrupted.prefix_ids, prompts.query_ids[:n], prompts.candidate_ids,
                                     scores_only)  # fmt: skip
    cie = fv.cie_grid(params, lm.config, corrupted.prefix_ids, prompts.query_ids[:n], prompts.candidate_ids, gold[:n],
                      mean_z, batch_size=config.batch_size, corrupted=shuffled)  # fmt: skip
    heads = fv.top_heads(cie, min(fv.TOP_HEADS, cie.size))
    vector = fv.function_vector(params, lm.config, mean_z, heads)
    correct = tv.layer_sweep(params, lm.config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids,
                             np.repeat(vector[None], lm.config.n_layers, axis=0), gold, add=True,
                             batch_size=config.batch_size)  # fmt: skip
    methods = {}
    for method in config.methods:
        tuned = finetuned(method)
        kv, change = fv.kv_update_sizes(params, tuned, lm.config), fv.head_output_change(zs, ev.finetuned(method, tuned))
        methods[method] = {"kv_update": kv.tolist(), "z_change": change.tolist(),
                           "spearman_kv_cie": _finite([fv.spearman(kv, cie)])[0],
                           "spearman_z_cie": _finite([fv.spearman(change, cie)])[0]}  # fmt: skip
    return {
        **_header(config, cell, prompts), "cie_queries": n, "shuffled_labels": list(labels),
        "accuracy": {"zs": zs.accuracy(gold), "icl": icl.accuracy(gold), "shuffled_icl": shuffled.accuracy(gold[:n])},
        # over the CIE queries: ICL's total effect on the gold label, which the heads' CIE are parts of
        "gold_probability": {"icl": float(fv.gold_probability(icl, gold)[:n].mean()),
                             "shuffled_icl": float(fv.gold_probability(shuffled, gold[:n]).mean())},
        "cie": cie.tolist(), "top_heads": [list(h) for h in heads], "fv_norm": float(np.linalg.norm(vector)),
        **_sweep(correct), "methods": methods, "config": config.to_json(), "versions": versions(),
    }  # fmt: skip


RECORDS = {TASK_VECTORS: task_vector_record, FUNCTION_VECTORS: function_vector_record}
