"""`jaxicl report`: tables and figures of a run directory (it only reads the directory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxicl.errors import JaxiclError
from jaxicl.runner.layout import CELLS, REVISIONS_FILE


def main(args: argparse.Namespace) -> None:
    from jaxicl.report import write_report  # matplotlib: only for this subcommand

    run_dir = Path(args.run_dir)
    if not (run_dir / CELLS).is_dir() and not (run_dir / REVISIONS_FILE).is_file():
        raise JaxiclError(f"{args.run_dir} is not a run directory (no cells/ or revisions.json in it); "
                          "create one with `jaxicl run`")  # fmt: skip
    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")


def add(sub) -> None:
    parser = sub.add_parser("report", help="tables and plots of a run directory")
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="default: RUN_DIR/report")
    parser.set_defaults(func=main)
