"""The batched engine for one (task, variant): its finetuning runs stepped together under
`jax.vmap`, then the zero-shot evaluations of the finetuned models as one vmapped program.

It runs before the groups, which then find every result saved and reuse it; cells equal the
one-by-one run's up to float rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax

from jaxicl.engine import transforms
from jaxicl.engine.finetune import finetune_cached, finetune_many_cached
from jaxicl.engine.scoring import evaluate_many
from jaxicl.runner.layout import EVALS
from jaxicl.runner.plan import Cell, RunConfig, finetune_options, run_prompts
from jaxicl.runner.rundir import checkpoint_dir, eval_arrays, finetune_base, group_relpath, load_eval, save_npz_atomic


def run_together(lm, config: RunConfig, run_dir: Path, task, variant: str, cells: Sequence[Cell]) -> dict:
    """The batched engine for one (task, variant), before its groups run (`run_group` then finds
    every result saved and reuses it):

    1. finetuning: per method, the runs step together under `jax.vmap` (`finetune_many_cached`),
       on an accelerator each run's steps as one `lax.scan` padded to its longest demonstration,
       on a CPU one dispatch per step, each padded to its own bucket (on the 2-core CPU, one
       task's batched grid took 1.84x the one-by-one time with the scan, 1.20x without:
       experiments/bench_grid.py, docs/benchmarks.md); the untrained variants' runs start from their own
       re-initialisations (stacked params), the trained variant's from the one model;
    2. the zero-shot evaluation of every finetuned model ("ftzs") as one vmapped program per batch
       of queries (`scoring.evaluate_many`; one process only: several use `evaluate_across_hosts`).

    Returns {"runs": finetuning runs computed, "evaluations": ftzs evaluations computed}."""
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
            [checkpoint_dir(run_dir, c) for c in batch], params, lm.config, [p.ft_sequences for p in ps],
            finetune_options(config, task, method), bases=[finetune_base(config, c) for c in batch],
            label_starts_sets=[p.ft_label_starts for p in ps], scan=scan,
        )  # fmt: skip
        done["runs"] += sum(computed)
    if jax.process_count() > 1 or len(mine) < 2:
        return done
    options = config.eval_options()
    todo = [c for c in mine if load_eval(run_dir / EVALS / group_relpath(c) / f"{c.method}-ft.npz",
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
                checkpoint_dir(run_dir, c), starts[c.seed], lm.config, prompts[c.group].ft_sequences,
                finetune_options(config, task, c.method), label_starts=prompts[c.group].ft_label_starts,
                base=finetune_base(config, c),
            )[0].params
            for c in together
        ]  # fmt: skip
        results = evaluate_many(finetuned, lm.config, prefix, queries, candidates, options)
        for c, result in zip(together, results, strict=True):
            save_npz_atomic(run_dir / EVALS / group_relpath(c) / f"{c.method}-ft.npz", eval_arrays(result))
        done["evaluations"] += len(together)
    return done
