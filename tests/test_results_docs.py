"""The numbers quoted in README.md and docs/results/README.md are the committed report's.

The reproduction is too slow to rerun in CI, so these tests keep the prose honest: when the
report under docs/results/report is regenerated, a stale table in either README fails here.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from jaxicl.report import METRIC_LABELS, PAPER_TASKS, TABLE_METRICS, VARIANT_LABELS

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "results" / "report"
METRIC_BY_LABEL = {METRIC_LABELS[metric]: metric for metric in TABLE_METRICS}
VARIANT_BY_LABEL = {label: variant for variant, label in VARIANT_LABELS.items()}


def _report_means(name: str, row_column: str) -> dict[tuple[str, str, str], float]:
    """(metric, method or variant, task) -> mean, from one of the report's CSV tables."""
    with open(REPORT / name, newline="") as f:
        return {(row["metric"], row[row_column], row["task"]): float(row["mean"]) for row in csv.DictReader(f)}


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """Markdown table rows (cells stripped) whose first cell is `first_cell`."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.strip().startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def _ours(cell: str) -> float:
    """Our number in a cell like '**0.39** (0.11)' or '0.03'."""
    return float(re.match(r"\**(-?[0-9.]+)", cell).group(1))


def _readmes() -> list[str]:
    return [(ROOT / "README.md").read_text(), (ROOT / "docs" / "results" / "README.md").read_text()]


def test_table2_averages_match_report():
    means = _report_means("table2.csv", "method")
    checked = 0
    for text in _readmes():
        for label, metric in METRIC_BY_LABEL.items():
            for cells in _table_rows(text, label):
                if len(cells) != 5:
                    continue
                gd, lcgd = float(cells[1]), float(cells[2])
                assert round(means[(metric, "gd", "average")], 3) == gd, (label, cells)
                assert round(means[(metric, "lcgd", "average")], 3) == lcgd, (label, cells)
                checked += 1
    assert checked == 8, "each README has a four-row Table 2 average table"


def test_table1_matches_report():
    means = _report_means("table1.csv", "variant")
    checked = 0
    for text in _readmes():
        for label in ("SimAOU", "SimAM_Δ"):
            for cells in _table_rows(text, label):
                if len(cells) != 2 + len(PAPER_TASKS) or cells[1] not in VARIANT_BY_LABEL:
                    continue
                for task, cell in zip(PAPER_TASKS, cells[2:]):
                    expected = round(means[(METRIC_BY_LABEL[label], VARIANT_BY_LABEL[cells[1]], task)], 2)
                    assert _ours(cell) == expected, (label, cells[1], task, cell, expected)
                checked += 1
    assert checked == 12, "each README has a six-row Table 1"
