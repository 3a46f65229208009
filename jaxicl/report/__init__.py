"""Paper-style report of a run directory: Tables 1 and 2, accuracies, random baselines, Fig. 2–4.

Input: RUN_DIR/run.json (the run's config, opaque here) and RUN_DIR/cells/**/*.json, one results
file per (task, variant, method, seed, perm) in the schema of docs/experiments.md#the-grid-jaxicl-run; for the time per stage, the
runner's RUN_DIR/seconds/**/*.json and RUN_DIR/timing.json when present. Output (default
RUN_DIR/report): report.md, tidy CSVs with every number the tables show, and PNG plots linked from
report.md. md and csv output is a pure function of the input files (sorted paths, fixed formats,
no timestamps); PNGs are written without a software/date stamp.

`write_report` lays report.md out; the work is done by one module per job:
- cells: reading and validating the run directory's files (what is excluded, and why);
- stats: every number (mean ± std over runs, task averages, per-layer curves, time per stage);
- paper: the paper's published numbers and its own tables;
- tables: Table 2, Table 1, accuracy, random baselines, time per stage, learning-rate selection;
- figures: every plot;
- fmt, names: how numbers, tables and CSVs are spelled; the names and labels all modules share.

The public names of the former single module are re-exported here, so `from jaxicl.report
import X` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxicl.data.tasks import PAPER_TASKS
from jaxicl.engine.metrics import PER_LAYER_KEYS
from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.report.cells import (
    Cell,
    CellError,
    Group,
    Problem,
    load_cells,
    load_controls,
    load_lr_selection,
    load_order,
    load_run_config,
    load_stage_seconds,
    load_timing,
    parse_cell,
)
from jaxicl.report.checkpoints import checkpoints_section, load_revisions
from jaxicl.report.figures import (
    DEFAULT_GRAD_TASK,
    METHOD_COLORS,
    PLOT_METRICS,
    figures_section,
    grad_norm_cells,
    plot_alpha,
    plot_grad_norms,
    plot_lr_selection,
    plot_per_layer,
    plot_vs_paper,
)
from jaxicl.report.fmt import (
    MISSING,
    NO_STD,
    best_flags,
    close_top_two,
    csv_num,
    emphasize,
    fmt_num,
    fmt_stat,
    md_table,
    stat_cols,
    task_label,
    variant_label,
    write_csv,
)
from jaxicl.report.names import (
    ACCURACY_KEYS,
    METHOD_LABELS,
    METHODS,
    METRIC_LABELS,
    RANDOM_KEYS,
    STAGE_KEYS,
    STAGES,
    TABLE1_METRICS,
    TABLE_METRICS,
    TASK_LABELS,
    TIMING_KEYS,
    VARIANT_LABELS,
    VARIANTS,
)
from jaxicl.report.paper import (
    DAI_ACCURACY,
    PAPER_FIG3,
    PAPER_RANDOM_SIMAOU,
    PAPER_TABLE1,
    PAPER_TABLE1_RECONSTRUCTED,
    PAPER_TABLE2,
    PAPER_TABLE2_AVG,
    render_dai_accuracy,
    render_paper_table1,
    render_paper_table2,
)
from jaxicl.report.stability import CSV_HEADER, stability_counts
from jaxicl.report.stats import (
    Difference,
    Stat,
    accuracy_stats,
    alpha_stats,
    hierarchical_bootstrap,
    layer_curve,
    mean_std,
    method_difference,
    method_differences,
    metric_stat,
    order_tasks,
    order_variants,
    per_run,
    random_stats,
    select,
    stage_totals,
    table1_stats,
    table2_stats,
    task_average,
    task_mean_curve,
)
from jaxicl.report.tables import (
    accuracy_csv_rows,
    accuracy_section,
    controls_csv_rows,
    controls_section,
    controls_stats,
    differences_csv_rows,
    lr_selection_rows,
    lr_selection_section,
    order_csv_rows,
    order_section,
    per_layer_csv_rows,
    random_csv_rows,
    random_section,
    render_accuracy,
    render_random,
    render_table1,
    render_table2,
    table1_csv_rows,
    table1_section,
    table2_csv_rows,
    table2_section,
    time_csv_rows,
    time_section,
    tokenwise_csv_rows,
    tokenwise_section,
    uncertainty_section,
)
from jaxicl.report.vectors import load_vector_cells, vectors_section

__all__ = [  # every public name of the former single-file module, write_report included
    "ACCURACY_KEYS", "DAI_ACCURACY", "DEFAULT_GRAD_TASK", "METHODS", "METHOD_COLORS", "METHOD_LABELS",
    "METRIC_LABELS", "MISSING", "NO_STD", "PAPER_FIG3", "PAPER_RANDOM_SIMAOU", "PAPER_TABLE1",
    "PAPER_TABLE1_RECONSTRUCTED", "PAPER_TABLE2", "PAPER_TABLE2_AVG", "PAPER_TASKS", "PLOT_METRICS", "RANDOM_KEYS",
    "STAGES", "STAGE_KEYS", "TABLE1_METRICS", "TABLE_METRICS", "TASK_LABELS", "TIMING_KEYS", "VARIANTS",
    "VARIANT_LABELS", "Cell", "CellError", "Difference", "Group", "Problem", "Stat", "hierarchical_bootstrap",
    "method_difference", "method_differences", "accuracy_csv_rows", "accuracy_stats",
    "alpha_stats", "best_flags", "close_top_two", "csv_num", "emphasize", "fmt_num", "fmt_stat", "grad_norm_cells",
    "layer_curve", "load_cells", "load_lr_selection", "load_run_config", "load_stage_seconds", "load_timing",
    "lr_selection_rows", "md_table", "mean_std", "metric_stat", "order_tasks", "order_variants", "parse_cell",
    "per_layer_csv_rows", "per_run", "plot_alpha", "plot_grad_norms", "plot_lr_selection", "plot_per_layer",
    "plot_vs_paper", "random_csv_rows", "random_stats", "render_accuracy", "render_dai_accuracy",
    "render_paper_table1", "render_paper_table2", "render_random", "render_table1", "render_table2", "select",
    "stage_totals", "stat_cols", "table1_csv_rows", "table1_stats", "table2_csv_rows", "table2_stats",
    "task_average", "task_label", "task_mean_curve", "time_csv_rows", "variant_label", "write_csv", "write_report",
]


def _header(config: Mapping[str, Any], cells: Sequence[Cell], run_dir: Path) -> list[str]:
    """Model and n_eval from run.json (else from the cells), and what the run contains."""
    models = sorted({c.model for c in cells if c.model})
    n_evals = sorted({c.n_eval for c in cells if c.n_eval is not None})
    model = config.get("model", ", ".join(models) or MISSING)
    n_eval = config.get("n_eval", ", ".join(map(str, n_evals)) or MISSING)
    lines = [
        f"# jaxicl report: {run_dir.name}",
        "",
        f"- model: `{model}` · n_eval: {n_eval}",
        f"- cells used: {len(cells)} · tasks: {', '.join(order_tasks(c.task for c in cells)) or MISSING}"
        f" · variants: {', '.join(order_variants(c.variant for c in cells)) or MISSING}",
    ]
    if len(models) > 1:
        lines.append(f"- **warning**: cells come from several models: {', '.join(models)}")
    if len(n_evals) > 1:
        lines.append(f"- note: cells use different n_eval: {', '.join(map(str, n_evals))}")
    return lines


def _problems_section(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return ["## Problems", "", "None: every input file was used."]
    lines = ["## Problems", "", f"{len(problems)} file(s) skipped; none of their numbers appear anywhere "
             "in this report:", ""]
    lines += [f"- `{p.path}`: {p.reason}" for p in problems]
    return lines


def _write_csvs(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str], t2: dict, t1: dict,
                differences: dict, controls: dict, order_cells: list, tokenwise: dict, times: list[list],
                out: Path) -> list[str]:
    """Tidy CSVs (one number per row, full precision) of everything the tables and plots show."""
    stat_header = ["n", "mean", "std"]
    paper = ["paper_mean", "paper_std"]
    ci = ["ci_low", "ci_high"]  # 95% hierarchical bootstrap
    counts = stability_counts(cells)
    stable = CSV_HEADER if counts else []  # --stability-check: unstable and checked cells per entry
    files = {
        "table2.csv": (["metric", "method", "task", *stat_header, *paper, *ci, *stable],
                       table2_csv_rows(t2, tasks, counts)),
        "table1.csv": (["metric", "variant", "task", *stat_header, *paper, *ci, *stable],
                       table1_csv_rows(t1, tasks, counts)),
        "gd_minus_lcgd.csv": (["metric", "task", "n_runs", "mean", *ci, "excludes_zero", "paired_examples"],
                              differences_csv_rows(differences)),
        "accuracy.csv": (["variant", "task", "quantity", *stat_header], accuracy_csv_rows(cells, variants, tasks)),
        "random_baselines.csv": (["variant", "baseline", "task", *stat_header, "paper_mean"],
                                 random_csv_rows(cells, tasks, variants)),
        "alpha.csv": (["task", *stat_header], [[t, *stat_cols(s)] for t, s in alpha_stats(cells, tasks).items()
                                               if s is not None]),
        "per_layer.csv": (["variant", "method", "task", "metric", "layer", *stat_header],
                          per_layer_csv_rows(cells, tasks, variants)),
        "cells.csv": (["path", "task", "variant", "method", "seed", "perm", "k_icl", *ACCURACY_KEYS,
                       *PER_LAYER_KEYS, "rec2ftp", "alpha"],
                      [[c.path, c.task, c.variant, c.method, c.seed, c.perm, c.k_icl,
                        *(c.accuracy[k] for k in ACCURACY_KEYS), *(c.value(k) for k in PER_LAYER_KEYS),
                        c.scalar.get("rec2ftp"), c.alpha] for c in cells]),
        "time_per_stage.csv": (["variant", "stage", "groups", "seconds"], times),
    }
    if order_cells:
        files["order_sensitivity.csv"] = (["task", "variant", "seed", "perm", "orders", "method", "mean_std"],
                                          order_csv_rows(order_cells))
    if tokenwise:
        files["tokenwise.csv"] = (["variant", "task", "quantity", "metric", *stat_header, *ci],
                                  tokenwise_csv_rows(tokenwise))
    if controls:
        files["controls.csv"] = (["control", "variant", "task", "metric", *stat_header, "real_minus_control", *ci],
                                 controls_csv_rows(controls))
    for name, (header, rows) in files.items():
        write_csv(out / name, header, rows)
    return list(files)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 grad_norm_task: str | None = DEFAULT_GRAD_TASK, plots: bool = True) -> Path:
    """Write report.md, CSVs and PNGs for a run directory; returns the path of report.md.

    out_dir defaults to RUN_DIR/report. grad_norm_task picks Fig. 4's task (falls back to the
    first task with grad norms). plots=False skips the PNGs (seconds each), e.g. to glance at
    tables of a run in progress."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    config, config_problems = load_run_config(run_dir)
    cells, problems = load_cells(run_dir)
    stage_seconds, seconds_problems = load_stage_seconds(run_dir)
    timing, timing_problems = load_timing(run_dir)
    totals = stage_totals(stage_seconds)
    tasks = order_tasks(c.task for c in cells)
    variants = order_variants(c.variant for c in cells)
    t2_lines, t2 = table2_section(cells, tasks)
    t1_lines, t1 = table1_section(cells, tasks)
    differences = method_differences(cells, tasks)
    control_cells, control_problems = load_controls(run_dir)
    order_cells, order_problems = load_order(run_dir)
    vector_cells, vector_problems = load_vector_cells(run_dir)
    tokenwise_lines, tokenwise = tokenwise_section(cells, tasks)
    controls = controls_stats(cells, control_cells)
    csv_files = _write_csvs(cells, tasks, variants, t2, t1, differences, controls, order_cells, tokenwise,
                            time_csv_rows(totals, timing), out)  # fmt: skip
    problems = config_problems + problems + control_problems + order_problems + seconds_problems + timing_problems
    problems += vector_problems
    lines = _header(config, cells, run_dir) + [""] + _problems_section(problems) + [""]
    lines += t2_lines + [""] + t1_lines + [""] + uncertainty_section(cells, tasks, t2, t1, differences) + [""]
    lines += accuracy_section(cells, tasks, variants) + [""]
    lines += controls_section(cells, tasks, controls) + [""] + order_section(order_cells) + [""]
    lines += tokenwise_lines + [""]
    if vector_cells or vector_problems:
        vector_lines, vector_files = vectors_section(vector_cells, cells, out, plots)
        lines += vector_lines + [""]
        csv_files += vector_files
    lines += random_section(cells, tasks, variants) + [""] + time_section(totals, timing) + [""]
    lines += (figures_section(cells, tasks, out, grad_norm_task) if plots
              else ["## Figures", "", "Not drawn (plots=False)."]) + [""]
    selection, selection_problems = load_lr_selection(run_dir)
    if selection_problems:
        lines += [f"- `{p.path}`: {p.reason}" for p in selection_problems] + [""]
    lines += lr_selection_section(selection, out, plots) + [""]
    revisions, revision_problems = load_revisions(run_dir)
    if revisions or revision_problems:
        lines += [f"- `{p.path}`: {p.reason}" for p in revision_problems]
        lines += checkpoints_section(revisions, out, plots) + [""]
    lines += ["## Files", ""] + [f"- [{name}]({name})" for name in csv_files]
    report = out / "report.md"
    write_bytes_atomic(report, ("\n".join(lines) + "\n").encode("utf-8"))
    return report
