"""Every plot of the report (Fig. 2–4 style and the learning-rate selection), written as PNGs that
report.md links. PNGs are written without a software/date stamp."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.report.cells import Cell
from jaxicl.report.fmt import fmt_stat, md_table, task_label
from jaxicl.report.names import METHOD_LABELS, METHODS, METRIC_LABELS
from jaxicl.report.paper import PAPER_FIG3
from jaxicl.report.stats import Stat, alpha_stats, layer_curve, order_tasks, select, task_mean_curve

PLOT_METRICS = ("simaou_norm", "simaou", "simam_delta")
DEFAULT_GRAD_TASK = "subj"
METHOD_COLORS = {"gd": "tab:blue", "lcgd": "tab:orange"}


def _save(fig: Figure, path: Path) -> Path:
    """A figure as PNG, written atomically; no version stamp, so the bytes are stable."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return write_bytes_atomic(path, buffer.getvalue())


def _plot_methods(ax: Any, cells: Sequence[Cell], metric: str, tasks: Sequence[str], band: bool) -> None:
    """GD and LCGD per-layer curves on one axis (band = ±1 std over runs, single-task plots only)."""
    for method in METHODS:
        mine = select(cells, method=method)
        if band:
            curve = layer_curve(mine, metric)
            mean, std = (None, None) if curve is None else curve
        else:
            mean, std = task_mean_curve(mine, metric, tasks), None
        if mean is None:
            continue
        x = np.arange(len(mean))
        ax.plot(x, mean, marker=".", color=METHOD_COLORS[method], label=METHOD_LABELS[method])
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=METHOD_COLORS[method], alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_title(METRIC_LABELS[metric])
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)


def plot_per_layer(cells: Sequence[Cell], tasks: Sequence[str], path: Path, title: str, band: bool) -> Path:
    fig = Figure(figsize=(4.2 * len(PLOT_METRICS), 3.6))
    axes = fig.subplots(1, len(PLOT_METRICS))
    for ax, metric in zip(axes, PLOT_METRICS):
        _plot_methods(ax, cells, metric, tasks, band)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_vs_paper(cells: Sequence[Cell], tasks: Sequence[str], path: Path) -> Path:
    """Our Fig. 3 curves against the paper's (docs/method.md#published-numbers) on relative depth, since layer counts differ."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("simaou_norm", "simam_delta")):
        for method in METHODS:
            ours = task_mean_curve(select(cells, method=method), metric, tasks)
            paper = np.asarray(PAPER_FIG3[(metric, method)])
            color = METHOD_COLORS[method]
            ax.plot(np.linspace(0, 1, len(paper)), paper, "--", color=color, label=f"{METHOD_LABELS[method]} paper")
            if ours is not None:
                ax.plot(np.linspace(0, 1, len(ours)), ours, "-", marker=".", color=color,
                        label=f"{METHOD_LABELS[method]} ours")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xlabel("relative depth (layer / (L − 1))")
        ax.legend(fontsize=8)
    fig.suptitle("Per-layer means over tasks and seeds: ours vs paper (1.3B, 24 layers)")
    fig.tight_layout()
    return _save(fig, path)


def plot_alpha(stats: Mapping[str, Stat], path: Path) -> Path:
    tasks = list(stats)
    means = [stats[t].mean for t in tasks]
    errs = [stats[t].std or 0.0 for t in tasks]
    fig = Figure(figsize=(1.0 + 0.9 * len(tasks), 3.4))
    ax = fig.subplots()
    ax.bar(range(len(tasks)), means, yerr=errs, capsize=3, color="tab:green")
    ax.set_xticks(range(len(tasks)), [task_label(t) for t in tasks])
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_ylabel("α = SimAM_Δ(LCGD, GD)")
    ax.set_title("α per task (mean ± std over runs)")
    fig.tight_layout()
    return _save(fig, path)


def plot_grad_norms(gd: Cell | None, lcgd: Cell | None, path: Path) -> Path:
    """Steps × layers heatmaps: GD on a linear colour scale, LCGD on a log scale (as in Fig. 4)."""
    pairs = [(c, m) for c, m in ((gd, "gd"), (lcgd, "lcgd")) if c is not None]
    keys = sorted({k for c, _ in pairs for k in c.grad_norms})
    fig = Figure(figsize=(5.2 * len(pairs), 3.8 * len(keys)))
    axes = np.asarray(fig.subplots(len(keys), len(pairs), squeeze=False))
    for row, key in enumerate(keys):
        for col, (cell, method) in enumerate(pairs):
            ax = axes[row, col]
            data = cell.grad_norms.get(key)
            if data is None:
                ax.set_axis_off()
                continue
            positive = data[data > 0]
            log = method == "lcgd" and positive.size > 0
            norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if log else None
            shown = np.where(data > 0, data, np.nan) if log else data
            image = ax.imshow(shown, aspect="auto", origin="upper", interpolation="nearest", norm=norm, cmap="viridis")
            fig.colorbar(image, ax=ax)
            scale = "log" if log else "linear"
            ax.set_title(f"{METHOD_LABELS[method]} {key} grad norm ({scale}), seed {cell.seed} perm {cell.perm}",
                         fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Per-layer gradient norms, {task_label((gd or lcgd).task)}")
    fig.tight_layout()
    return _save(fig, path)


def grad_norm_cells(cells: Sequence[Cell], task: str | None) -> tuple[str | None, Cell | None, Cell | None]:
    """The task to show (the requested one if it has grad norms, else the first that does) and the
    first run's GD and LCGD cells with grad norms (trained variant)."""
    with_norms = [c for c in select(cells, variant="trained") if c.grad_norms is not None]
    tasks = order_tasks(c.task for c in with_norms)
    if not tasks:
        return None, None, None
    chosen = task if task in tasks else tasks[0]
    pick = {m: next(iter(sorted(select(with_norms, task=chosen, method=m), key=lambda c: c.run)), None)
            for m in METHODS}
    return chosen, pick["gd"], pick["lcgd"]


def plot_lr_selection(selection: Mapping[str, Any], path: Path) -> Path:
    """Selection accuracy against the learning rate, per task; the paper's and the chosen rate marked."""
    tasks = list(selection["tasks"])
    fig = Figure(figsize=(3.2 * len(tasks), 3.0))
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        entry = selection["tasks"][task]
        rates = sorted(entry["rates"], key=float)
        finite = [r for r in rates if entry["rates"][r]["mean_accuracy"] is not None]
        ax.plot([float(r) for r in finite], [entry["rates"][r]["mean_accuracy"] for r in finite], "o-", ms=3,
                label="finetuned (mean over runs)")  # fmt: skip
        diverged = [float(r) for r in rates if entry["rates"][r]["mean_accuracy"] is None]
        if diverged:  # drawn on the zero-shot line, as crosses: excluded from the choice
            ax.plot(diverged, [entry["zero_shot_accuracy"]] * len(diverged), "x", color="tab:red", label="diverged")
        ax.axhline(entry["zero_shot_accuracy"], color="gray", ls=":", label="zero-shot")
        if entry.get("paper_lr"):
            ax.axvline(entry["paper_lr"], color="tab:red", ls="--", label="paper's rate")
        ax.plot([entry["chosen"]["lr"]], [entry["chosen"]["accuracy"]], "*", color="tab:green", ms=12, label="chosen")
        ax.set_xscale("log")
        ax.set_title(task_label(task))
        ax.set_xlabel("learning rate")
    axes[0][0].set_ylabel("selection accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- report.md section


def figures_section(cells: Sequence[Cell], tasks: Sequence[str], out: Path, grad_task: str | None) -> list[str]:
    trained = select(cells, variant="trained")
    lines = ["## Figures", ""]
    if not trained:
        return lines + ["No trained-variant cells to plot."]
    plot_per_layer(trained, tasks, out / "fig3_per_layer.png",
                   "Per-layer, mean over tasks and seeds (trained)", band=False)
    plot_vs_paper(trained, tasks, out / "fig3_vs_paper.png")
    lines += ["### Per layer (Fig. 3)", "", "![per-layer](fig3_per_layer.png)", "",
              "![per-layer vs paper](fig3_vs_paper.png)", ""]
    for t in tasks:
        name = f"per_layer_{t}.png"
        plot_per_layer(select(trained, task=t), [t], out / name, f"{task_label(t)}: mean ± std over runs", band=True)
        lines.append(f"![{t}]({name})")
    alphas = {t: s for t, s in alpha_stats(cells, tasks).items() if s is not None}
    lines += ["", "### α (Fig. 2)", ""]
    if alphas:
        plot_alpha(alphas, out / "fig2_alpha.png")
        lines += md_table(["", *map(task_label, alphas)], [["α", *(fmt_stat(s) for s in alphas.values())]])
        lines += ["", "![alpha](fig2_alpha.png)"]
    else:
        lines.append("No cell carries α (needs GD and LCGD on the same run).")
    chosen, gd, lcgd = grad_norm_cells(cells, grad_task)
    lines += ["", "### Gradient norms (Fig. 4)", ""]
    if chosen is None:
        return lines + ["No cell carries grad_norms."]
    name = f"fig4_grad_norms_{chosen}.png"
    plot_grad_norms(gd, lcgd, out / name)
    return lines + [f"Task {task_label(chosen)}, first run with grad norms; GD linear, LCGD log colour scale.",
                    "", f"![grad norms]({name})"]
