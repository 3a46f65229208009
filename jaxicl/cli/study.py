"""`jaxicl study`: the paper's protocol on several models, resumable, and the claims side by side."""

from __future__ import annotations

import argparse
import shlex
import sys

from jaxicl.cli.args import add_data, add_run_dir, csv, enable_compile_cache
from jaxicl.data.tasks import PAPER_TASKS
from jaxicl.runner.tune import DAI_GRID, SEARCHES
from jaxicl.studies.models import StudyConfig, study


def main(args: argparse.Namespace) -> int | None:
    enable_compile_cache(args.compile_cache)
    config = StudyConfig(
        models=csv(args.models), tasks=csv(args.tasks), n_runs=args.n_runs, search=args.search,
        grid=csv(args.grid, float) if args.grid else DAI_GRID, k=args.k, n_eval=args.n_eval,
        batch_size=args.batch_size, data_dir=args.data_dir,
    )  # fmt: skip
    try:
        status = study(config, args.out, adopt=args.adopt, publish=args.publish, batch_runs=args.batch_runs,
                       force=args.force)
    except KeyboardInterrupt:
        print(f"jaxicl: study interrupted; finished work is kept; resume with: jaxicl {shlex.join(args.argv)}",
              file=sys.stderr)  # fmt: skip
        return 130
    for model, record in status.items():
        skipped = record.get("skipped_tasks") or {}
        print(f"{model}: {record['status']}" + (f" ({record['reason']})" if "reason" in record else "")
              + (f"; tasks skipped: {', '.join(skipped)}" if skipped else ""))  # fmt: skip
    print(f"summary: {args.publish or args.out + '/summary'}/README.md")
    return None


def add(sub) -> None:
    parser = sub.add_parser("study", help="the protocol on several models (tune, grid, report) and their claims side by side")
    parser.add_argument("--models", required=True, help="comma-separated registry names, paths or hf:org/name")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS))
    parser.add_argument("--n-runs", type=int, default=None, help="only the first N (seed, perm) runs of each task")
    parser.add_argument("--search", choices=SEARCHES, default="coarse-to-unimodal", help="the tune's search")
    parser.add_argument("--grid", default=None, help="comma-separated rates (default: Dai's {1..9} x {1e-1..1e-4})")
    parser.add_argument("--n-eval", type=int, default=200)
    add_data(parser)
    add_run_dir(parser, out_help="the study directory: one resumable directory per model",
                batch_runs_help="the batched engine for the tunes and grids (auto: on an accelerator only)")
    parser.add_argument("--adopt", action="append", default=[], metavar="RUN_DIR|SELECTION.json",
                        help="reuse an earlier run's cells where model, rate and settings match, or a complete "
                        "lr_selection.json of the same tune config (repeatable)")
    parser.add_argument("--publish", default=None, metavar="DIR",
                        help="write the summary here with each model's selection and report beside it "
                        "(default: OUT/summary, summary only)")
    parser.set_defaults(func=main)
