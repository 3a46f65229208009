"""One zero-shot + ICL evaluation of a task, as a JSON-able record anyone can rebuild prompts from."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from jaxicl.data.prompts import PromptSet, build_prompts
from jaxicl.data.tasks import Task
from jaxicl.engine.scoring import EvalOptions, EvalResult, evaluate
from jaxicl.errors import InputError
from jaxicl.lm import LM


@dataclasses.dataclass(frozen=True)
class EvalRun:
    prompts: PromptSet
    zs: EvalResult
    icl: EvalResult
    seconds: dict[str, float]  # wall times; printed, not written to the (deterministic) results file
    demo_split: str = ""
    eval_split: str = ""


def run_eval(
    lm: LM,
    task: Task,
    *,
    seed: int,
    perm: int = 0,
    k: int = 32,
    n_eval: int | None = None,
    max_len: int | None = None,
    separator: str = "\n",
    data_dir=None,
    options: EvalOptions = EvalOptions(),
    params: dict | None = None,
) -> EvalRun:
    """Zero-shot and k-shot scores (and probe records) of the task's eval queries."""
    t0 = time.perf_counter()
    window = lm.config.max_positions
    if isinstance(max_len, int) and max_len > window:  # build_prompts refuses other bad values
        raise InputError(f"max_len={max_len} exceeds the model's context window of {window} tokens")
    prompts = build_prompts(
        task, lm.tokenizer, seed=seed, perm=perm, k=k, n_eval=n_eval,
        max_len=window if max_len is None else max_len, separator=separator, data_dir=data_dir,
    )  # fmt: skip
    t1 = time.perf_counter()
    params = lm.params if params is None else params
    zs = evaluate(params, lm.config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids, options)
    t2 = time.perf_counter()
    icl = evaluate(params, lm.config, prompts.prefix_ids, prompts.query_ids, prompts.candidate_ids, options)
    t3 = time.perf_counter()
    seconds = {"prompts": t1 - t0, "zero_shot": t2 - t1, "icl": t3 - t2}
    return EvalRun(prompts, zs, icl, seconds, demo_split=task.demo_split, eval_split=task.eval_split)


def eval_record(run: EvalRun, model: str) -> dict[str, Any]:
    """The results JSON of `jaxicl eval`: accuracy, the exact prompt format, per-example outcomes.

    A pure function of the run's inputs (no wall times), so the same run writes the same bytes.
    `demo_indices` index the `demo_split` rows and each example's `index` the `eval_split` rows,
    in file order: with `format` and the tokenizer they rebuild every prompt.
    """
    p = run.prompts
    gold = np.asarray(p.gold_labels)
    return {
        "task": p.task,
        "model": model,
        "seed": p.seed,
        "perm": p.perm,
        "k": p.k,
        "k_icl": p.k_icl,
        "n_eval": p.n_eval,
        "accuracy": {"zs": run.zs.accuracy(gold), "icl": run.icl.accuracy(gold)},
        "demo_split": run.demo_split,
        "eval_split": run.eval_split,
        "demo_indices": list(p.demo_indices),
        "format": p.format.to_dict(),
        "examples": [
            {
                "index": int(p.eval_indices[i]),
                "gold": int(gold[i]),
                "zs_pred": int(run.zs.predictions[i]),
                "icl_pred": int(run.icl.predictions[i]),
                "zs_scores": [round(float(s), 6) for s in run.zs.scores[i]],
                "icl_scores": [round(float(s), 6) for s in run.icl.scores[i]],
            }
            for i in range(p.n_eval)
        ],
    }
