"""Statistics: every number the report's tables and plots show, computed from validated cells.

Conventions (docs/method.md#aggregation):
- A "run" is one (seed, perm); statistics are over runs: mean and sample std (ddof=1); with one
  run the std is undefined and printed "—", never 0.
- "Average" = mean over tasks of the per-task means (the paper's Avg column); it is marked "*"
  when a row lacks some of the table's tasks.
- zs/icl accuracies and the random baselines do not depend on the finetuning method, so the GD and
  LCGD cells of one run are averaged into one value per run before the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from jaxicl.data.tasks import PAPER_TASKS
from jaxicl.report.cells import Cell, Group
from jaxicl.report.names import (
    METHODS,
    RANDOM_KEYS,
    STAGES,
    TABLE1_METRICS,
    TABLE_METRICS,
    VARIANTS,
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; None for a single value) of n values; `ci`: a 95% hierarchical
    bootstrap interval of the mean, where the report computes one (Tables 1 and 2)."""

    mean: float
    std: float | None
    n: int
    ci: tuple[float, float] | None = None


def mean_std(values: Iterable[float]) -> Stat | None:
    """The paper's cross-run aggregation (docs/method.md#aggregation); None when there is nothing to average."""
    arr = np.asarray(list(values), np.float64)
    if arr.size == 0:
        return None
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else None
    return Stat(float(np.mean(arr)), std, int(arr.size))


def select(cells: Iterable[Cell], **where: str) -> list[Cell]:
    """Cells whose attributes equal every given value, e.g. select(cells, variant="trained")."""
    return [c for c in cells if all(getattr(c, k) == v for k, v in where.items())]


def per_run(cells: Iterable[Cell], get: Callable[[Cell], float | None]) -> list[float]:
    """One value per (seed, perm): the mean over that run's cells (GD and LCGD share zs/icl)."""
    by_run: dict[tuple[int, int], list[float]] = {}
    for c in cells:
        value = get(c)
        if value is not None:
            by_run.setdefault(c.run, []).append(value)
    return [float(np.mean(by_run[r])) for r in sorted(by_run)]


def metric_stat(cells: Sequence[Cell], metric: str, interval: bool = False) -> Stat | None:
    """Mean ± std over the cells (runs) of a metric; interval: with its bootstrap interval."""
    stat = mean_std(v for c in cells if (v := c.value(metric)) is not None)
    if stat is None or not interval:
        return stat
    return replace(stat, ci=hierarchical_bootstrap(run_values(cells, metric)))


# ----------------------------------------------------------------------------- the bootstrap

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def hierarchical_bootstrap(runs: Sequence[Sequence[float]], *, n_resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the mean over runs of each run's mean over its examples (the resampled
    means are `bootstrap_means`'). Seeded: the same values give the same interval."""
    return percentile_interval(bootstrap_means(runs, n_resamples=n_resamples, seed=seed), confidence)


def bootstrap_means(runs: Sequence[Sequence[float]], *, n_resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[n_resamples] resampled means over runs of each run's mean over its examples.

    Each resample draws as many runs as there are, with replacement, then, for each drawn run
    independently (a run drawn twice gets two draws), as many of its examples as it has, with
    replacement. A run given as one value (a cell without per-example values) is resampled at the
    run level only."""
    arrays = [np.asarray(r, np.float64) for r in runs]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("the bootstrap needs at least one run, each with at least one value")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("the bootstrap got a non-finite value")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n_runs = len(arrays)
    drawn = rng.integers(0, n_runs, size=(n_resamples, n_runs))  # [resample, slot] -> run
    run_means = np.empty((n_resamples, n_runs))
    for slot in range(n_runs):
        for r, values in enumerate(arrays):
            rows = np.flatnonzero(drawn[:, slot] == r)
            if rows.size:
                examples = rng.integers(0, values.size, size=(rows.size, values.size))
                run_means[rows, slot] = values[examples].mean(axis=1)
    return run_means.mean(axis=1)


def percentile_interval(means: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of resampled means."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def run_values(cells: Sequence[Cell], metric: str) -> list[np.ndarray]:
    """One array per cell (run): its per-example values of `metric`, else its one scalar."""
    out = []
    for c in cells:
        if metric in c.per_example:
            out.append(c.per_example[metric])
        elif (v := c.value(metric)) is not None:
            out.append(np.asarray([v]))
    return out


@dataclass(frozen=True)
class Difference:
    """GD − LCGD of one metric on one task: the mean over shared runs and its bootstrap interval."""

    mean: float
    ci: tuple[float, float]
    n_runs: int
    paired_examples: bool  # resampled per example (both cells kept per-example values), else per run

    @property
    def excludes_zero(self) -> bool:
        return self.ci[0] > 0.0 or self.ci[1] < 0.0


def method_difference(gd: Sequence[Cell], lcgd: Sequence[Cell], metric: str) -> Difference | None:
    """GD − LCGD on the runs both methods have. Paired: the same runs and, within a run, the same
    eval examples are drawn for both (their per-example difference is resampled)."""
    by_run = {c.run: c for c in lcgd}
    pairs = [(g, by_run[g.run]) for g in sorted(gd, key=lambda c: c.run) if g.run in by_run]
    pairs = [(g, l) for g, l in pairs if g.value(metric) is not None and l.value(metric) is not None]
    if not pairs:
        return None
    paired = all(metric in g.per_example and metric in l.per_example
                 and g.per_example[metric].size == l.per_example[metric].size for g, l in pairs)  # fmt: skip
    if paired:
        runs = [g.per_example[metric] - l.per_example[metric] for g, l in pairs]
    else:
        runs = [np.asarray([g.value(metric) - l.value(metric)]) for g, l in pairs]
    mean = float(np.mean([r.mean() for r in runs]))
    return Difference(mean, hierarchical_bootstrap(runs), len(pairs), paired)


def method_differences(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[str, dict[str, Difference | None]]:
    """metric → task → GD − LCGD (trained variant), for Table 2's metrics."""
    trained = select(cells, variant="trained")
    return {
        metric: {t: method_difference(select(trained, task=t, method="gd"), select(trained, task=t, method="lcgd"), metric)
                 for t in tasks}  # fmt: skip
        for metric in TABLE_METRICS
    }


def task_average(stats: Mapping[str, Stat | None]) -> tuple[float | None, int]:
    """Mean over tasks of the per-task means (the paper's Average column), and how many tasks."""
    means = [s.mean for s in stats.values() if s is not None]
    return (float(np.mean(means)) if means else None), len(means)


def order_tasks(tasks: Iterable[str]) -> list[str]:
    """The paper's task order, then any other task alphabetically."""
    tasks = set(tasks)
    return [t for t in PAPER_TASKS if t in tasks] + sorted(tasks - set(PAPER_TASKS))


def order_variants(variants: Iterable[str]) -> list[str]:
    variants = set(variants)
    return [v for v in VARIANTS if v in variants] + sorted(variants - set(VARIANTS))


# ----------------------------------------------------------------------------- the tables' numbers


def table2_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[tuple[str, str], dict[str, Stat | None]]:
    """(metric, method) → task → Stat over runs, trained variant."""
    trained = select(cells, variant="trained")
    return {
        (metric, method): {t: metric_stat(select(trained, method=method, task=t), metric, interval=True) for t in tasks}
        for metric in TABLE_METRICS
        for method in METHODS
    }


def table1_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[tuple[str, str], dict[str, Stat | None]]:
    """(metric, variant) → task → Stat over runs, GD only, for the variants present."""
    gd = select(cells, method="gd")
    variants = order_variants(c.variant for c in gd)
    return {
        (metric, variant): {t: metric_stat(select(gd, variant=variant, task=t), metric, interval=True) for t in tasks}
        for metric in TABLE1_METRICS
        for variant in variants
    }


def accuracy_stats(cells: Sequence[Cell]) -> dict[str, Stat | None]:
    """zs/icl (one value per run), FT per method, Rec2FTP per method (runs where it is defined)."""
    out = {
        "zs": mean_std(per_run(cells, lambda c: c.accuracy["zs"])),
        "icl": mean_std(per_run(cells, lambda c: c.accuracy["icl"])),
    }
    for method in METHODS:
        mine = select(cells, method=method)
        out[f"ft_{method}"] = mean_std(c.accuracy["ft"] for c in mine)
        out[f"rec2ftp_{method}"] = mean_std(c.scalar["rec2ftp"] for c in mine if c.scalar.get("rec2ftp") is not None)
    return out


def random_stats(cells: Sequence[Cell], tasks: Sequence[str], variant: str) -> dict[str, dict[str, Stat | None]]:
    """key → task → Stat over runs (GD and LCGD cells of a run share the ICL update)."""
    mine = select(cells, variant=variant)
    return {key: {t: mean_std(per_run(select(mine, task=t), lambda c, k=key: c.value(k))) for t in tasks}
            for key in RANDOM_KEYS}


def alpha_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[str, Stat | None]:
    """α per task over runs, from the trained LCGD cells that carry it."""
    lcgd = select(cells, variant="trained", method="lcgd")
    return {t: mean_std(c.alpha for c in select(lcgd, task=t) if c.alpha is not None) for t in tasks}


# ----------------------------------------------------------------------------- per-layer curves


def layer_curve(cells: Sequence[Cell], metric: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Mean and std (ddof=1) over runs of a per-layer metric; None when no cell has it."""
    curves = [c.per_layer[metric] for c in cells if metric in c.per_layer]
    if not curves:
        return None
    arr = np.asarray(curves, np.float64)
    return arr.mean(axis=0), (arr.std(axis=0, ddof=1) if len(curves) > 1 else None)


def task_mean_curve(cells: Sequence[Cell], metric: str, tasks: Sequence[str]) -> np.ndarray | None:
    """Mean over tasks of the per-task mean curves (equal task weights, like the Average column)."""
    curves = [c[0] for t in tasks if (c := layer_curve(select(cells, task=t), metric)) is not None]
    return np.mean(np.asarray(curves), axis=0) if curves else None


# ----------------------------------------------------------------------------- time per stage


def stage_totals(groups: Mapping[Group, Mapping[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """variant → {"groups", each CSV stage (summed over groups; None when no group has it), "total",
    "mean_per_group"}."""
    out = {}
    for variant in order_variants(g[1] for g in groups):
        mine = [s for g, s in groups.items() if g[1] == variant]
        row: dict[str, float | int | None] = {"groups": len(mine)}
        for _, name, keys in STAGES:
            values = [s[k] for s in mine for k in keys if k in s]
            row[name] = math.fsum(values) if values else None
        total = math.fsum(s[k] for s in mine for k in s)
        row.update(total=total, mean_per_group=total / len(mine))
        out[variant] = row
    return out
