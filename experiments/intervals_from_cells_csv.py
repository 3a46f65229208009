"""The report's uncertainty section from a report's cells.csv alone, for a run whose cell files are
not at hand (e.g. the committed reproduction: docs/results/report/cells.csv).

    python experiments/intervals_from_cells_csv.py docs/results/report/cells.csv [--out intervals.md]

cells.csv holds one scalar per cell and metric, no per-example values, so every interval here
resamples runs only (the report says so); a run directory whose cells keep per-example values
gets the full hierarchical bootstrap from `jaxicl report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxicl.report import method_differences, order_tasks, table1_stats, table2_stats  # noqa: E402
from jaxicl.report.cells import load_cells_csv  # noqa: E402
from jaxicl.report.tables import uncertainty_section  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells_csv", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    cells = load_cells_csv(args.cells_csv)
    tasks = order_tasks(c.task for c in cells)
    lines = uncertainty_section(cells, tasks, table2_stats(cells, tasks), table1_stats(cells, tasks),
                                method_differences(cells, tasks))  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
