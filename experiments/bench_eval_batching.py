"""Query batching in `evaluate`: rows sorted by length (each batch padded to its own longest row)
against the earlier batching (one partial batch per 32-token length bucket), side by side in one run.

The earlier batching is reproduced exactly by one `evaluate` call per 32-token bucket of queries:
inside a bucket every row pads to the bucket's length and the bucket's last batch is partial, as
before. The workload is the tune's: a finetuned model's zero-shot scores on a task's selection set
(jaxicl/runner/tune.py), scores only, batch 16. Printed per task and scheme: warm seconds (best of
--repeats, the schemes interleaved so a busy machine slows them alike), ms per query, the share of
executed tokens that are real (padding is the rest), the programs compiled (one per padded
length), the speed-up over the earlier batching and the largest score difference from it; beside
them this machine's jitted 2048² fp32 matmul rate.

    python experiments/bench_eval_batching.py [--tasks sst2,cb] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from benchutil import matmul_gflops

SIZE = 16


def _selection_queries(lm, name: str):
    from jaxicl.data.tasks import get_task
    from jaxicl.runner import run_prompts, tune

    task = get_task(name)
    config = tune.TuneConfig(tasks=(name,))
    prompts = [run_prompts(lm, tune._run_config(config, task), task, s, p) for s, p in task.runs]
    selection = tune.build_selection(task, lm.tokenizer, prompts, config)
    return prompts[0].zs_prefix_ids, [list(q) for q in selection.query_ids], prompts[0].candidate_ids


def _plan(rows, multiple: int) -> tuple[int, set[int]]:
    """(tokens `evaluate` computes for these rows, padding included; the padded lengths it compiles)."""
    from jaxicl.engine.scoring import length_batches

    lengths = [length for _, length in length_batches(rows, SIZE, multiple)]
    return SIZE * sum(lengths), set(lengths)


def _schemes(lm, prefix, queries, candidates):
    """name -> (score function, share of executed tokens that are real, programs compiled)."""
    from jaxicl.api import bucket
    from jaxicl.engine.scoring import EvalOptions, _rows, evaluate

    rows = _rows(queries, candidates, "label")
    width = {}
    for row in rows:
        width[row.example] = max(width.get(row.example, 0), len(row.ids))
    groups: dict[int, list[int]] = {}
    for i in range(len(queries)):
        groups.setdefault(bucket(width[i], 32), []).append(i)

    def per_bucket() -> np.ndarray:
        options = EvalOptions(batch_size=SIZE, records=(), length_multiple=32)
        scores = np.zeros((len(queries), len(candidates)))
        for members in groups.values():
            scores[members] = evaluate(lm.params, lm.config, prefix, [queries[i] for i in members],
                                       candidates, options).scores  # fmt: skip
        return scores

    real = sum(len(r.ids) for r in rows)
    old = [_plan([r for r in rows if r.example in members], 32) for members in map(set, groups.values())]

    def sorted_by_length(multiple: int):
        options = EvalOptions(batch_size=SIZE, records=(), length_multiple=multiple)
        return lambda: evaluate(lm.params, lm.config, prefix, queries, candidates, options).scores

    old_shapes = set().union(*(shapes for _, shapes in old))
    out = {"per 32-token bucket (earlier)": (per_bucket, real / sum(t for t, _ in old), len(old_shapes))}
    for multiple in (32, 16, 8):
        executed, shapes = _plan(rows, multiple)
        out[f"sorted, multiple {multiple}"] = (sorted_by_length(multiple), real / executed, len(shapes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tasks", default="sst2,cb")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax

    import jaxicl

    lm = jaxicl.load(args.model)
    print(f"{args.model} on {jax.devices()[0].device_kind} ({platform.machine()}, {jax.device_count()} device(s)); "
          f"jitted 2048² fp32 matmul: {matmul_gflops():.1f} GFLOP/s")  # fmt: skip
    print("| task | queries | batching | programs | real tokens / executed | warm s | ms/query | speed-up | max \\|Δ score\\| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        prefix, queries, candidates = _selection_queries(lm, name)
        schemes = _schemes(lm, prefix, queries, candidates)
        reference = {label: run() for label, (run, *_) in schemes.items()}  # warm-up: compiles every shape
        best = {label: float("inf") for label in schemes}
        for _ in range(args.repeats):
            for label, (run, *_) in schemes.items():
                start = time.perf_counter()
                run()
                best[label] = min(best[label], time.perf_counter() - start)
        base_label = next(iter(schemes))
        for label, (_, share, programs) in schemes.items():
            diff = float(np.max(np.abs(reference[label] - reference[base_label])))
            print(f"| {name} | {len(queries)} | {label} | {programs} | {share:.2f} | {best[label]:.2f} | "
                  f"{1000 * best[label] / len(queries):.1f} | {best[base_label] / best[label]:.2f}× | {diff:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
