"""One zero-shot + ICL evaluation of a task, as a JSON-able record anyone can rebuild prompts from."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from jaxicl.data.prompts import PromptSet, build_prompts
from jaxicl.data.tasks import Task
from jaxicl.icl import EvalOptions, EvalResult, evaluate
from jaxicl.lm import LM


@dataclasses.dataclass(frozen=True)
class EvalRun:
    prompts: PromptSet
    zs: EvalResult
    icl: EvalResult
    seconds: dict[str, float]


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
    prompts = build_prompts(
        task, lm.tokenizer, seed=seed, perm=perm, k=k, n_eval=n_eval,
        max_len=max_len or lm.config.max_positions, separator=separator, data_dir=data_dir,
    )  # fmt: skip
    t1 = time.perf_counter()
    params = lm.params if params is None else params
    zs = evaluate(params, lm.config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids, options)
    t2 = time.perf_counter()
    icl = evaluate(params, lm.config, prompts.prefix_ids, prompts.query_ids, prompts.candidate_ids, options)
    t3 = time.perf_counter()
    return EvalRun(prompts, zs, icl, {"prompts": t1 - t0, "zero_shot": t2 - t1, "icl": t3 - t2})


def eval_record(run: EvalRun, model: str) -> dict[str, Any]:
    """The results JSON of `jaxicl eval`: accuracy, the exact prompt format, per-example outcomes."""
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
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
    }
