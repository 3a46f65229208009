"""`jaxicl ablate`: LCGD's SimAM_Δ against GD's under one finetuning factor at a time, resumable."""

from __future__ import annotations

import argparse
import shlex
import sys

from jaxicl.cli.args import add_data, add_model, csv, enable_compile_cache
from jaxicl.runner.plan import BATCH_RUNS
from jaxicl.runner.tune import SEARCHES
from jaxicl.studies.ablation import FACTOR_NAMES, LCGD_GRID, AblationConfig, ablate


def main(args: argparse.Namespace) -> int | None:
    enable_compile_cache(args.compile_cache)
    config = AblationConfig(
        gd_rates=args.gd_rates, model=args.model, tasks=csv(args.tasks), n_runs=args.n_runs,
        factors=csv(args.factors), tune_runs=args.tune_runs, search=args.search,
        lcgd_grid=csv(args.lcgd_grid, float) if args.lcgd_grid else LCGD_GRID, k=args.k, n_eval=args.n_eval,
        batch_size=args.batch_size, data_dir=args.data_dir,
    )  # fmt: skip
    try:
        record = ablate(config, args.out, publish=args.publish, batch_runs=args.batch_runs)
    except KeyboardInterrupt:
        print(f"jaxicl: ablation interrupted; finished cells are kept; resume with: jaxicl {shlex.join(args.argv)}",
              file=sys.stderr)  # fmt: skip
        return 130
    for name, seconds in record["seconds"].items():
        print(f"{name}: {seconds:.0f} s")
    print(f"summary: {args.publish or args.out + '/summary'}/README.md")
    return None


def add(sub) -> None:
    parser = sub.add_parser("ablate", help="LCGD against GD on SimAM_Δ, one finetuning factor changed at a time")
    add_model(parser)
    parser.add_argument("--gd-rates", required=True, metavar="FILE.json",
                        help="GD's selected rates (a tune's lr_selection.json or a {task: rate} file)")
    parser.add_argument("--tasks", default="sst2,subj,cb")
    parser.add_argument("--n-runs", type=int, default=None, help="only the first N (seed, perm) runs of each task")
    parser.add_argument("--factors", default=",".join(FACTOR_NAMES), help=f"any of {', '.join(FACTOR_NAMES)}, or rate-x<S> (both methods at S times GD's rate)")
    parser.add_argument("--tune-runs", type=int, default=1, help="runs per task of LCGD's own tune (lcgd-rate)")
    parser.add_argument("--search", choices=SEARCHES, default="coarse-to-unimodal", help="LCGD's tune's search")
    parser.add_argument("--lcgd-grid", default=None, help="LCGD's tune's rates (default: {1..9} x {1e-3..1e-6})")
    parser.add_argument("--n-eval", type=int, default=200)
    add_data(parser)
    parser.add_argument("--out", required=True, help="the ablation directory: one run directory per factor")
    parser.add_argument("--publish", default=None, metavar="DIR", help="write the summary here (default: OUT/summary)")
    parser.add_argument("--batch-runs", default="auto", choices=BATCH_RUNS,
                        help="the batched engine for the tune and the grids (auto: on an accelerator only)")
    parser.add_argument("--compile-cache", default=None, metavar="DIR|off",
                        help="XLA's persistent compilation cache (default: $JAXICL_COMPILE_CACHE, else ~/.cache/jaxicl/xla)")
    parser.set_defaults(func=main)
