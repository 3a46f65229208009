"""`jaxicl eval`: zero-shot and ICL accuracy of a model on one task and run."""

from __future__ import annotations

import argparse

from jaxicl.api import load
from jaxicl.cli.args import add_data, add_model, unescape
from jaxicl.engine.scoring import EvalOptions
from jaxicl.io.results import machine, versions, write_json_atomic
from jaxicl.runner import checks
from jaxicl.runner.evaluation import eval_record, run_eval


def main(args: argparse.Namespace) -> None:
    task = check_eval(args)
    separator = unescape(args.separator)
    lm = load(args.model)
    run = run_eval(
        lm, task, seed=args.seed, perm=args.perm, k=args.k, n_eval=args.n_eval, max_len=args.max_len,
        separator=separator, data_dir=args.data_dir,
        options=EvalOptions(batch_size=args.batch_size, probe=args.probe, records=()),
    )  # fmt: skip
    record = eval_record(run, args.model)
    acc = record["accuracy"]
    print(f"{task.name}  model={args.model}  seed={args.seed} perm={args.perm}  k={args.k} (k_icl={run.prompts.k_icl})"
          f"  n_eval={run.prompts.n_eval}")  # fmt: skip
    print(f"zero-shot accuracy: {acc['zs']:.4f}")
    print(f"ICL accuracy:       {acc['icl']:.4f}")
    print("seconds: " + ", ".join(f"{name} {s:.1f}" for name, s in run.seconds.items()))
    if args.out:
        record.update(versions=versions(), machine=machine())
        write_json_atomic(args.out, record)
        print(f"wrote {args.out}")


def check_eval(args: argparse.Namespace):
    """Every argument checked before the model loads; returns the task."""
    task = checks.check_tasks([args.task])[0]
    checks.check_runs([(args.seed, args.perm)], None)
    checks.check_count("--k", args.k, minimum=0, allow_none=False)
    checks.check_count("--n-eval", args.n_eval)
    checks.check_batch_size(args.batch_size)
    checks.check_data([task], args.data_dir, args.k)
    checks.check_model_and_window(args.model, args.max_len)
    return task


def add(sub) -> None:
    parser = sub.add_parser("eval", help="zero-shot and ICL accuracy of a model on a task")
    add_model(parser)
    parser.add_argument("--task", required=True, help="a paper task name or a JSON task spec file")
    parser.add_argument("--seed", type=int, required=True, help="train-shuffle seed of the demonstrations")
    parser.add_argument("--perm", type=int, default=0, help="the paper's permutation index (0: none)")
    parser.add_argument("--n-eval", type=int, default=None, help="evaluate the first N of the eval set")
    parser.add_argument("--max-len", type=int, default=None, help="context window (default: the model's)")
    parser.add_argument("--separator", default="\\n", help="between demonstrations; '<eos>' for the EOS token")
    parser.add_argument("--probe", choices=("label", "last"), default="label")
    add_data(parser, k_help="demonstrations to draw (fewer if the window is full)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.set_defaults(func=main)
