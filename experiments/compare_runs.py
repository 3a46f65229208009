"""Two run directories side by side (e.g. the paper's learning rates against `jaxicl tune`'s):
per task and method, the finetuning rate, the accuracies and Table 2's metrics, mean ± std over the
runs both directories have.

    python experiments/compare_runs.py RUN_A RUN_B [--names "paper's rates" "selected rates"] [--variant trained]

RUN_A or RUN_B may also be a report's cells.csv (e.g. docs/results/report/cells.csv, the committed
reproduction at the paper's rates, whose cell files are not in the repository).

Prints markdown; nothing is recomputed (the numbers are the cells' own).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxicl.data.tasks import get_task  # noqa: E402
from jaxicl.report import METRIC_LABELS, TABLE_METRICS, Cell, fmt_stat, load_cells, mean_std, order_tasks, select  # noqa: E402
from jaxicl.report.cells import load_cells_csv  # noqa: E402

ACCURACIES = ("zs", "icl", "ft")


def _rate(source: Path, cell: Cell) -> str:
    """The cell's finetuning rate: from its file, or (a cells.csv, which has no rates) the paper's."""
    if source.is_file():
        return f"{get_task(cell.task).lr:g} (paper's)"
    return f"{json.loads((source / cell.path).read_text())['lr']:g}"


def _cells(source: Path) -> list[Cell]:
    """A run directory's cells, or those of a report's cells.csv (the committed reproduction's)."""
    return load_cells_csv(source) if source.is_file() else load_cells(source)[0]


def compare(run_a: Path, run_b: Path, names: tuple[str, str], variant: str) -> list[str]:
    """Markdown rows: one per (task, method, run directory), on the (seed, perm) runs both have."""
    cells = {name: select(_cells(d), variant=variant) for name, d in zip(names, (run_a, run_b))}
    dirs = dict(zip(names, (run_a, run_b)))
    header = ["task", "method", "rates", "lr", *(f"acc {a}" for a in ACCURACIES), *(METRIC_LABELS[m] for m in TABLE_METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tasks = order_tasks({c.task for c in cells[names[0]]} & {c.task for c in cells[names[1]]})
    for task in tasks:
        for method in ("gd", "lcgd"):
            runs = [{(c.seed, c.perm) for c in select(cells[n], task=task, method=method)} for n in names]
            shared = runs[0] & runs[1]
            for name in names:
                mine = [c for c in select(cells[name], task=task, method=method) if (c.seed, c.perm) in shared]
                if not mine:
                    continue
                row = [task, method.upper(), name, _rate(dirs[name], mine[0])]
                row += [fmt_stat(mean_std(c.accuracy[a] for c in mine), 3) for a in ACCURACIES]
                row += [fmt_stat(mean_std(v for c in mine if (v := c.value(m)) is not None)) for m in TABLE_METRICS]
                lines.append("| " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--names", nargs=2, default=("A", "B"))
    parser.add_argument("--variant", default="trained")
    args = parser.parse_args(argv)
    print("\n".join(compare(args.run_a, args.run_b, tuple(args.names), args.variant)))


if __name__ == "__main__":
    main()
