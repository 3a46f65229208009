"""Where `finetune_many` (the seeds of a task finetuned at once under `jax.vmap`) pays: its wall
time against finetuning the same demonstration sets one after another, side by side in one run.

The sets are a task's three paper runs (their demonstrations, in ICL order). Both ways are timed
warm (every length bucket compiled by an untimed first pass) and must give the same losses.

    python experiments/bench_finetune_many.py [--model gemma3-270m] [--task sst2] [--demos 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

import jaxicl
from jaxicl.data import build_prompts, get_task
from jaxicl.engine.finetune import FinetuneOptions, finetune, finetune_many


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves([r.params for r in (out if isinstance(out, list) else [out])]))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--demos", type=int, default=8, help="first N demonstrations of each set")
    parser.add_argument("--methods", default="gd,lcgd")
    args = parser.parse_args()

    lm = jaxicl.load(args.model)
    task = get_task(args.task)
    sets = []
    for seed, perm in task.runs:
        p = build_prompts(task, lm.tokenizer, seed=seed, perm=perm, k=32, n_eval=1, max_len=lm.config.max_positions)
        sets.append([list(s) for s in p.ft_sequences[: args.demos]])
    device = jax.devices()[0]
    print(f"{args.model} on {device.device_kind} ({jax.default_backend()}), {task.name}: {len(sets)} sets "
          f"x {args.demos} demonstrations, one step each")
    print("| method | one by one s | finetune_many s | speed-up | max |Δ loss| |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        options = FinetuneOptions.for_task(task, method)
        one_by_one = lambda: [finetune(lm.params, lm.config, s, options) for s in sets]  # noqa: E731
        together = lambda: finetune_many(lm.params, lm.config, sets, options)  # noqa: E731
        one_by_one(), together()  # compile every length bucket of both
        t_one, ones = timed(one_by_one)
        t_many, many = timed(together)
        diff = max(float(np.abs(a.losses - b.losses).max()) for a, b in zip(ones, many))
        print(f"| {method} | {t_one:.1f} | {t_many:.1f} | {t_one / t_many:.2f}× | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
