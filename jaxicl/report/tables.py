"""The report's tables: Table 2, Table 1, accuracy, random baselines, time per stage,
learning-rate selection, controls, order sensitivity and token-wise similarity. Each has its report.md section (`*_section`), its markdown table
(`render_*`) and its tidy CSV rows, one number per row at full precision (`*_csv_rows`).

Bold = the higher of GD/LCGD (Table 2; the paper bolds the higher for every metric, SimAM too)
or the highest variant (Table 1, where both of the top two are underlined when they are within
0.01 at 2 decimals, the paper's caption rule). Ties at full precision bold both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxicl.engine.metrics import PER_LAYER_KEYS, TOKENWISE_KEY
from jaxicl.report.cells import Cell, OrderCell
from jaxicl.report.figures import plot_lr_selection
from jaxicl.report.fmt import (
    MISSING,
    emphasize,
    fmt_num,
    fmt_stat,
    md_table,
    stat_cols,
    task_label,
    variant_label,
    write_csv,
)
from jaxicl.report.names import METHOD_LABELS, METHODS, METRIC_LABELS, STAGES, TABLE_METRICS, TIMING_KEYS
from jaxicl.report.paper import (
    PAPER_RANDOM_SIMAOU,
    PAPER_TABLE1,
    PAPER_TABLE2,
    PAPER_TABLE2_AVG,
    render_dai_accuracy,
    render_paper_table1,
    render_paper_table2,
    table1_rows,
    table2_rows,
)
from jaxicl.report.stability import csv_columns, mark, stability_counts, stability_lines, table_note
from jaxicl.report.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Difference,
    Stat,
    accuracy_stats,
    layer_curve,
    mean_std,
    method_difference,
    metric_stat,
    order_tasks,
    order_variants,
    random_stats,
    select,
    table1_stats,
    table2_stats,
    task_average,
)

# ----------------------------------------------------------------------------- Table 2


def _runs_line(cells: Sequence[Cell], tasks: Sequence[str]) -> str:
    trained = select(cells, variant="trained")
    parts = [f"{task_label(t)} {'/'.join(str(len(select(trained, task=t, method=m))) for m in METHODS)}"
             for t in tasks]
    return "Runs per task (GD/LCGD): " + ", ".join(parts) + "."


def table2_section(cells: Sequence[Cell], tasks: Sequence[str]) -> tuple[list[str], dict]:
    stats = table2_stats(cells, tasks)
    lines = ["## Table 2: GD vs LCGD (trained model)", ""]
    if not select(cells, variant="trained"):
        return lines + ["No trained-variant cells."], stats
    counts = stability_counts(cells)
    lines += render_table2(stats, tasks, counts)
    lines += ["", _runs_line(cells, tasks), *table_note(counts),
              "Mean ± std over runs (ddof=1; — = one run). Bold: the higher of GD/LCGD. Average: mean over "
              "tasks of the task means (* = not every task has data). SimAOU is unnormalized; SimAOU_norm "
              "is Dai's SimAOU.", "", "Paper (P4 Table 2, fairseq 1.3B, 3 runs):", ""]
    lines += render_paper_table2()
    return lines, stats


def render_table2(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str],
                  counts: Mapping | None = None) -> list[str]:
    def mean(metric: str, method: str, task: str) -> float | None:
        s = stats[(metric, method)][task]
        return None if s is None else s.mean

    def average(metric: str, method: str) -> str:
        avg, n = task_average(stats[(metric, method)])
        return fmt_num(avg, 3) + ("*" if avg is not None and n < len(tasks) else "")

    rows = table2_rows(mean, lambda m, me, t: fmt_stat(stats[(m, me)][t]) + mark(counts, (m, "trained", me, t)),
                       average, tasks)
    return md_table(["metric", "method", *map(task_label, tasks), "Average"], rows)


def table2_csv_rows(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str],
                    counts: Mapping | None = None) -> list[list]:
    rows = []
    for (metric, method), by_task in stats.items():
        for t in tasks:
            paper = PAPER_TABLE2[(metric, method)].get(t)
            rows.append([metric, method, t, *stat_cols(by_task[t]), *(paper or (None, None)), *ci_cols(by_task[t]),
                         *csv_columns(counts, (metric, "trained", method, t))])  # fmt: skip
        avg, n = task_average(by_task)
        rows.append([metric, method, "average", n if avg is not None else None, avg, None,
                     PAPER_TABLE2_AVG[(metric, method)], None, None, None, *([None, None] if counts else [])])
    return rows


# ----------------------------------------------------------------------------- Table 1


def table1_section(cells: Sequence[Cell], tasks: Sequence[str]) -> tuple[list[str], dict]:
    stats = table1_stats(cells, tasks)
    lines = ["## Table 1: untrained baselines (GD)", ""]
    if not stats:
        return lines + ["No GD cells."], stats
    counts = stability_counts(cells)
    lines += render_table1(stats, tasks, counts) + [""] + table_note(counts)
    lines += ["Rows only for the variants in this run. Bold: highest variant; underlined: top two within "
              "0.01 (paper's rule). SimAOU_norm is extra: the paper's untrained rows may be normalized "
              "(docs/method.md#ambiguities-and-choices).", "", "Paper (P4 Table 1; ⚑ = CB cell reconstructed from garbled text, "
              "docs/method.md#published-numbers):", ""]
    return lines + render_paper_table1(), stats


def render_table1(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str],
                  counts: Mapping | None = None) -> list[str]:
    rows = table1_rows(stats, lambda s: None if s is None else s.mean,
                        lambda m, v, t: fmt_stat(stats[(m, v)][t]) + mark(counts, (m, v, "gd", t)), tasks)
    return md_table(["metric", "model", *map(task_label, tasks)], rows)


def table1_csv_rows(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str],
                    counts: Mapping | None = None) -> list[list]:
    rows = []
    for (metric, variant), by_task in stats.items():
        for t in tasks:
            paper = PAPER_TABLE1.get((metric, variant), {}).get(t)
            rows.append([metric, variant, t, *stat_cols(by_task[t]), *(paper or (None, None)), *ci_cols(by_task[t]),
                         *csv_columns(counts, (metric, variant, "gd", t))])  # fmt: skip
    return rows


def ci_cols(stat: Stat | None) -> list[float | None]:
    """[ci_low, ci_high] of a table entry (None where it has no interval)."""
    return [None, None] if stat is None or stat.ci is None else list(stat.ci)


# ----------------------------------------------------------------------------- uncertainty


def fmt_interval(ci: tuple[float, float] | None, digits: int = 2) -> str:
    return MISSING if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def uncertainty_section(cells: Sequence[Cell], tasks: Sequence[str], t2: Mapping, t1: Mapping,
                        differences: Mapping[str, Mapping[str, Difference | None]]) -> list[str]:
    """95% hierarchical bootstrap intervals of every Table 2 / Table 1 entry and of GD − LCGD."""
    lines = ["## Uncertainty: 95% hierarchical bootstrap intervals", ""]
    if not cells:
        return lines + ["No cells."]
    kept = sum(bool(c.per_example) for c in cells)
    lines += [f"Each interval resamples the runs, then the eval examples within each run ({BOOTSTRAP_RESAMPLES} "
              f"resamples, seed {BOOTSTRAP_SEED}, percentile interval). {kept} of {len(cells)} cells keep "
              "per-example values; a cell without them (written before they were kept) is resampled at "
              "the run level only, and with three runs that interval is narrow and undercovers."]  # fmt: skip
    if max(len(select(cells, task=c.task, variant=c.variant, method=c.method)) for c in cells) == 1:
        lines[-1] += (" Every entry here has one run: its interval covers the eval examples only, not the "
                      "choice of demonstrations.")  # fmt: skip
    lines += [""]
    header = ["metric", "", *map(task_label, tasks)]
    if select(cells, variant="trained"):
        lines += ["GD − LCGD (trained model), mean over the runs both have; **bold**: the interval excludes 0 "
                  "(paired: the same runs and examples are drawn for both methods):", ""]  # fmt: skip
        rows = [[METRIC_LABELS[metric], "GD − LCGD",
                 *(_difference_text(differences[metric][t]) for t in tasks)] for metric in TABLE_METRICS]  # fmt: skip
        lines += md_table(header, rows) + ["", "Table 2 entries, mean [interval]:", ""]
        rows = [[METRIC_LABELS[metric], METHOD_LABELS[method],
                 *(_entry_text(stats[t]) for t in tasks)] for (metric, method), stats in t2.items()]  # fmt: skip
        lines += md_table(header, rows) + [""]
    if t1:
        lines += ["Table 1 entries (GD), mean [interval]:", ""]
        rows = [[METRIC_LABELS[metric], variant_label(variant),
                 *(_entry_text(stats[t]) for t in tasks)] for (metric, variant), stats in t1.items()]  # fmt: skip
        lines += md_table(header, rows)
    return lines + stability_lines(cells)


def _entry_text(stat: Stat | None) -> str:
    return MISSING if stat is None else f"{stat.mean:.2f} {fmt_interval(stat.ci)}"


def _difference_text(diff: Difference | None) -> str:
    if diff is None:
        return MISSING
    text = f"{diff.mean:+.2f} {fmt_interval(diff.ci)}"
    return emphasize(text, bold=diff.excludes_zero)


def differences_csv_rows(differences: Mapping[str, Mapping[str, Difference | None]]) -> list[list]:
    return [[metric, t, d.n_runs, d.mean, d.ci[0], d.ci[1], int(d.excludes_zero), int(d.paired_examples)]
            for metric, by_task in differences.items() for t, d in by_task.items() if d is not None]


# ----------------------------------------------------------------------------- accuracy


def accuracy_section(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[str]:
    lines = ["## Accuracy", "", "Percent, mean ± std over runs; FT = finetuned zero-shot; Rec2FTP over the "
             "runs where FT fixed at least one example.", ""]
    for variant in variants:
        lines += [f"### {variant_label(variant)}", ""] + render_accuracy(cells, variant, tasks) + [""]
    return lines + ["Reference (the paper's v4 accuracies are unknown; docs/method.md#published-numbers):", ""] + render_dai_accuracy()


def _k_icl_text(cells: Sequence[Cell]) -> str:
    values = sorted({c.k_icl for c in cells if c.k_icl is not None})
    if not values:
        return MISSING
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _rec2ftp_text(stat: Stat | None, cells: Sequence[Cell]) -> str:
    """Rec2FTP with "(k/n runs)" when it is undefined in some runs, so a mean over few is visible."""
    text = fmt_stat(stat, 1)
    if cells and (stat is None or stat.n < len(cells)):
        text += f" ({0 if stat is None else stat.n}/{len(cells)} runs)"
    return text


def render_accuracy(cells: Sequence[Cell], variant: str, tasks: Sequence[str]) -> list[str]:
    header = ["task", "runs (GD/LCGD)", "k_icl", "ZS", "ICL", "FT (GD)", "FT (LCGD)", "Rec2FTP (GD)", "Rec2FTP (LCGD)"]
    rows = []
    for t in tasks:
        mine = select(cells, variant=variant, task=t)
        if not mine:
            continue
        stats = accuracy_stats(mine)
        runs = "/".join(str(len(select(mine, method=m))) for m in METHODS)
        rows.append([
            task_label(t), runs, _k_icl_text(mine),
            *(fmt_stat(stats[k], 1, 100.0) for k in ("zs", "icl", "ft_gd", "ft_lcgd")),
            *(_rec2ftp_text(stats[f"rec2ftp_{m}"], select(mine, method=m)) for m in METHODS),
        ])
    return md_table(header, rows)


def accuracy_csv_rows(cells: Sequence[Cell], variants: Sequence[str], tasks: Sequence[str]) -> list[list]:
    rows = []
    for variant in variants:
        for t in tasks:
            mine = select(cells, variant=variant, task=t)
            if not mine:
                continue
            for key, stat in accuracy_stats(mine).items():
                rows.append([variant, t, key, *stat_cols(stat)])
    return rows


# ----------------------------------------------------------------------------- random baselines


def random_section(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[str]:
    lines = ["## Random baselines", "", "Random SimAOU (normalized mode; U[0,1) is the authors' baseline, "
             "Gaussian the zero-mean one), mean ± std over runs.", ""]
    return lines + render_random(cells, tasks, variants)


def render_random(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[str]:
    rows = []
    for variant in variants:
        for key, by_task in random_stats(cells, tasks, variant).items():
            if all(s is None for s in by_task.values()):
                continue
            avg, n = task_average(by_task)
            rows.append([f"{METRIC_LABELS[key]}, {variant_label(variant)}",
                         *(fmt_stat(by_task[t], 3) for t in tasks),
                         fmt_num(avg, 3) + ("*" if avg is not None and n < len(tasks) else "")])
    paper = [PAPER_RANDOM_SIMAOU.get(t) for t in tasks]
    known = [p for p in paper if p is not None]
    rows.append(["Random SimAOU U[0,1), paper (authors' files)", *(fmt_num(p, 3) for p in paper),
                 fmt_num(float(np.mean(known)) if known else None, 3)])
    return md_table(["baseline", *map(task_label, tasks), "Average"], rows)


def random_csv_rows(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[list]:
    rows = []
    for variant in variants:
        for key, by_task in random_stats(cells, tasks, variant).items():
            for t in tasks:
                if by_task[t] is None:
                    continue
                comparable = key == "random_simaou" and variant == "trained"
                rows.append([variant, key, t, *stat_cols(by_task[t]),
                             PAPER_RANDOM_SIMAOU.get(t) if comparable else None])
    return rows


# ----------------------------------------------------------------------------- per-layer curves (Fig. 3's numbers)


def per_layer_csv_rows(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[list]:
    rows = []
    for variant in variants:
        for method in METHODS:
            for t in tasks:
                mine = select(cells, variant=variant, method=method, task=t)
                for metric in PER_LAYER_KEYS:
                    curve = layer_curve(mine, metric)
                    if curve is None:
                        continue
                    n = sum(metric in c.per_layer for c in mine)
                    for layer, mean in enumerate(curve[0]):
                        std = None if curve[1] is None else curve[1][layer]
                        rows.append([variant, method, t, metric, layer, n, mean, std])
    return rows


# ----------------------------------------------------------------------------- time per stage


def time_section(totals: Mapping[str, Mapping[str, Any]], timing: Mapping[str, float]) -> list[str]:
    lines = ["## Time per stage", ""]
    if not totals:
        lines.append("None recorded: no usable seconds files under seconds/.")
    else:
        rows = [[variant_label(v), str(row["groups"]), *(fmt_num(row[name], 1) for _, name, _ in STAGES),
                 f"{row['total']:.1f} ({row['total'] / 3600:.2f} h)", fmt_num(row["mean_per_group"], 1)]
                for v, row in totals.items()]
        lines += md_table(["variant", "groups", *(label for label, _, _ in STAGES), "total", "mean per group"], rows)
        lines += ["", "Seconds summed over each variant's groups (a group is one task × seed × perm; its GD and "
                  "LCGD share prompts, zero-shot and ICL). The runner's stopwatch is cumulative within a group, "
                  "so a group's files are merged by each stage's maximum. Prompts includes the variant's "
                  "re-initialisation; evaluate = zero-shot evaluation of the finetuned model; metrics = GD + "
                  "LCGD metrics (α and writing files are not timed).",
                  "",
                  "Stages served from cache (evals/, checkpoints/) count their load time only: the trained "
                  "zero-shot is computed once per task and loaded by its other seeds, and a group resumed "
                  "after an interrupt shows near zero for the stages it found cached (unless an earlier file "
                  "of the group recorded them)."]
    lines.append("")
    if timing:
        lines.append(f"Model load: {timing['load_s']:.1f} s; that invocation's total: {timing['total_s']:.1f} s "
                     "(timing.json: the last `jaxicl run` invocation only, a resumed run overwrites it).")
    else:
        lines.append("Model load: not recorded (no usable timing.json; a `jaxicl run` invocation writes it after "
                     "loading the model and after every group).")
    return lines


def time_csv_rows(totals: Mapping[str, Mapping[str, Any]], timing: Mapping[str, float]) -> list[list]:
    rows = [[variant, stage, row["groups"], row[stage]]
            for variant, row in totals.items()
            for stage in (*(name for _, name, _ in STAGES), "total", "mean_per_group")]
    return rows + [["timing.json", key, None, timing[key]] for key in TIMING_KEYS if key in timing]


# ----------------------------------------------------------------------------- learning-rate selection


def lr_selection_section(selection: Mapping[str, Any] | None, out: Path, plots: bool) -> list[str]:
    lines = ["## Learning-rate selection (`jaxicl tune`)", ""]
    if selection is None:
        return lines + ["None in this run directory (the rates are the paper's unless the cells say otherwise)."]
    rows = []
    for task, entry in selection["tasks"].items():
        chosen = entry["chosen"]
        rows.append([task_label(task), fmt_num(entry.get("paper_lr"), 4), f"{chosen['lr']:g}",
                     fmt_num(chosen["accuracy"], 3), fmt_num(entry["zero_shot_accuracy"], 3),
                     "yes" if chosen["finetuning_helps"] else "**no: finetuning does not help here**",
                     _rates_tried(entry["rates"])])  # fmt: skip
    lines += md_table(["task", "paper's rate", "chosen rate", "selection accuracy", "zero-shot", "beats zero-shot",
                       "rates tried"], rows)  # fmt: skip
    first = next(iter(selection["tasks"].values()))
    lines += ["", f"Selected on the {first['selected_on']}; {first['search']} search; method "
              f"{first['method'].upper()}; engine: {selection.get('engine', '?')}."]
    if plots:
        plot_lr_selection(selection, out / "lr_selection.png")
        lines += ["", "![learning-rate selection](lr_selection.png)"]
    write_csv(out / "lr_selection.csv", ["task", "lr", "run", "selection_accuracy", "final_loss"],
              lr_selection_rows(selection))
    return lines + ["", "- [lr_selection.csv](lr_selection.csv)"]


def _rates_tried(rates: Mapping[str, Mapping]) -> str:
    diverged = [r for r, v in rates.items() if v["mean_accuracy"] is None]
    return f"{len(rates)}" + (f" ({len(diverged)} diverged: {', '.join(diverged)})" if diverged else "")


def lr_selection_rows(selection: Mapping[str, Any]) -> list[list]:
    """Tidy rows: task, rate, run index (or "mean"), selection accuracy, final demonstration loss."""
    rows = []
    for task, entry in selection["tasks"].items():
        for rate, v in entry["rates"].items():
            for i, (acc, loss) in enumerate(zip(v["accuracy"], v["final_loss"])):
                rows.append([task, float(rate), i, acc, loss])
            rows.append([task, float(rate), "mean", v["mean_accuracy"], v["mean_final_loss"]])  # None: diverged
    return rows


# ----------------------------------------------------------------------------- controls

CONTROL_LABELS = {
    "cross-task": "cross-task GD",
    "shuffled-gd": "shuffled-label GD vs real ICL",
    "shuffled-icl": "shuffled-label ICL vs shuffled-label GD",
}
CONTROL_METRICS = ("simaou", "simam_delta")


def controls_stats(cells: Sequence[Cell], controls: Mapping[str, Sequence[Cell]]) -> dict[tuple[str, str, str], dict]:
    """(control, variant, task) → the control's cells, each metric's Stat and real GD − control per
    metric (paired bootstrap): computed once for the section and the CSV."""
    out = {}
    for name, cs in controls.items():
        for variant in order_variants({c.variant for c in cs}):
            for t in order_tasks({c.task for c in cs}):
                real, mine = select(cells, variant=variant, task=t, method="gd"), select(cs, variant=variant, task=t)
                out[(name, variant, t)] = {
                    "cells": mine,
                    "stats": {m: metric_stat(mine, m) for m in CONTROL_METRICS},
                    "differences": {m: method_difference(real, mine, m) for m in CONTROL_METRICS},
                }
    return out


def controls_section(cells: Sequence[Cell], tasks: Sequence[str],
                     stats: Mapping[tuple[str, str, str], Mapping]) -> list[str]:
    """Real GD against each task-specificity control, per variant and task: SimAOU and SimAM_Δ
    (mean ± std over runs) and real − control with its paired bootstrap interval (`stats`:
    `controls_stats`)."""
    lines = ["## Task-specificity controls (`jaxicl run --controls`)", "",
             "Does real GD beat the controls? A control finetunes on another task's demonstrations "
             "(cross-task) or on permuted labels (shuffled); if the similarity is about the task, real GD "
             "should be more ICL-like than every control.", ""]  # fmt: skip
    if not stats:
        return lines + ["No control cells in this run directory."]
    header = ["task", "compared", "runs", *(METRIC_LABELS[m] for m in CONTROL_METRICS), "FT acc",
              *(f"real − control {METRIC_LABELS[m]}" for m in CONTROL_METRICS)]  # fmt: skip
    verdicts = []
    for variant in order_variants({v for _, v, _ in stats}):
        rows = []
        for t in tasks:
            mine = {name: entry for (name, v, task), entry in stats.items()
                    if (v, task) == (variant, t) and entry["cells"]}  # fmt: skip
            if not mine:
                continue
            real = select(cells, variant=variant, task=t, method="gd")
            rows.append([task_label(t), "real GD", str(len(real)), *(fmt_stat(metric_stat(real, m)) for m in CONTROL_METRICS),
                         fmt_stat(mean_std(c.accuracy["ft"] for c in real), 3), "", ""])  # fmt: skip
            beaten = []
            for name, entry in mine.items():
                diffs, label = entry["differences"], CONTROL_LABELS.get(name, name)
                rows.append([task_label(t), label, str(len(entry["cells"])),
                             *(fmt_stat(entry["stats"][m]) for m in CONTROL_METRICS),
                             fmt_stat(mean_std(c.accuracy["ft"] for c in entry["cells"]), 3),
                             *(_difference_text(diffs[m]) for m in CONTROL_METRICS)])  # fmt: skip
                wins = [METRIC_LABELS[m] for m, d in diffs.items() if d is not None and d.excludes_zero and d.mean > 0]
                beaten.append(f"{label}: {'beaten on ' + ' and '.join(wins) if wins else 'not beaten'}")
            verdicts.append(f"- {variant_label(variant)}, {task_label(t)}: " + "; ".join(beaten) + ".")
        lines += [f"### {variant_label(variant)}", ""] + md_table(header, rows) + [""]
    lines += ["Real − control: paired by run and eval example (95% hierarchical bootstrap); **bold**: the "
              "interval excludes 0. \"Beaten\": real GD higher with the interval above 0.", ""] + verdicts  # fmt: skip
    return lines


def controls_csv_rows(stats: Mapping[tuple[str, str, str], Mapping]) -> list[list]:
    """One row per (control, variant, task, metric): the control's mean and real − control with its interval."""
    rows = []
    for (name, variant, t), entry in stats.items():
        for m in CONTROL_METRICS:
            stat, diff = entry["stats"][m], entry["differences"][m]
            rows.append([name, variant, t, m, *stat_cols(stat),
                         *((diff.mean, *diff.ci) if diff else (None, None, None))])  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- order sensitivity


def order_section(order_cells: Sequence[OrderCell]) -> list[str]:
    """Mean std across demonstration orders of the predicted class distribution, per task and
    method (mean ± std over runs), and ICL's over each finetuning method's (ratio of the means)."""
    lines = ["## Order sensitivity (Shen et al.; `jaxicl run --order-permutations P`)", ""]
    if not order_cells:
        return lines + ["No order cells in this run directory."]
    methods = [m for m in ("icl", *METHODS) if any(m in c.mean_std for c in order_cells)]
    labels = {"icl": "ICL", **METHOD_LABELS}
    header = ["task", "runs", "orders", *(f"std {labels[m]}" for m in methods),
              *(f"ICL / {labels[m]}" for m in methods if m != "icl")]  # fmt: skip
    for variant in order_variants({c.variant for c in order_cells}):
        rows = []
        for t in order_tasks({c.task for c in order_cells if c.variant == variant}):
            mine = [c for c in order_cells if c.variant == variant and c.task == t]
            stats = {m: mean_std(c.mean_std[m] for c in mine if m in c.mean_std) for m in methods}
            ratios = [fmt_num(stats["icl"].mean / stats[m].mean) if stats[m] and stats[m].mean > 0 else MISSING
                      for m in methods if m != "icl"]  # fmt: skip
            rows.append([task_label(t), str(len(mine)), "/".join(sorted({str(c.n_orders) for c in mine})),
                         *(fmt_stat(stats[m], 3) for m in methods), *ratios])  # fmt: skip
        lines += [f"### {variant_label(variant)}", ""] + md_table(header, rows) + [""]
    return lines + ["Std across orders (ddof=1) of each class's predicted probability, averaged over classes, "
                    "then eval examples; mean ± std over runs. Ratio: ICL's mean over the method's (> 1: ICL "
                    "moves more with the order)."]  # fmt: skip


def order_csv_rows(order_cells: Sequence[OrderCell]) -> list[list]:
    return [[c.task, c.variant, c.seed, c.perm, c.n_orders, m, v] for c in order_cells for m, v in c.mean_std.items()]


# ----------------------------------------------------------------------------- token-wise similarity

TOKENWISE_METRICS = ("simaou", TOKENWISE_KEY)


def tokenwise_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[tuple[str, str], dict]:
    """(variant, task) → GD and LCGD cells of a --token-wise run, each metric's Stat per method and
    GD − LCGD per metric (paired bootstrap): computed once for the section and the CSV."""
    mine = [c for c in cells if c.value(TOKENWISE_KEY) is not None]
    out = {}
    for variant in order_variants({c.variant for c in mine}):
        for t in tasks:
            gd, lcgd = (select(mine, variant=variant, task=t, method=m) for m in METHODS)
            if gd or lcgd:
                out[(variant, t)] = {
                    "runs": (len(gd), len(lcgd)),
                    "stats": {(m, method): metric_stat(cs, m) for m in TOKENWISE_METRICS
                              for method, cs in zip(METHODS, (gd, lcgd), strict=True)},
                    "differences": {m: method_difference(gd, lcgd, m) for m in TOKENWISE_METRICS},
                }  # fmt: skip
    return out


def tokenwise_section(cells: Sequence[Cell], tasks: Sequence[str]) -> tuple[list[str], dict]:
    """IA2's token-wise SimAOU (every query token) beside SimAOU (the probe token only), per
    variant, task and method, with GD − LCGD on each (paired bootstrap)."""
    stats = tokenwise_stats(cells, tasks)
    lines = ["## Token-wise similarity (IA2; `jaxicl run --token-wise`)", ""]
    if not stats:
        return lines + ["No cells with token-wise records in this run directory."], stats
    header = ["task", "runs (GD/LCGD)", "SimAOU GD", "SimAOU LCGD", "token-wise GD", "token-wise LCGD",
              "GD − LCGD SimAOU", "GD − LCGD token-wise"]  # fmt: skip
    for variant in order_variants({v for v, _ in stats}):
        rows = [[task_label(t), "/".join(map(str, entry["runs"])),
                 *(fmt_stat(entry["stats"][(m, method)]) for m in TOKENWISE_METRICS for method in METHODS),
                 *(_difference_text(entry["differences"][m]) for m in TOKENWISE_METRICS)]
                for (v, t), entry in stats.items() if v == variant]  # fmt: skip
        lines += [f"### {variant_label(variant)}", ""] + md_table(header, rows) + [""]
    return lines + ["SimAOU: cosine of the ICL and finetuned updates of the attention output at the probe token; "
                    "token-wise: the same at every query token up to the probe, averaged over the tokens, then "
                    "the examples (IA2). Both are layer means; mean ± std over runs. GD − LCGD: paired 95% "
                    "hierarchical bootstrap; **bold**: the interval excludes 0. Only cells of a --token-wise run "
                    "are counted."], stats  # fmt: skip


def tokenwise_csv_rows(stats: Mapping[tuple[str, str], Mapping]) -> list[list]:
    """One row per (variant, task, GD / LCGD / GD − LCGD, metric): n, mean, std, interval (the
    difference's only)."""
    rows = []
    for (variant, t), entry in stats.items():
        for m in TOKENWISE_METRICS:
            for method in METHODS:
                if entry["stats"][(m, method)] is not None:
                    rows.append([variant, t, method, m, *stat_cols(entry["stats"][(m, method)]), None, None])
            diff = entry["differences"][m]
            if diff is not None:
                rows.append([variant, t, "gd_minus_lcgd", m, diff.n_runs, diff.mean, None, *diff.ci])
    return rows
