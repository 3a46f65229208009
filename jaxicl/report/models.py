"""The paper's claims side by side on several models (`jaxicl study`): one row per claim, one column
per model, each entry "holds", "does not" or "mixed" with its six-task average, a 95% interval and
the number of tasks where it holds; and a figure of the Table 2 averages per model.

An average over tasks is the mean of the per-task means (the paper's Average column). Its interval
resamples, in every task independently, the runs and then each run's eval examples (the report's
hierarchical bootstrap) and averages the tasks' resampled means. "holds": the interval lies above
0; "does not": below 0; "mixed": it contains 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jaxicl.report.cells import Cell
from jaxicl.report.fmt import fmt_num, md_table
from jaxicl.report.names import METHOD_LABELS, METHODS, METRIC_LABELS, TABLE_METRICS
from jaxicl.report.paper import PAPER_TABLE2_AVG
from jaxicl.report.stats import BOOTSTRAP_SEED, bootstrap_means, order_tasks, percentile_interval, select

Runs = list[np.ndarray]  # one array per run: per-example values, or one run-level value


@dataclass(frozen=True)
class Verdict:
    mean: float
    ci: tuple[float, float]
    tasks_holding: int
    tasks: int

    @property
    def word(self) -> str:
        return "holds" if self.ci[0] > 0 else "does not" if self.ci[1] < 0 else "mixed"

    def text(self) -> str:
        return (f"{self.word}: {self.mean:+.3f} [{self.ci[0]:+.3f}, {self.ci[1]:+.3f}], "
                f"{self.tasks_holding}/{self.tasks} tasks")  # fmt: skip


def _paired(a: Sequence[Cell], b: Sequence[Cell], metric: str) -> Runs:
    """Per run, a's per-example metric minus b's (or the run-level difference)."""
    by_run = {c.run: c for c in b}
    runs = []
    for x in sorted(a, key=lambda c: c.run):
        y = by_run.get(x.run)
        if y is None or x.value(metric) is None or y.value(metric) is None:
            continue
        if metric in x.per_example and metric in y.per_example and x.per_example[metric].size == y.per_example[metric].size:
            runs.append(x.per_example[metric] - y.per_example[metric])
        else:
            runs.append(np.asarray([x.value(metric) - y.value(metric)]))
    return runs


def _lcgd_minus_gd(metric: str) -> Callable[[Sequence[Cell]], Runs]:
    def runs(cells: Sequence[Cell]) -> Runs:
        trained = select(cells, variant="trained")
        return _paired(select(trained, method="lcgd"), select(trained, method="gd"), metric)

    return runs


def _trained_minus_untrained(cells: Sequence[Cell]) -> Runs:
    """Trained GD SimAOU minus the untrained variants' mean, per run (paired on the eval examples)."""
    gd = select(cells, method="gd")
    untrained = sorted({c.variant for c in gd} - {"trained"})
    per_variant = [_paired(select(gd, variant="trained"), select(gd, variant=v), "simaou") for v in untrained]
    if not per_variant or any(len(p) != len(per_variant[0]) for p in per_variant):
        return []
    return [np.mean([p[i] for p in per_variant], axis=0) for i in range(len(per_variant[0]))]


def _accuracy_gain(quantity: str) -> Callable[[Sequence[Cell]], Runs]:
    """Per run, an accuracy minus zero-shot: ICL's (once per run) or GD-finetuned's."""

    def runs(cells: Sequence[Cell]) -> Runs:
        source = select(cells, variant="trained", method="gd")
        return [np.asarray([c.accuracy[quantity] - c.accuracy["zs"]]) for c in sorted(source, key=lambda c: c.run)]

    return runs


CLAIMS: tuple[tuple[str, Callable[[Sequence[Cell]], Runs]], ...] = (
    ("LCGD > GD on SimAOU", _lcgd_minus_gd("simaou")),
    ("LCGD > GD on SimAM_Δ", _lcgd_minus_gd("simam_delta")),
    ("the trained model is more ICL-like than the untrained baselines (GD SimAOU)", _trained_minus_untrained),
    ("ICL beats zero-shot (accuracy)", _accuracy_gain("icl")),
    ("finetuning at the selected rate beats zero-shot (GD accuracy)", _accuracy_gain("ft")),
)


def task_average(per_task: Mapping[str, Runs]) -> tuple[float, tuple[float, float], int] | None:
    """(mean over tasks of the task means, its 95% interval, tasks whose mean is > 0)."""
    tasks = [t for t, runs in per_task.items() if runs]
    if not tasks:
        return None
    means = [float(np.mean([r.mean() for r in per_task[t]])) for t in tasks]
    resampled = np.mean([bootstrap_means(per_task[t], seed=BOOTSTRAP_SEED + i) for i, t in enumerate(tasks)], axis=0)
    return float(np.mean(means)), percentile_interval(resampled), sum(m > 0 for m in means)


def verdicts(cells: Sequence[Cell]) -> dict[str, Verdict | None]:
    """Each claim's verdict on one model's cells."""
    tasks = order_tasks(c.task for c in cells)
    out = {}
    for claim, runs_of in CLAIMS:
        average = task_average({t: runs_of(select(cells, task=t)) for t in tasks})
        out[claim] = None if average is None else Verdict(average[0], average[1], average[2], len(tasks))
    return out


def table2_averages(cells: Sequence[Cell]) -> dict[tuple[str, str], tuple[float, tuple[float, float]] | None]:
    """(metric, method) → the six-task average of the trained model and its interval."""
    trained = select(cells, variant="trained")
    tasks = order_tasks(c.task for c in trained)
    out = {}
    for metric in TABLE_METRICS:
        for method in METHODS:
            per_task = {t: [c.per_example[metric] if metric in c.per_example else np.asarray([c.value(metric)])
                            for c in select(trained, task=t, method=method) if c.value(metric) is not None]
                        for t in tasks}  # fmt: skip
            average = task_average(per_task)
            out[(metric, method)] = None if average is None else average[:2]
    return out


def claims_table(models: Mapping[str, Sequence[Cell]]) -> list[str]:
    """The markdown table: one row per claim, one column per model."""
    by_model = {name: verdicts(cells) for name, cells in models.items()}
    rows = [[claim, *(v.text() if (v := by_model[m][claim]) is not None else "no cells" for m in models)]
            for claim, _ in CLAIMS]  # fmt: skip
    return md_table(["claim", *models], rows)


def claims_rows(models: Mapping[str, Sequence[Cell]]) -> list[list]:
    """CSV rows: model, claim, verdict, mean, ci_low, ci_high, tasks_holding, tasks."""
    rows = []
    for name, cells in models.items():
        for claim, v in verdicts(cells).items():
            rows.append([name, claim, *(("no cells", None, None, None, None, None) if v is None else
                                        (v.word, v.mean, *v.ci, v.tasks_holding, v.tasks))])  # fmt: skip
    return rows


def plot_table2(models: Mapping[str, Sequence[Cell]], path) -> None:
    """The Table 2 averages per model (GD and LCGD side by side per metric), with their intervals,
    and the paper's 1.3B values as marks."""
    from matplotlib.figure import Figure

    from jaxicl.report.figures import _save

    fig = Figure(figsize=(3.2 * len(TABLE_METRICS), 3.4))
    names = list(models)
    averages = {name: table2_averages(cells) for name, cells in models.items()}
    for k, metric in enumerate(TABLE_METRICS):
        ax = fig.add_subplot(1, len(TABLE_METRICS), k + 1)
        for j, method in enumerate(METHODS):
            x = np.arange(len(names)) + (j - 0.5) * 0.38
            got = [averages[n][(metric, method)] for n in names]
            means = [np.nan if g is None else g[0] for g in got]
            err = np.array([[0, 0] if g is None else [g[0] - g[1][0], g[1][1] - g[0]] for g in got]).T
            ax.bar(x, means, width=0.36, yerr=err, capsize=3, label=METHOD_LABELS[method])
            ax.axhline(PAPER_TABLE2_AVG[(metric, method)], color=f"C{j}", ls=":", lw=1)
        ax.set_xticks(np.arange(len(names)), names, rotation=20, fontsize=7)
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Table 2 averages over the tasks, 95% intervals (dotted: the paper's 1.3B)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def reading(models: Mapping[str, Sequence[Cell]], failed: Mapping[str, str]) -> list[str]:
    """A short plain-language reading: what holds on every model, what depends on the model."""
    by_model = {name: verdicts(cells) for name, cells in models.items()}
    lines = []
    every = "every model" if len(models) > 1 else f"{next(iter(models), 'no model')}, the only model with cells"
    for claim, _ in CLAIMS:
        words = {m: (v.word if (v := by_model[m][claim]) is not None else "no cells") for m in models}
        if len(set(words.values())) == 1:
            lines.append(f"- {claim}: {next(iter(words.values()))} on {every}.")
        else:
            lines.append(f"- {claim}: depends on the model ({'; '.join(f'{m}: {w}' for m, w in words.items())}).")
    paper = [f"{METRIC_LABELS[m]} {fmt_num(PAPER_TABLE2_AVG[(m, 'lcgd')] - PAPER_TABLE2_AVG[(m, 'gd')], 3)}"
             for m in ("simaou", "simam_delta")]  # fmt: skip
    lines.append(f"- The paper's 1.3B model (Table 2 averages, LCGD − GD): {', '.join(paper)}; both claims hold there.")
    lines += [f"- {m} was skipped: {why}" for m, why in failed.items()]
    return lines
