"""The numbers quoted in the docs (README.md, docs/*.md, docs/results/README.md) are the committed
report's.

The reproduction is too slow to rerun in CI, so these tests keep the prose honest: when the
report under docs/results/report is regenerated, a stale table anywhere in the docs fails here.
The README keeps Table 2's six-task averages as its headline; Table 1 lives in docs/results alone.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

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


def _docs() -> list[str]:
    """Every page that may quote the results: the README, the guide and the results' own README."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docs" / "results" / "README.md"]
    return [page.read_text() for page in pages]


def test_table2_averages_match_report():
    means = _report_means("table2.csv", "method")
    checked = 0
    for text in _docs():
        for label, metric in METRIC_BY_LABEL.items():
            for cells in _table_rows(text, label):
                if len(cells) != 5:
                    continue
                gd, lcgd = float(cells[1]), float(cells[2])
                assert round(means[(metric, "gd", "average")], 3) == gd, (label, cells)
                assert round(means[(metric, "lcgd", "average")], 3) == lcgd, (label, cells)
                checked += 1
    assert checked == 8, "README.md and docs/results/README.md each have a four-row Table 2 average table"


def test_table1_matches_report():
    means = _report_means("table1.csv", "variant")
    checked = 0
    for text in _docs():
        for label in ("SimAOU", "SimAM_Δ"):
            for cells in _table_rows(text, label):
                if len(cells) != 2 + len(PAPER_TASKS) or cells[1] not in VARIANT_BY_LABEL:
                    continue
                for task, cell in zip(PAPER_TASKS, cells[2:]):
                    expected = round(means[(METRIC_BY_LABEL[label], VARIANT_BY_LABEL[cells[1]], task)], 2)
                    assert _ours(cell) == expected, (label, cells[1], task, cell, expected)
                checked += 1
    assert checked == 6, "docs/results/README.md has a six-row Table 1 (and no other page copies it)"


SELECTED = ROOT / "docs" / "results" / "selected_rates"
TASK_BY_LABEL = {"SST-2": "sst2", "SST-5": "sst5", "MR": "mr", "Subj": "subj", "AG News": "agnews", "CB": "cb"}


def _section(heading: str) -> str:
    """docs/results/README.md from `heading` up to the next heading of any level."""
    text = (ROOT / "docs" / "results" / "README.md").read_text()
    start = text.index(heading) + len(heading)
    return text[start : text.index("\n#", start)]


def _numbers(cell: str) -> list[float]:
    """The numbers of a cell like '0.09 / −0.14' or '+0.05 [0.04, 0.05]' (Unicode minus too)."""
    return [float(x) for x in re.findall(r"[-+]?[0-9]*\.?[0-9]+", cell.replace("−", "-"))]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tokenwise_table_matches_its_report():
    rows = _csv(SELECTED / "tokenwise" / "report" / "tokenwise.csv")
    mean = {(r["task"], r["quantity"], r["metric"]): float(r["mean"]) for r in rows}
    ci = {(r["task"], r["metric"]): (float(r["ci_low"]), float(r["ci_high"])) for r in rows if r["ci_low"]}
    section = _section("### Every query token, not just the probe")
    for label, task in TASK_BY_LABEL.items():
        [cells] = _table_rows(section, label)
        probe, tokens, diff = _numbers(cells[1]), _numbers(cells[2]), _numbers(cells[3])
        assert probe == [round(mean[(task, m, "simaou")], 2) for m in ("gd", "lcgd")], cells
        assert tokens == [round(mean[(task, m, "tokenwise_simaou")], 2) for m in ("gd", "lcgd")], cells
        want = (mean[(task, "gd_minus_lcgd", "tokenwise_simaou")], *ci[(task, "tokenwise_simaou")])
        assert diff == [round(v, 2) for v in want], cells


def test_controls_table_matches_its_report():
    control = {(r["control"], r["task"], r["metric"]): float(r["mean"])
               for r in _csv(SELECTED / "report" / "controls.csv")}  # fmt: skip
    real = {(r["task"], r["metric"]): float(r["mean"]) for r in _csv(SELECTED / "report" / "table2.csv")
            if r["method"] == "gd"}  # fmt: skip
    section = _section("### Is the similarity about the task?")
    for label, task in TASK_BY_LABEL.items():
        [cells] = _table_rows(section, label)
        want = [real[(task, m)] for m in ("simaou", "simam_delta")]
        for name in ("cross-task", "shuffled-gd", "shuffled-icl"):
            want += [control[(name, task, m)] for m in ("simaou", "simam_delta")]
        got = [v for cell in cells[1:5] for v in _numbers(cell)]
        assert got == [round(v, 2) + 0.0 for v in want], cells


def test_order_table_matches_its_report():
    rows = _csv(SELECTED / "order" / "report" / "order_sensitivity.csv")
    std = {(r["task"], r["method"]): float(r["mean_std"]) for r in rows}
    section = _section("### Does the order of the demonstrations matter?")
    for label, task in TASK_BY_LABEL.items():
        [cells] = _table_rows(section, label)
        assert _numbers(cells[1])[0] == round(std[(task, "icl")], 3), cells
        assert _numbers(cells[2])[0] == round(std[(task, "gd")], 3), cells
        ratio = std[(task, "icl")] / std[(task, "gd")]
        assert _numbers(cells[3])[0] == (round(ratio, 2) if ratio < 1 else round(ratio)), cells


def test_vectors_table_matches_its_cells():
    root = ROOT / "docs" / "results" / "vectors" / "analyses"
    section = _section("## Task and function vectors against GD (`--analyses`)")
    for label, task in TASK_BY_LABEL.items():
        [cells] = _table_rows(section, label)
        [tv_path] = (root / "task-vectors" / task / "trained").glob("*.json")
        [fv_path] = (root / "function-vectors" / task / "trained").glob("*.json")
        tv, fv = json.loads(tv_path.read_text()), json.loads(fv_path.read_text())

        def r(x, digits=2):
            return round(x, digits) + 0.0

        assert _numbers(cells[1]) == [r(tv["accuracy"]["zs"])] and _numbers(cells[2]) == [r(tv["accuracy"]["icl"])], cells
        assert _numbers(cells[3]) == [r(tv["best_accuracy"]), tv["best_layer"], r(tv["heldout_accuracy"])], cells
        assert _numbers(cells[4]) == [r(fv["best_accuracy"]), fv["best_layer"], r(fv["heldout_accuracy"])], cells
        effect = fv["gold_probability"]["icl"] - fv["gold_probability"]["shuffled_icl"]
        assert _numbers(cells[5]) == [r(effect, 3), r(float(np.max(fv["cie"])), 3)], cells
        align = [r(float(np.nanmean([np.nan if v is None else v for v in tv["methods"][m]["alignment"]])), 3)
                 for m in ("gd", "lcgd")]  # fmt: skip
        assert _numbers(cells[6]) == align, cells
        assert _numbers(cells[7]) == [r(fv["methods"][m]["spearman_kv_cie"]) for m in ("gd", "lcgd")], cells


def test_stability_tables_match_their_cells():
    """Each row of the stability tables at the paper's rates (trained and untrained) is the largest
    change over its committed cells, and its count of cells past the report's 0.01 mark."""
    section = _section("## Numerical stability: how far float rounding alone moves a cell (`--stability-check`)")
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for grid in ("paper", "untrained"):
        for path in (ROOT / "docs" / "results" / "stability" / grid / "cells").rglob("*.json"):
            method = path.stem.split("-seed")[0]
            cells.setdefault((path.parent.parent.name, path.parent.name, method), []).append(json.loads(path.read_text()))
    rows = [r for line in section.splitlines() if line.startswith("| ") and len(r := _row(line)) == 11 and r[0] in PAPER_TASKS]
    assert {(task, variant, method.lower()) for task, variant, method, *_ in rows} == set(cells)
    for task, variant, method, seeds, lr, scalar, layer, accuracy, *_, unstable in rows:
        found = [c["stability"] for c in cells[(task, variant, method.lower())]]
        assert len(seeds.split(",")) == len(found) and float(scalar) == float(f"{max(s['max_scalar'] for s in found):.1e}")
        assert float(layer) == float(f"{max(max(s['per_layer'].values()) for s in found):.1e}")
        assert float(accuracy) == round(max(s["ft_accuracy"] for s in found), 3)
        assert int(unstable.split()[0]) == sum(s["max_scalar"] > 0.01 for s in found), (task, variant, method)


def _row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_simam_anatomy_table_is_its_summary():
    """The shift-and-pattern table in docs/results is the committed summary of experiments/simam_anatomy.py,
    and that summary's centered SimAM_Δ is the mean of its per-layer CSV."""
    section = _section("## LCGD and SimAM_Δ: where the gap lives").splitlines()
    for rates in ("paper_rates", "selected_rates"):
        root = ROOT / "docs" / "results" / "lcgd_simam" / rates
        summary = (root / "summary.md").read_text().strip().splitlines()
        assert all(line in section for line in summary), rates
        values: dict[tuple[str, str], list[float]] = {}
        for row in _csv(root / "simam_anatomy.csv"):
            values.setdefault((row["task"], row["quantity"]), []).append(float(row["value"]))
        for line in summary[2:]:
            task, method, _, centered, *_ = _row(line)
            if method != "ICL":
                found = values[(task.split()[0], f"{method.lower()}_simam_delta_centered")]
                assert float(centered) == round(float(np.mean(found)), 3), (rates, line)


def test_ablation_table_is_its_summary_and_its_cells():
    """The factor table in docs/results is the committed summary of `jaxicl ablate`, and each CSV
    row's SimAM_Δ is the mean over the committed cells it names."""
    section = _section("## LCGD and SimAM_Δ: one factor at a time").splitlines()
    root = ROOT / "docs" / "results" / "lcgd_simam" / "ablation"
    summary = [line for line in (root / "README.md").read_text().splitlines() if line.startswith(("| ", "- **"))]
    assert len(summary) > 3 and all(line in section for line in summary)
    rows = _csv(root / "lcgd_simam_ablation.csv")
    for row in rows:
        cells = [json.loads(p.read_text()) for p in (root / row["cells_from"] / "cells" / row["task"]).rglob(
            f"{row['method']}-*.json")]  # fmt: skip
        assert len(cells) == int(row["n_runs"]), row
        assert float(row["simam_delta"]) == pytest.approx(np.mean([c["scalar"]["simam_delta"] for c in cells]))
        assert row["lr"] == "/".join(repr(float(lr)) for lr in sorted({c["lr"] for c in cells})), row
