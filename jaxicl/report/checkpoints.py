"""ICL vs GD across training checkpoints (`jaxicl run --checkpoints`): each metric against the
training step, GD and LCGD, from each revision's own run directory (RUN_DIR/revisions/<REV>/)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxicl.report.cells import Cell, Problem, load_cells
from jaxicl.report.figures import METHOD_COLORS, _save
from jaxicl.report.fmt import MISSING, fmt_num, md_table, write_csv
from jaxicl.report.names import METHOD_LABELS, METHODS, METRIC_LABELS
from jaxicl.report.stats import mean_std, order_tasks, per_run, select
from jaxicl.runner.layout import REVISIONS, REVISIONS_FILE

CURVE_METRICS = ("simaou", "simam_delta")  # per method
CURVE_ACCURACIES = ("icl", "zs")  # per revision


def load_revisions(run_dir: Path) -> tuple[list[tuple[str, int | None, list[Cell]]], list[Problem]]:
    """(revision, training step, its cells) in the run's order, and the files left out."""
    path = run_dir / REVISIONS_FILE
    if not path.exists():
        return [], []
    try:
        index = json.loads(path.read_text())["revisions"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [], [Problem("revisions.json", f"unreadable, left out: {e}")]
    out, problems = [], []
    for rev, entry in index.items():
        cells, found = load_cells(run_dir / REVISIONS / rev)
        problems += [Problem(f"revisions/{rev}/{p.path}", p.reason) for p in found]
        out.append((rev, entry.get("step"), cells))
    return out, problems


def revision_values(cells: Sequence[Cell], variant: str = "trained") -> dict[str, float | None]:
    """One revision's numbers: each metric per method and each accuracy, as the mean over tasks of
    the task means over runs (the tables' Average)."""
    mine = select(cells, variant=variant)
    tasks = order_tasks({c.task for c in mine})
    out: dict[str, float | None] = {}

    def average(per_task: list[float | None]) -> float | None:
        values = [v for v in per_task if v is not None]
        return float(np.mean(values)) if values else None

    for metric in CURVE_METRICS:
        for method in METHODS:
            out[f"{metric}_{method}"] = average([
                s.mean if (s := mean_std(v for c in select(mine, task=t, method=method) if (v := c.value(metric)) is not None))
                else None for t in tasks])  # fmt: skip
    for key in CURVE_ACCURACIES:
        out[key] = average([s.mean if (s := mean_std(per_run(select(mine, task=t), lambda c, k=key: c.accuracy[k])))
                            else None for t in tasks])  # fmt: skip
    return out


def checkpoints_section(revisions: Sequence[tuple[str, int | None, list[Cell]]], out: Path, plots: bool) -> list[str]:
    lines = ["## Across training checkpoints (`jaxicl run --checkpoints`)", ""]
    if not revisions:
        return lines + ["Not a checkpoints run."]
    columns = [f"{m}_{method}" for m in CURVE_METRICS for method in METHODS] + list(CURVE_ACCURACIES)
    labels = {f"{m}_{method}": f"{METRIC_LABELS[m]} {METHOD_LABELS[method]}" for m in CURVE_METRICS for method in METHODS}
    labels |= {"icl": "ICL acc", "zs": "ZS acc"}
    values = [(rev, step, revision_values(cells), len(cells)) for rev, step, cells in revisions]
    rows = [[rev, MISSING if step is None else str(step), str(n), *(fmt_num(v[c], 3) for c in columns)]
            for rev, step, v, n in values]  # fmt: skip
    lines += md_table(["revision", "step", "cells", *(labels[c] for c in columns)], rows)
    lines += ["", "Trained variant of each revision; each value is the mean over tasks of the task means over runs."]
    write_csv(out / "checkpoints.csv", ["revision", "step", "cells", *columns],
              [[rev, step, n, *(v[c] for c in columns)] for rev, step, v, n in values])
    if plots:
        plot_checkpoints(values, out / "checkpoints.png")
        lines += ["", "![metrics across training](checkpoints.png)"]
    return lines + ["", "- [checkpoints.csv](checkpoints.csv)"]


def plot_checkpoints(values: Sequence[tuple[str, int | None, Mapping[str, float | None], int]], path: Path) -> Path:
    """SimAOU and SimAM_Δ (GD, LCGD) and the ICL / zero-shot accuracies against the training step
    (the revision's position when a name carries no step)."""
    steps = [step if step is not None else i for i, (_, step, _, _) in enumerate(values)]
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, CURVE_METRICS):
        for method in METHODS:
            ys = [v[f"{metric}_{method}"] for _, _, v, _ in values]
            ax.plot(steps, [np.nan if y is None else y for y in ys], "o-", color=METHOD_COLORS[method],
                    label=METHOD_LABELS[method])  # fmt: skip
        ax.set_title(METRIC_LABELS[metric])
        ax.legend(fontsize=7)
    for key, style in (("icl", "o-"), ("zs", "s--")):
        axes[2].plot(steps, [np.nan if (y := v[key]) is None else y for _, _, v, _ in values], style,
                     label={"icl": "ICL", "zs": "zero-shot"}[key])  # fmt: skip
    axes[2].set_title("accuracy")
    axes[2].legend(fontsize=7)
    positive = [s for s in steps if s > 0]
    for ax in axes:
        ax.set_xlabel("training step")
        if positive and max(positive) > 100 * min(positive):  # Pythia: step0, 1, 2, 4, ..., 143000
            ax.set_xscale("symlog", linthresh=min(positive))
    fig.tight_layout()
    return _save(fig, path)
