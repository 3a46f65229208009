"""The paper's full protocol on one model, then its report (Tables 1–2, accuracies, Fig. 2–4).

Six tasks × each task's three (seed, perm) runs × {GD, LCGD} × the model variants {trained,
trained-embeddings, no-training}, 32 demonstrations, the paper's learning rates (docs/method.md#tasks-and-prompts).
The run directory is resumable: rerunning the same command skips finished cells, and an interrupt
loses at most the cell in progress. Cells run variant-major, so the trained model's Table 2
is complete before the untrained baselines of Table 1 start.

    python experiments/reproduce_paper.py                       # gemma3-270m, n-eval 200 on CPU
    python experiments/reproduce_paper.py --variants trained    # Table 2 only (the budgeted run)
    python experiments/reproduce_paper.py --only method=gd      # GD cells first (Table 1 is GD only)
    python experiments/reproduce_paper.py --model hf:KoboldAI/fairseq-dense-1.3B --out runs/paper-1.3b

Defaults: `gemma3-270m`; `--n-eval 200` and 16 query rows per batch on a CPU, the full eval sets
(at most 2000 examples, as the authors) and `--batch-size auto` on an accelerator, where
`--batch-runs auto` also turns the batched engine on; report under RUN_DIR/report unless
`--report DIR`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxicl.data.tasks import PAPER_TASKS
from jaxicl.errors import JaxiclError

PAPER_VARIANTS = ("trained", "trained-embeddings", "no-training")


def default_n_eval() -> int | None:
    """200 examples per task on a CPU (hours, not days); the full eval sets on an accelerator."""
    import jax

    return 200 if jax.default_backend() == "cpu" else None


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS))
    parser.add_argument("--variants", default=",".join(PAPER_VARIANTS),
                        help="any of trained,trained-embeddings,no-training,no-training-keep-norms")
    parser.add_argument("--n-eval", default=None,
                        help="examples per task, or 'all' (default: 200 on CPU, all on an accelerator)")
    parser.add_argument("--n-runs", type=int, default=None, help="only the first N of each task's three runs")
    parser.add_argument("--data-dir", default=None, help="<task>/<split>.jsonl files (else $JAXICL_DATA_DIR, else the Hub)")
    parser.add_argument("--out", default="runs/reproduce", help="the run directory (resumable)")
    parser.add_argument("--report", default=None, help="where to write the report (default RUN_DIR/report)")
    parser.add_argument("--compile-cache", default=None, help="persistent XLA compilation cache directory")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                           help="run only this slice of the grid now, e.g. method=gd or task=sst2,mr (repeatable; KEY: task, variant, method, seed, perm); rerun without it for the rest")
    parser.add_argument("--force", action="store_true", help="reuse a run directory written by another config")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--batch-runs", default="auto", choices=("auto", "on", "off"),
                        help="run each task's finetuning runs, and their zero-shot evaluations, together under vmap "
                             "(auto: on an accelerator)")
    parser.add_argument("--batch-size", default=None,
                        help="query rows per batch, or 'auto' (default: 16 on CPU, auto on an accelerator)")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace):
    from jaxicl.runner import RunConfig

    if args.n_eval is None:
        n_eval = default_n_eval()
    elif args.n_eval == "all":
        n_eval = None
    else:
        try:
            n_eval = int(args.n_eval)
        except ValueError:
            raise JaxiclError(f"--n-eval must be a positive integer or 'all', got {args.n_eval!r}") from None
        if n_eval < 1:
            raise JaxiclError(f"--n-eval must be a positive integer or 'all', got {args.n_eval!r}")
    return RunConfig(
        model=args.model, tasks=_csv(args.tasks), variants=_csv(args.variants), n_eval=n_eval,
        n_runs=args.n_runs, data_dir=args.data_dir, batch_size=_batch_size(args.batch_size),
    )  # fmt: skip


def _batch_size(text: str | None) -> int | str:
    """16 query rows on a CPU (the committed run's setting), "auto" on an accelerator."""
    import jax

    if text is None:
        return 16 if jax.default_backend() == "cpu" else "auto"
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise JaxiclError(f"--batch-size must be a positive integer or 'auto', got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from jaxicl.report import write_report
        from jaxicl.runner import parse_only, run
        from jaxicl.runtime import compile_cache, distributed

        distributed.initialize()  # several hosts (tpu/run.sh): one process each; before any JAX call
        if args.compile_cache:
            compile_cache.enable(args.compile_cache)
        config = run_config(args)
        t0 = time.perf_counter()
        counts = run(config, args.out, force=args.force, only=parse_only(args.only), quiet=args.quiet,
                     batch_runs=args.batch_runs)
        print(f"{args.out}: {counts['done']} cells run, {counts['skipped']} already done, "
              f"{counts['recomputed']} corrupt cell files recomputed, {counts['deferred']} left for a run "
              f"without --only, in {time.perf_counter() - t0:.0f} s")
        if distributed.is_writer():  # the run directory is process 0's
            print(f"wrote {write_report(args.out, args.report)}")
    except JaxiclError as e:
        print(f"reproduce_paper: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
