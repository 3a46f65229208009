"""The report's uncertainty section from a report's cells.csv alone, for a run whose cell files are
not at hand (e.g. the committed reproduction: docs/results/report/cells.csv).

    python experiments/intervals_from_cells_csv.py docs/results/report/cells.csv [--out intervals.md]

cells.csv holds one scalar per cell and metric, no per-example values, so every interval here
resamples runs only (the report says so); a run directory whose cells keep per-example values
gets the full hierarchical bootstrap from `jaxicl report`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxicl.report import Cell, method_differences, order_tasks, table1_stats, table2_stats  # noqa: E402
from jaxicl.report.cells import CELL_METRICS  # noqa: E402
from jaxicl.report.names import ACCURACY_KEYS  # noqa: E402
from jaxicl.report.tables import uncertainty_section  # noqa: E402


def _num(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def cells_from_csv(path: Path) -> list[Cell]:
    """Cells with the scalars of cells.csv (each metric's per-layer list is its one layer mean)."""
    cells = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            scalar = {m: _num(row[m]) for m in CELL_METRICS if m in row and _num(row[m]) is not None}
            scalar["rec2ftp"] = _num(row.get("rec2ftp"))
            cells.append(Cell(
                path=row["path"], task=row["task"], variant=row["variant"], method=row["method"],
                seed=int(row["seed"]), perm=int(row["perm"]), model=None, n_eval=None,
                k_icl=int(row["k_icl"]) if row.get("k_icl") else None,
                accuracy={k: float(row[k]) for k in ACCURACY_KEYS},
                per_layer={m: (v,) for m, v in scalar.items() if m != "rec2ftp" and v is not None},
                scalar=scalar, alpha=_num(row.get("alpha")), alpha_per_layer=None, grad_norms=None,
            ))  # fmt: skip
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells_csv", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    cells = cells_from_csv(args.cells_csv)
    tasks = order_tasks(c.task for c in cells)
    lines = uncertainty_section(cells, tasks, table2_stats(cells, tasks), table1_stats(cells, tasks),
                                method_differences(cells, tasks))  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
