"""`jaxicl run`: the paper's protocol over a grid of cells, resumable."""

from __future__ import annotations

import argparse
import shlex
import sys

from jaxicl.cli.args import (
    add_data,
    add_finetuning,
    add_grid,
    add_model,
    add_run_dir,
    csv,
    enable_compile_cache,
    pairs,
)  # fmt: skip
from jaxicl.data.tasks import get_task
from jaxicl.errors import InputError
from jaxicl.runner.checkpoints import parse_checkpoints, run_checkpoints
from jaxicl.runner.execute import RunInterrupted, run
from jaxicl.runner.plan import RunConfig, parse_only
from jaxicl.runner.tune import rates_for
from jaxicl.runtime import distributed


def config_of(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe."""
    runs = None
    if args.seeds:
        seeds = csv(args.seeds, int)
        perms = csv(args.perms, int) if args.perms else tuple(range(len(seeds)))
        if len(perms) != len(seeds):
            raise InputError(f"--perms has {len(perms)} values for {len(seeds)} seeds")
        runs = tuple(zip(seeds, perms))
    tasks = csv(args.tasks)
    rates = rates_for(args.lrs, [get_task(t).name for t in tasks], args.out)
    return RunConfig(
        model=args.model, tasks=tasks, runs=runs, n_runs=args.n_runs, methods=csv(args.methods),
        variants=csv(args.variants), k=args.k, n_eval=args.n_eval, max_len=args.max_len,
        batch_size=args.batch_size, data_dir=args.data_dir, loss_tokens=args.loss_tokens,
        lrs=None if rates is None else tuple(sorted(rates.items())),
        lrs_source=None if rates is None else ("selected" if args.lrs == "selected" else str(args.lrs)),
        token_wise=args.token_wise, controls=csv(args.controls) or (),
        cross_task=pairs(args.cross_task), order_permutations=args.order_permutations,
        checkpoints=None if args.checkpoints is None else parse_checkpoints(args.checkpoints),
        stability_check=args.stability_check, analyses=csv(args.analyses) or (), cie_queries=args.cie_queries,
        lcgd_readout=args.lcgd_readout, layer_reduction=args.layer_reduction, finetune_dtype=args.finetune_dtype,
        stepped=args.stepped,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int | None:
    distributed.initialize()  # joins the other processes of a multi-host run; else a no-op
    enable_compile_cache(args.compile_cache)
    config = config_of(args)
    only = parse_only(args.only)
    try:
        if config.checkpoints:  # one run directory per revision
            counts = run_checkpoints(config, args.out, force=args.force, only=only, batch_runs=args.batch_runs)
        else:
            counts = run(config, args.out, force=args.force, only=only, profile_dir=args.profile,
                         batch_runs=args.batch_runs)  # fmt: skip
    except RunInterrupted as stop:
        lost = f"lost the {len(stop.lost)} cells in progress ({'; '.join(stop.lost)})" if stop.lost else "lost nothing"
        print(f"jaxicl: interrupted after {stop.done} cells this run; {lost}; resume with: "
              f"jaxicl {shlex.join(args.argv)}", file=sys.stderr)  # fmt: skip
        return 130  # the shell's code for a run stopped by SIGINT
    print(f"{args.out}: {counts['done']} cells run, {counts['skipped']} already done, "
          f"{counts['recomputed']} corrupt cell files recomputed, {counts['deferred']} left for a run without --only")  # fmt: skip
    return None


def add(sub) -> None:
    parser = sub.add_parser("run", help="the paper's protocol over a grid of cells, resumable")
    add_model(parser)
    add_grid(parser)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: each task's paper seeds)")
    parser.add_argument("--perms", default=None, help="permutation index per seed (default: 0, 1, 2, ...)")
    parser.add_argument("--methods", default="gd,lcgd")
    parser.add_argument("--variants", default="trained", help="trained,trained-embeddings,no-training,no-training-keep-norms")
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--max-len", type=int, default=None)
    add_data(parser)
    add_run_dir(parser, out_help="the run directory",
                batch_runs_help="run each (task, variant)'s finetuning runs, then their zero-shot evaluations, "
                "together under vmap (auto: on an accelerator only)")  # fmt: skip
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                        help="run only this slice of the grid now, e.g. method=gd or task=sst2,mr (repeatable; KEY: "
                        "task, variant, method, seed, perm); rerun without it for the rest")
    add_finetuning(parser)
    parser.add_argument("--lrs", default="paper", metavar="paper|selected|FILE.json",
                        help="learning rates: the paper's, RUN_DIR/lr_selection.json from `jaxicl tune`, or a file")
    parser.add_argument("--controls", default=None, metavar="C1,C2",
                        help="task-specificity controls, GD only: cross-task, shuffled-gd, shuffled-icl "
                        "(cells under RUN_DIR/controls/, never in Tables 1-2)")
    parser.add_argument("--cross-task", default=None, metavar="A:B,...",
                        help="the cross-task control's partner of each task (default: the next task of the grid)")
    parser.add_argument("--checkpoints", default=None, metavar="REV1,REV2|@FILE",
                        help="run the grid on each revision of --model (hf:org/name@REV, or DIR/REV for a local "
                        "directory), e.g. Pythia's step0,step1000,...; one run directory per revision")
    parser.add_argument("--order-permutations", type=int, nargs="?", const=8, default=0, metavar="P",
                        help="order sensitivity (Shen et al.): ICL and GD/LCGD under P >= 2 orders of each run's "
                        "demonstrations (the flag alone: 8; default 0: off)")
    parser.add_argument("--token-wise", action="store_true",
                        help="also record the attention output at every query token and add IA2's token-wise "
                        "SimAOU (larger evaluation files)")
    parser.add_argument("--stability-check", action="store_true",
                        help="finetune each cell a second time with the demonstrations padded to another length (the "
                        "same maths, other float rounding) and record how far its metrics move")
    parser.add_argument("--analyses", default=None, metavar="A1,A2",
                        help="per-run analyses against GD/LCGD: task-vectors (Hendel et al.), function-vectors (Todd "
                        "et al.); cells under RUN_DIR/analyses/")
    parser.add_argument("--cie-queries", type=int, default=32, metavar="N",
                        help="function vectors: average each head's causal indirect effect over the first N eval queries")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="write a JAX profiler trace of the first group run (open with TensorBoard or Perfetto)")
    parser.set_defaults(func=main)
