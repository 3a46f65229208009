"""The cross-model summary `jaxicl study` writes last: README.md (the claims table, the Table 2
averages, a plain-language reading and each model's time), models.png and claims.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.report.fmt import md_table, write_csv
from jaxicl.report.models import claims_rows, claims_table, plot_table2, reading, table2_averages
from jaxicl.report.names import METHOD_LABELS, METHODS, METRIC_LABELS, TABLE_METRICS


def write_summary(models: Mapping[str, list], failed: Mapping[str, str], status: Mapping[str, dict],
                  dest: Path) -> Path:
    """models: name → its cells (jaxicl.report.cells.load_cells); failed: name → why it has none."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = ["# The paper's claims on several models", "",
             "Each entry: the verdict, the average over tasks of the task means (LCGD − GD, trained − untrained, "
             "or accuracy gain) with its 95% hierarchical-bootstrap interval, and the tasks where the task mean "
             "is above 0. holds: the interval is above 0; does not: below 0; mixed: it contains 0.", ""]  # fmt: skip
    lines += claims_table(models) + ["", "## Reading", ""] + reading(models, failed)
    lines += ["", "## Table 2 averages (trained model), 95% intervals", ""] + _averages_table(models)
    lines += ["", "![Table 2 averages per model](models.png)", "", "## Time (seconds, this machine)", ""]
    lines += _time_table(status)
    write_bytes_atomic(dest / "README.md", ("\n".join(lines) + "\n").encode())
    write_csv(dest / "claims.csv", ["model", "claim", "verdict", "mean", "ci_low", "ci_high", "tasks_holding",
                                    "tasks"], claims_rows(models))  # fmt: skip
    if models:
        plot_table2(models, dest / "models.png")
    return dest / "README.md"


def _averages_table(models: Mapping[str, list]) -> list[str]:
    averages = {name: table2_averages(cells) for name, cells in models.items()}
    rows = []
    for metric in TABLE_METRICS:
        for method in METHODS:
            rows.append([METRIC_LABELS[metric], METHOD_LABELS[method],
                         *(("—" if (a := averages[m][(metric, method)]) is None else
                            f"{a[0]:.3f} [{a[1][0]:.3f}, {a[1][1]:.3f}]") for m in models)])  # fmt: skip
    return md_table(["metric", "method", *models], rows)


def _time_table(status: Mapping[str, dict]) -> list[str]:
    stages = ("load", "tune", "trained", "untrained", "report")
    rows = [[name, s.get("status", "?"), *(f"{s.get('seconds', {}).get(k, 0.0):.0f}" for k in stages),
             _adopted(s.get("adopted") or {}),
             "; ".join(f"{t}: {why}" for t, why in s.get("skipped_tasks", {}).items()) or "—"]
            for name, s in status.items()]  # fmt: skip
    return md_table(["model", "status", *stages, "adopted (not timed here)", "skipped tasks"], rows)


def _adopted(adopted: Mapping) -> str:
    """What the study took from earlier runs instead of computing it, so its seconds are not above."""
    parts = (["the selection"] if adopted.get("selection") else []) + (
        [f"{adopted['cells']} cells"] if adopted.get("cells") else [])
    return ", ".join(parts) or "—"

