"""The causal-indirect-effect grid of function vectors (every head of every layer), run as vmapped
batches of patches (`function_vectors.cie_grid`) and one head at a time through the same compiled
program (`cie_loop`), side by side in one process, on one task's real prompts.

Prints this machine's matmul rate, each way's seconds (first call, with its compile, and a second
call), the speed-up, and the largest difference between the two grids.

    python experiments/bench_cie.py [--model gemma3-270m] [--task sst2] [--queries 8] [--per-batch 8,24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.benchutil import matmul_gflops  # noqa: E402


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--queries", type=int, default=8, help="eval queries each head's CIE is averaged over")
    parser.add_argument("--per-batch", default="8,24", help="heads vmapped together, one or more sizes")
    parser.add_argument("--batch-size", type=int, default=8, help="query rows per batch")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import numpy as np

    import jaxicl
    from jaxicl.analyses import controls
    from jaxicl.analyses import function_vectors as fv
    from jaxicl.analyses import task_vectors as tv
    from jaxicl.data.prompts import relabel
    from jaxicl.data.tasks import get_task
    from jaxicl.engine.scoring import evaluate
    from jaxicl.runner.plan import RunConfig, run_prompts

    rate = matmul_gflops()
    lm = jaxicl.load(args.model)
    task = get_task(args.task)
    seed, perm = task.runs[0]
    prompts = run_prompts(lm, RunConfig(model=args.model, tasks=(args.task,), data_dir=args.data_dir), task, seed, perm)
    queries, gold = prompts.query_ids[: args.queries], list(prompts.gold_labels)[: args.queries]
    icl = evaluate(lm.params, lm.config, prompts.prefix_ids, queries, prompts.candidate_ids, tv.eval_options(args.batch_size))
    mean_z = fv.mean_head_outputs(icl)
    corrupted = relabel(prompts, controls.shuffled_labels(prompts.demo_labels, seed, perm)).prefix_ids
    grid_args = (lm.params, lm.config, corrupted, queries, prompts.candidate_ids, gold, mean_z)
    heads = lm.config.n_layers * lm.config.n_heads
    loop_first, loop = _timed(lambda: fv.cie_loop(*grid_args, batch_size=args.batch_size))
    loop_s, _ = _timed(lambda: fv.cie_loop(*grid_args, batch_size=args.batch_size))
    result = {"model": args.model, "task": args.task, "heads": heads, "queries": len(queries),
              "prefix_tokens": len(corrupted), "matmul_gflops": round(rate, 1),
              "loop": {"first_s": round(loop_first, 2), "second_s": round(loop_s, 2)}, "vmapped": {}}  # fmt: skip
    for per_batch in (int(x) for x in args.per_batch.split(",")):
        first, grid = _timed(lambda: fv.cie_grid(*grid_args, batch_size=args.batch_size, per_batch=per_batch))
        second, _ = _timed(lambda: fv.cie_grid(*grid_args, batch_size=args.batch_size, per_batch=per_batch))
        result["vmapped"][per_batch] = {"first_s": round(first, 2), "second_s": round(second, 2),
                                        "speedup_vs_loop": round(loop_s / second, 2),
                                        "max_abs_difference": float(np.abs(grid - loop).max())}  # fmt: skip
        print(f"{heads} heads x {len(queries)} queries after a {len(corrupted)}-token prefix; matmul {rate:.0f} GFLOP/s: "
              f"loop {loop_s:.1f} s, vmapped {per_batch} at a time {second:.1f} s ({loop_s / second:.2f}x; "
              f"first calls {loop_first:.1f} s and {first:.1f} s); max |difference| {np.abs(grid - loop).max():.1e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
