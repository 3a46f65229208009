"""The LCGD ablation's summary: per factor, task and method, SimAM_Δ and SimAOU with their intervals,
LCGD − GD on SimAM_Δ, and how large each method's change of the attention logits is beside ICL's.

Reads OUT/<factor>/cells (and the cached evaluations' attention logits) written by `jaxicl ablate`
(jaxicl/studies/ablation.py). A factor that touches LCGD alone takes its GD from the baseline.
Writes DEST/README.md (the table and one line per factor), DEST/lcgd_simam_ablation.csv and
DEST/lcgd_simam_layers.png.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from jaxicl.analyses.map_updates import layer_profile
from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.report.cells import Cell, load_cells
from jaxicl.report.figures import _save
from jaxicl.report.fmt import csv_num, md_table, task_label, write_csv
from jaxicl.report.stats import Stat, method_difference, metric_stat, order_tasks, select
from jaxicl.runner.layout import EVALS

BASELINE = "baseline"
# From map_updates' layer profile, means over layers and runs: the per-head cosines SimAM_Δ averages,
# SimAM_Δ of the centered updates, and the uniform shift's share of the update, direction and sign agreement with ICL's.
PROFILE_KEYS = ("share_positive", "mean_abs_cos", "simam_delta_centered", "shift_share", "shift_up", "shift_agreement")
METRICS = ("simam_delta", "simaou")
CSV_HEADER = ("factor", "task", "method", "cells_from", "n_runs", "lr", "ft_accuracy", "simam_delta",
              "simam_delta_lo", "simam_delta_hi", "simam_delta_from_layer_1", "simaou", "simaou_lo", "simaou_hi",
              "map_update_over_icl", *PROFILE_KEYS, "lcgd_minus_gd_simam_delta", "lcgd_minus_gd_lo", "lcgd_minus_gd_hi")  # fmt: skip


class FactorLike(Protocol):
    name: str
    what: str
    methods: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """One factor × task × method: its cells (GD's from the baseline where the factor leaves GD as
    it is), its statistics, and the map-update profile averaged over runs."""

    factor: str
    task: str
    method: str
    cells_from: str
    cells: tuple[Cell, ...]
    stats: Mapping[str, Stat | None]
    from_layer_1: float | None  # SimAM_Δ over layers 1.. (under rotary positions layer 0's is rounding noise)
    update_over_icl: np.ndarray | None  # [L] ‖m_FT − m_ZS‖ / ‖m_ICL − m_ZS‖, mean over runs (NaN: no ICL update)
    profile_means: Mapping[str, float]  # PROFILE_KEYS: means over layers and runs
    simam_delta_layers: np.ndarray | None  # [L] mean over runs


def _profile(run_dir: Path, cell: Cell) -> dict | None:
    """The map-update profile of one cell from its directory's cached evaluations, None without them."""
    from jaxicl.runner.rundir import load_eval

    group = run_dir / EVALS / cell.task / cell.variant / f"seed{cell.seed}-perm{cell.perm}"
    zs, icl = load_eval(group.parent / "zs.npz", ("attn_scores",)), load_eval(group / "icl.npz", ("attn_scores",))
    ft = load_eval(group / f"{cell.method}-ft.npz", ("attn_scores",))
    if zs is None or icl is None or ft is None:
        return None
    return layer_profile(zs, icl, {cell.method: ft})


def _entry(out: Path, factor: FactorLike, task: str, method: str, cells: Mapping[str, list[Cell]]) -> Entry | None:
    source = factor.name if method in factor.methods else BASELINE
    mine = tuple(select(cells.get(source, []), task=task, method=method, variant="trained"))
    if not mine:
        return None
    stats = {m: metric_stat(mine, m, interval=True) for m in METRICS}
    profiles = [p for c in mine if (p := _profile(out / source, c)) is not None]
    with warnings.catch_warnings():  # a layer without an ICL update (rotary layer 0) is NaN in every run
        warnings.simplefilter("ignore", RuntimeWarning)
        ratio = np.nanmean([p[f"{method}_update_over_icl"] for p in profiles], axis=0) if profiles else None
    layers = np.mean([c.per_layer["simam_delta"] for c in mine], axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        profile_means = {k: float(np.nanmean([p[f"{method}_{k}"] for p in profiles])) for k in PROFILE_KEYS} if profiles else {}
    return Entry(factor.name, task, method, source, mine, stats, float(np.mean(layers[1:])) if len(layers) > 1 else None,
                 ratio, profile_means, layers)  # fmt: skip


def entries(out: Path, factors: Sequence[FactorLike]) -> list[Entry]:
    """Every factor × task × method with cells, in factor order, tasks in the paper's order."""
    names = {f.name for f in factors} | {BASELINE}
    cells = {name: load_cells(out / name)[0] for name in names if (out / name).is_dir()}
    tasks = order_tasks({c.task for found in cells.values() for c in found})
    found = [_entry(out, f, t, m, cells) for f in factors for t in tasks for m in ("gd", "lcgd")]
    return [e for e in found if e is not None]


def lcgd_minus_gd(gd: Entry, lcgd: Entry) -> tuple[float, tuple[float, float]] | None:
    """LCGD − GD on SimAM_Δ over the runs both have, paired by run and eval example."""
    diff = method_difference(gd.cells, lcgd.cells, "simam_delta")
    return None if diff is None else (-diff.mean, (-diff.ci[1], -diff.ci[0]))


def _pairs(found: Sequence[Entry]) -> dict[tuple[str, str], dict[str, Entry]]:
    out: dict[tuple[str, str], dict[str, Entry]] = {}
    for e in found:
        out.setdefault((e.factor, e.task), {})[e.method] = e
    return out


def _accuracy(e: Entry) -> float:
    return float(np.mean([c.accuracy["ft"] for c in e.cells]))


def csv_rows(found: Sequence[Entry]) -> list[list]:
    pairs = _pairs(found)
    rows = []
    for e in found:
        both = pairs[(e.factor, e.task)]
        diff = lcgd_minus_gd(both["gd"], both["lcgd"]) if {"gd", "lcgd"} <= both.keys() else None
        delta, aou = e.stats["simam_delta"], e.stats["simaou"]
        ratio = None if e.update_over_icl is None else float(np.nanmean(e.update_over_icl))
        lrs = sorted({c.lr for c in e.cells if c.lr is not None})
        rows.append([e.factor, e.task, e.method, e.cells_from, len(e.cells), "/".join(map(csv_num, lrs)),
                     _accuracy(e), delta.mean, *delta.ci, e.from_layer_1, aou.mean, *aou.ci, ratio,
                     *(e.profile_means.get(k) for k in PROFILE_KEYS),
                     *((diff[0], *diff[1]) if diff else (None, None, None))])  # fmt: skip
    return rows


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _ci(mean: float, ci: tuple[float, float]) -> str:
    return f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def table(found: Sequence[Entry], factors: Sequence[FactorLike]) -> list[str]:
    """factor × task rows: each method's SimAM_Δ, LCGD − GD, SimAOU, accuracy and map update."""
    header = ["factor", "task", "GD SimAM_Δ", "LCGD SimAM_Δ", "LCGD − GD", "centered SimAM_Δ GD / LCGD",
              "SimAOU GD / LCGD", "accuracy GD / LCGD", "map update / ICL's, GD / LCGD"]  # fmt: skip
    rows = []
    for (factor, task), both in _pairs(found).items():
        if not {"gd", "lcgd"} <= both.keys():
            continue
        gd, lcgd = both["gd"], both["lcgd"]
        diff = lcgd_minus_gd(gd, lcgd)
        ratio = [("—" if e.update_over_icl is None else f"{np.nanmean(e.update_over_icl):.2f}") for e in (gd, lcgd)]
        rows.append([factor, task_label(task), *(_ci(e.stats["simam_delta"].mean, e.stats["simam_delta"].ci) for e in (gd, lcgd)),
                     "—" if diff is None else _ci(*diff),
                     " / ".join(_num(e.profile_means.get("simam_delta_centered")) for e in (gd, lcgd)),
                     f"{gd.stats['simaou'].mean:.3f} / {lcgd.stats['simaou'].mean:.3f}",
                     f"{_accuracy(gd):.3f} / {_accuracy(lcgd):.3f}", " / ".join(ratio)])  # fmt: skip
    return md_table(header, rows)


def verdicts(found: Sequence[Entry], factors: Sequence[FactorLike]) -> list[str]:
    """One line per factor: LCGD − GD on SimAM_Δ averaged over tasks, and on how many tasks its
    interval lies above zero (LCGD > GD) or below (GD > LCGD)."""
    pairs = _pairs(found)
    lines = []
    for f in factors:
        diffs = [d for (name, _), both in pairs.items() if name == f.name and {"gd", "lcgd"} <= both.keys()
                 if (d := lcgd_minus_gd(both["gd"], both["lcgd"])) is not None]  # fmt: skip
        if not diffs:
            continue
        above = sum(ci[0] > 0 for _, ci in diffs)
        below = sum(ci[1] < 0 for _, ci in diffs)
        lines.append(f"- **{f.name}** ({f.what}): LCGD − GD on SimAM_Δ averages {np.mean([d for d, _ in diffs]):+.3f}; "
                     f"LCGD > GD on {above} of {len(diffs)} tasks, GD > LCGD on {below} (95% intervals).")  # fmt: skip
    return lines


def plot_layers(found: Sequence[Entry], factors: Sequence[FactorLike], path: Path) -> Path:
    """Per task: LCGD − GD on SimAM_Δ per layer under each factor, each against its own GD (top),
    and LCGD's map update over ICL's per layer under each factor beside the baseline's GD (bottom,
    log scale)."""
    from matplotlib.figure import Figure

    tasks = order_tasks({e.task for e in found})
    fig = Figure(figsize=(4.4 * len(tasks), 6.8))
    axes = np.asarray(fig.subplots(2, len(tasks), squeeze=False))
    others = [f.name for f in factors if f.name != BASELINE]
    colors = {BASELINE: "black", **{name: f"C{i % 10}" for i, name in enumerate(others)}}
    pairs = _pairs(found)
    for col, task in enumerate(tasks):
        top, bottom = axes[0, col], axes[1, col]
        for f in factors:
            both = pairs.get((f.name, task), {})
            width = 2.0 if f.name == BASELINE else 1.0
            if {"gd", "lcgd"} <= both.keys() and both["gd"].simam_delta_layers is not None \
                    and both["lcgd"].simam_delta_layers is not None:
                top.plot(both["lcgd"].simam_delta_layers - both["gd"].simam_delta_layers, marker=".",
                         color=colors[f.name], linewidth=width, label=f.name)
            if "lcgd" in both and both["lcgd"].update_over_icl is not None:
                bottom.plot(both["lcgd"].update_over_icl, marker=".", color=colors[f.name], linewidth=width,
                            label=f"LCGD {f.name}")
        gd = pairs.get((BASELINE, task), {}).get("gd")
        if gd is not None and gd.update_over_icl is not None:
            bottom.plot(gd.update_over_icl, color="black", linestyle="--", label="GD baseline")
        top.axhline(0.0, color="grey", linewidth=0.6)
        top.set_title(f"{task_label(task)}: LCGD − GD on SimAM_Δ per layer", fontsize=9)
        bottom.set_title("‖m_FT − m_ZS‖ / ‖m_ICL − m_ZS‖", fontsize=9)
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xlabel("layer")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def write_ablation(out: str | Path, factors: Sequence[FactorLike], dest: str | Path) -> list[Entry]:
    """The summary of an ablation directory: README.md, lcgd_simam_ablation.csv and the figure."""
    out, dest = Path(out), Path(dest)
    found = entries(out, factors)
    write_csv(dest / "lcgd_simam_ablation.csv", CSV_HEADER, csv_rows(found))
    lines = ["# LCGD and SimAM_Δ: one factor at a time", "",
             "SimAM_Δ and LCGD − GD with 95% hierarchical-bootstrap intervals (runs, then eval examples); "
             "the map update is ‖m_FT − m_ZS‖ / ‖m_ICL − m_ZS‖, and centered SimAM_Δ compares the updates with "
             "each head's uniform shift over the query taken out (the pattern alone), both averaged over layers "
             "and runs.", "",
             *verdicts(found, factors), "", *table(found, factors), "",
             "![SimAM_Δ and map update per layer](lcgd_simam_layers.png)", ""]  # fmt: skip
    if found:
        plot_layers(found, factors, dest / "lcgd_simam_layers.png")
    write_bytes_atomic(dest / "README.md", "\n".join(lines).encode())
    return found
