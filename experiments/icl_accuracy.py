"""Zero-shot and ICL accuracy of a model on the paper's six tasks (the paper's first seed per task).

Writes one `jaxicl eval` results JSON per task under --out and prints a markdown table.

    python experiments/icl_accuracy.py [--model gemma3-270m] [--n-eval 200] [--out runs/icl_accuracy]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jaxicl
from jaxicl.data import TASKS
from jaxicl.data.tasks import PAPER_TASKS
from jaxicl.engine.scoring import EvalOptions
from jaxicl.io.results import machine, versions, write_json_atomic
from jaxicl.runner.evaluation import eval_record, run_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS))
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/icl_accuracy")
    args = parser.parse_args()

    lm = jaxicl.load(args.model)
    rows = []
    for name in args.tasks.split(","):
        task = TASKS[name]
        seed, perm = task.runs[0]
        t0 = time.perf_counter()
        run = run_eval(lm, task, seed=seed, perm=perm, k=args.k, n_eval=args.n_eval, data_dir=args.data_dir,
                       options=EvalOptions(records=()))
        record = eval_record(run, args.model)
        record.update(versions=versions(), machine=machine())
        write_json_atomic(Path(args.out) / f"{name}.json", record)
        rows.append((name, seed, run.prompts.k_icl, run.prompts.n_eval, record["accuracy"], time.perf_counter() - t0))
        print(f"{name}: zs {record['accuracy']['zs']:.3f} icl {record['accuracy']['icl']:.3f}", flush=True)
    print(f"\n{args.model}, k={args.k}, first paper seed per task (perm 0)\n")
    print("| task | seed | k_icl | n_eval | zero-shot | ICL | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, seed, k_icl, n, acc, secs in rows:
        print(f"| {name} | {seed} | {k_icl} | {n} | {acc['zs']:.3f} | {acc['icl']:.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
