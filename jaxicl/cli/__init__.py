"""The `jaxicl` command: one module per subcommand, each with `add(subparsers)` and `main(args)`.

    probs    label-word probabilities of a model for one prompt
    eval     zero-shot and ICL accuracy on a task
    run      the paper's protocol over a grid of cells, resumable
    tune     learning-rate selection, resumable
    study    the protocol on several models and their claims side by side
    ablate   LCGD against GD on SimAM_Δ, one finetuning factor changed at a time
    models   the registry names and supported families
    report   tables and figures of a run directory
"""

from __future__ import annotations

import argparse
import sys

from jaxicl.cli import ablate, evaluate, models, probs, report, run, study, tune
from jaxicl.cli.args import default_compile_cache  # noqa: F401  (part of the command's Python face)
from jaxicl.cli.probs import label_logprobs  # noqa: F401
from jaxicl.errors import JaxiclError

SUBCOMMANDS = (probs, evaluate, run, tune, study, ablate, models, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxicl", description="In-context learning vs gradient descent inside "
                                     "real language models.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed, e.g. for the line that resumes an interrupted run
    try:
        code = args.func(args)
    except JaxiclError as e:
        print(f"jaxicl: error: {e}", file=sys.stderr)
        return 2
    return code or 0
