"""`jaxicl tune`: select each task's learning rate (Dai et al.'s grid search), resumable."""

from __future__ import annotations

import argparse
import shlex
import sys

from jaxicl.cli.args import add_data, add_grid, add_model, add_run_dir, csv, enable_compile_cache
from jaxicl.runner.plan import METHODS
from jaxicl.runner.tune import DAI_GRID, SEARCHES, TuneConfig, tune


def main(args: argparse.Namespace) -> int | None:
    enable_compile_cache(args.compile_cache)
    config = TuneConfig(
        model=args.model, tasks=csv(args.tasks), n_runs=args.n_runs, method=args.method,
        grid=csv(args.grid, float) if args.grid else DAI_GRID, search=args.search, select_on=args.select_on,
        selection_size=args.selection_size, k=args.k, batch_size=args.batch_size, data_dir=args.data_dir,
        loss_tokens=args.loss_tokens,
    )  # fmt: skip
    try:
        result = tune(config, args.out, batch_runs=args.batch_runs, force=args.force)
    except KeyboardInterrupt:
        print(f"jaxicl: tune interrupted; finished rates are kept; resume with: jaxicl {shlex.join(args.argv)}",
              file=sys.stderr)  # fmt: skip
        return 130
    for name, entry in result["tasks"].items():
        chosen = entry["chosen"]
        print(f"{name}: lr {chosen['lr']:g} (paper {entry['paper_lr']}), selection accuracy {chosen['accuracy']:.3f}, "
              f"zero-shot {chosen['zero_shot']:.3f}" + ("" if chosen["finetuning_helps"] else
              " -- finetuning does not help here"))  # fmt: skip
    print(f"{args.out}/lr_selection.json: {len(result['tasks'])} tasks in {result['seconds']:.0f} s "
          f"({result['engine']}, {config.search} search, selected on the {config.select_on} set)")  # fmt: skip
    return None


def add(sub) -> None:
    parser = sub.add_parser("tune", help="select each task's learning rate (Dai et al.'s grid search), resumable")
    add_model(parser)
    add_grid(parser)
    parser.add_argument("--method", choices=METHODS, default="gd", help="the paper used GD's rate for both")
    parser.add_argument("--grid", default=None, help="comma-separated rates (default: Dai's {1..9} x {1e-1..1e-4})")
    parser.add_argument("--search", choices=SEARCHES, default="full",
                        help="coarse-to-fine: each decade's smallest rate, then every rate of the best decade; "
                        "coarse-to-unimodal: then a ternary search of that decade (assumes one peak; ~5 of its 9 rates)")  # fmt: skip
    parser.add_argument("--select-on", choices=("selection", "eval"), default="selection",
                        help="selection: a train-split set disjoint from demonstrations and eval; eval: Dai's choice")  # fmt: skip
    parser.add_argument("--selection-size", type=int, default=200)
    add_data(parser)
    add_run_dir(parser, out_help="the run directory (lr_selection.json goes there)",
                batch_runs_help="finetune every (rate, run) together under vmap and score them together (auto: accelerator)")  # fmt: skip
    parser.set_defaults(func=main)
