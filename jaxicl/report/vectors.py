"""The report's task-vector and function-vector sections (`jaxicl run --analyses ...`): tables per
task (mean ± std over runs), task_vectors.csv and function_vectors.csv (one number per row), a
figure of accuracy against the patched layer and a heatmap of each head's causal indirect effect."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxicl.report.cells import Cell, Problem
from jaxicl.report.figures import METHOD_COLORS, _save
from jaxicl.report.fmt import fmt_stat, md_table, task_label, variant_label, write_csv
from jaxicl.report.names import METHOD_LABELS, METHODS
from jaxicl.report.stats import mean_std, order_tasks, order_variants
from jaxicl.runner.layout import ANALYSES_DIR
from jaxicl.runner.plan import ANALYSES, ANALYSIS_KEYS

TASK_VECTORS, FUNCTION_VECTORS = ANALYSES


@dataclass(frozen=True)
class VectorCell:
    """One analysis results file (its JSON as written) and its path relative to the run directory."""

    path: str
    kind: str
    record: dict[str, Any]

    def __getattr__(self, key: str) -> Any:
        if key in ("task", "variant", "seed", "perm"):
            return self.record[key]
        raise AttributeError(key)


def load_vector_cells(run_dir: str | Path) -> tuple[list[VectorCell], list[Problem]]:
    """Every complete analysis cell under RUN_DIR/analyses/<analysis>/<task>/<variant>/, and the files left out."""
    run_dir, cells, problems = Path(run_dir), [], []
    for kind in ANALYSES:
        for path in sorted((run_dir / ANALYSES_DIR / kind).glob("*/*/*.json")):
            rel = path.relative_to(run_dir).as_posix()
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                missing = [k for k in ANALYSIS_KEYS if k not in record]
                if missing:
                    raise ValueError(f"missing keys {missing}")
                cells.append(VectorCell(rel, kind, record))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                problems.append(Problem(rel, f"{kind} cell left out: {e}"))
    return cells, problems


def _nanmean(values) -> float | None:
    got = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(got)) if got else None


def _groups(cells: Sequence[VectorCell], kind: str):
    mine = [c for c in cells if c.kind == kind]
    for variant in order_variants({c.variant for c in mine}):
        for task in order_tasks({c.task for c in mine if c.variant == variant}):
            yield variant, task, [c for c in mine if c.variant == variant and c.task == task]


def _task_vector_rows(cells: Sequence[VectorCell], methods: Sequence[str]) -> list[list[str]]:
    rows = []
    for variant, task, runs in _groups(cells, TASK_VECTORS):
        best = [c.record["best_layer"] for c in runs]
        align = [fmt_stat(mean_std(_nanmean(c.record["methods"][m]["alignment"]) for c in runs
                                   if m in c.record["methods"]), 3) for m in methods]  # fmt: skip
        rows.append([task_label(task), variant_label(variant), str(len(runs)),
                     fmt_stat(mean_std(c.record["accuracy"]["zs"] for c in runs)),
                     fmt_stat(mean_std(c.record["accuracy"]["icl"] for c in runs)),
                     fmt_stat(mean_std(c.record["best_accuracy"] for c in runs)),
                     fmt_stat(mean_std(c.record["heldout_accuracy"] for c in runs if "heldout_accuracy" in c.record)),
                     ", ".join(map(str, best)), *align])  # fmt: skip
    return rows


def _total_effect(cell: VectorCell) -> float | None:
    """ICL's effect on the gold label's probability over shuffled-label ICL (the CIE queries)."""
    p = cell.record.get("gold_probability")
    return None if p is None else p["icl"] - p["shuffled_icl"]


def _function_vector_rows(cells: Sequence[VectorCell], methods: Sequence[str]) -> list[list[str]]:
    rows = []
    for variant, task, runs in _groups(cells, FUNCTION_VECTORS):
        share = []  # the top heads' share of the total positive CIE: how concentrated the task is
        for c in runs:
            cie = np.asarray(c.record["cie"])
            top = sum(max(cie[layer, h], 0.0) for layer, h in c.record["top_heads"])
            share.append(top / cie.clip(min=0).sum() if cie.clip(min=0).sum() > 0 else None)
        rho = [fmt_stat(mean_std(c.record["methods"][m][key] for c in runs if m in c.record["methods"]
                                 and c.record["methods"][m][key] is not None), 2)
               for m in methods for key in ("spearman_kv_cie", "spearman_z_cie")]  # fmt: skip
        first = runs[0].record["top_heads"][:3]
        rows.append([task_label(task), variant_label(variant), str(len(runs)),
                     fmt_stat(mean_std(c.record["accuracy"]["zs"] for c in runs)),
                     fmt_stat(mean_std(c.record["accuracy"]["icl"] for c in runs)),
                     fmt_stat(mean_std(c.record["accuracy"]["shuffled_icl"] for c in runs
                                       if "shuffled_icl" in c.record["accuracy"])),
                     fmt_stat(mean_std(_total_effect(c) for c in runs if _total_effect(c) is not None), 3),
                     fmt_stat(mean_std(float(np.max(c.record["cie"])) for c in runs), 3),
                     fmt_stat(mean_std(c.record["best_accuracy"] for c in runs)),
                     fmt_stat(mean_std(c.record["heldout_accuracy"] for c in runs if "heldout_accuracy" in c.record)),
                     ", ".join(str(c.record["best_layer"]) for c in runs),
                     " ".join(f"{layer}.{h}" for layer, h in first),
                     fmt_stat(mean_std(s for s in share if s is not None)), *rho])  # fmt: skip
    return rows


def vectors_section(cells: Sequence[VectorCell], table_cells: Sequence[Cell], out: Path, plots: bool) -> tuple[list[str], list[str]]:
    """(markdown lines, CSV files written) of the two sections."""
    methods = [m for m in METHODS if any(m in c.record["methods"] for c in cells)]
    labels = [METHOD_LABELS[m] for m in methods]
    lines = ["## Task vectors (Hendel et al.; `jaxicl run --analyses task-vectors`)", ""]
    written = []
    if any(c.kind == TASK_VECTORS for c in cells):
        header = ["task", "variant", "runs", "zero-shot", "ICL", "task vector (best layer)", "held out",
                  "best layer per run",
                  *(f"cos({m} Δ, TV Δ), layer mean" for m in labels)]  # fmt: skip
        lines += md_table(header, _task_vector_rows(cells, methods)) + [""]
        lines += ["Accuracy with θ_L, the mean ICL residual entering block L at the query's last token, put into "
                  "zero-shot runs there (best layer: the first of the highest; held out: at the layer chosen on the other "
                  "half of the queries, even against odd). cos: per layer, the cosine between "
                  "the finetuned model's change of that residual and the task vector's, both against zero-shot, "
                  "averaged over queries and then over layers (per layer, beside SimAOU: task_vectors.csv)."]  # fmt: skip
        write_csv(out / "task_vectors.csv", ["task", "variant", "seed", "perm", "layer", "quantity", "value"],
                  _task_vector_csv(cells, table_cells))  # fmt: skip
        written.append("task_vectors.csv")
    else:
        lines += ["No task-vector cells in this run directory."]
    lines += ["", "## Function vectors (Todd et al.; `jaxicl run --analyses function-vectors`)", ""]
    if any(c.kind == FUNCTION_VECTORS for c in cells):
        header = ["task", "variant", "runs", "zero-shot", "ICL", "ICL, shuffled labels", "ICL's effect", "largest CIE",
                  "FV (best layer)", "held out", "best layer per run",
                  "top heads (run 1)", "top-10 share of CIE",
                  *(f"ρ({m} {q}, CIE)" for m in labels for q in ("KV update", "Δz"))]  # fmt: skip
        lines += md_table(header, _function_vector_rows(cells, methods)) + [""]
        lines += ["ICL's effect: the gold label's probability with the real labels minus with shuffled ones (over "
                  "the CIE queries), which each head's CIE is a part of. "
                  "FV: the sum of the mean outputs of the ten heads of largest causal indirect effect (CIE: the rise "
                  "of the gold label's probability when the head's mean ICL output replaces its output on "
                  "shuffled-label prompts), through the output projection, added to the residual entering block L "
                  "in zero-shot runs. Heads as layer.head. ρ: Spearman correlation over every head between CIE and "
                  "the finetuning's update to the head's key/value projections (shared within a GQA group) or the "
                  "change of the head's output at the query's last token."]  # fmt: skip
        write_csv(out / "function_vectors.csv", ["task", "variant", "seed", "perm", "layer", "head", "quantity", "value"],
                  _function_vector_csv(cells))  # fmt: skip
        written.append("function_vectors.csv")
    else:
        lines += ["No function-vector cells in this run directory."]
    if plots and cells:
        lines += ["", "![accuracy against the patched layer; alignment with the task vector beside SimAOU]"
                  "(vectors_by_layer.png)", "",
                  "![causal indirect effect per head](cie_heads.png)"]  # fmt: skip
        plot_layers(cells, table_cells, out / "vectors_by_layer.png")
        plot_cie(cells, out / "cie_heads.png")
    return lines, written


def _task_vector_csv(cells: Sequence[VectorCell], table_cells: Sequence[Cell]) -> list[list]:
    simaou = {(c.task, c.variant, c.method, c.seed, c.perm): c.per_layer.get("simaou") for c in table_cells}
    rows = []
    for c in (c for c in cells if c.kind == TASK_VECTORS):
        key = (c.task, c.variant, c.seed, c.perm)
        for layer, acc in enumerate(c.record["layers"]["accuracy"]):
            rows.append([*key, layer, "task_vector_accuracy", acc])
            for method, entry in c.record["methods"].items():
                rows.append([*key, layer, f"{method}_alignment", entry["alignment"][layer]])
                curve = simaou.get((c.task, c.variant, method, c.seed, c.perm))
                if curve is not None and layer < len(curve):
                    rows.append([*key, layer, f"{method}_simaou", curve[layer]])
    return rows


def _function_vector_csv(cells: Sequence[VectorCell]) -> list[list]:
    rows = []
    for c in (c for c in cells if c.kind == FUNCTION_VECTORS):
        key = (c.task, c.variant, c.seed, c.perm)
        rows += [[*key, layer, "", "function_vector_accuracy", a] for layer, a in enumerate(c.record["layers"]["accuracy"])]
        for layer, per_head in enumerate(c.record["cie"]):
            for h, value in enumerate(per_head):
                rows.append([*key, layer, h, "cie", value])
                for method, entry in c.record["methods"].items():
                    rows.append([*key, layer, h, f"{method}_kv_update", entry["kv_update"][layer][h]])
                    rows.append([*key, layer, h, f"{method}_z_change", entry["z_change"][layer][h]])
    return rows


def plot_layers(cells: Sequence[VectorCell], table_cells: Sequence[Cell], path: Path) -> Path:
    """Per task (mean over runs) against the patched layer: above, the accuracy with the task vector
    and with the function vector, zero-shot and ICL as horizontal lines; below, each method's
    alignment with the task vector (solid) beside its SimAOU (dashed)."""
    tasks = order_tasks({c.task for c in cells})
    fig = Figure(figsize=(3.4 * len(tasks), 6.0))
    axes = np.asarray(fig.subplots(2, len(tasks), squeeze=False))
    for top, bottom, task in zip(axes[0], axes[1], tasks):
        for kind, color in ((TASK_VECTORS, "tab:green"), (FUNCTION_VECTORS, "tab:purple")):
            runs = [c for c in cells if c.kind == kind and c.task == task]
            if runs:
                top.plot(np.mean([c.record["layers"]["accuracy"] for c in runs], axis=0), marker=".", color=color, label=kind)
        runs = [c for c in cells if c.task == task]
        top.axhline(np.mean([c.record["accuracy"]["zs"] for c in runs]), color="grey", linestyle=":", label="zero-shot")
        top.axhline(np.mean([c.record["accuracy"]["icl"] for c in runs]), color="black", linestyle="--", label="ICL")
        top.set_title(task_label(task))
        top.set_ylim(0, 1)
        _plot_alignment(bottom, [c for c in runs if c.kind == TASK_VECTORS], table_cells)
        bottom.set_xlabel("layer")
        for ax in (top, bottom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("cosine")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_alignment(ax, runs: Sequence[VectorCell], table_cells: Sequence[Cell]) -> None:
    for method in METHODS:
        curves = [c.record["methods"][method]["alignment"] for c in runs if method in c.record["methods"]]
        if curves:
            values = np.asarray(curves, dtype=float)  # null (no direction) is NaN: left out of the mean
            count = np.isfinite(values).sum(axis=0)
            mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), np.nan)
            ax.plot(mean, marker=".", color=METHOD_COLORS[method], label=f"{METHOD_LABELS[method]} · TV")
        simaou = [t.per_layer["simaou"] for c in runs for t in table_cells if (t.task, t.variant, t.method, t.seed,
                  t.perm) == (c.task, c.variant, method, c.seed, c.perm) and "simaou" in t.per_layer]  # fmt: skip
        if simaou:
            ax.plot(np.mean(simaou, axis=0), linestyle="--", color=METHOD_COLORS[method], label=f"{METHOD_LABELS[method]} SimAOU")
    ax.axhline(0.0, color="grey", linewidth=0.6)


def plot_cie(cells: Sequence[VectorCell], path: Path) -> Path:
    """Each head's CIE (layer x head, mean over runs), one panel per task."""
    mine = [c for c in cells if c.kind == FUNCTION_VECTORS]
    tasks = order_tasks({c.task for c in mine})
    fig = Figure(figsize=(2.6 * max(len(tasks), 1), 4.0))
    axes = np.atleast_1d(fig.subplots(1, max(len(tasks), 1)))
    for ax, task in zip(axes, tasks):
        cie = np.mean([c.record["cie"] for c in mine if c.task == task], axis=0)
        bound = float(np.abs(cie).max()) or 1.0
        image = ax.imshow(cie, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower")
        ax.set_title(task_label(task))
        ax.set_xlabel("head")
        fig.colorbar(image, ax=ax, fraction=0.08)
    axes[0].set_ylabel("layer")
    fig.tight_layout()
    return _save(fig, path)
