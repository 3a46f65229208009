"""jaxicl/report/ on synthetic run directories: statistics, emphasis, exclusion of bad cells, plots, determinism."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxicl import report
from jaxicl.report import Stat, fmt_stat, load_cells, mean_std, write_report

N_LAYERS = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_cell(task: str, variant: str, method: str, seed: int, perm: int, **values: float) -> dict:
    """A schema-complete cell whose per-layer lists are constant, so every scalar equals its layers."""
    metrics = {"simaou_norm": 0.2, "simaou": 0.1, "simam": 0.4, "simam_delta": 0.3, "zsl_simam": 0.35,
               "random_simaou": 0.002, "random_simaou_gauss": 0.0}
    metrics.update({k: v for k, v in values.items() if k in metrics})
    return {
        "task": task, "model": "tiny-test", "variant": variant, "method": method, "seed": seed, "perm": perm,
        "k": 32, "k_icl": values.get("k_icl", 32), "n_eval": 50, "lr": 0.001,
        "accuracy": {"zs": values.get("zs", 0.5), "icl": values.get("icl", 0.8), "ft": values.get("ft", 0.6)},
        "per_layer": {k: [v] * N_LAYERS for k, v in metrics.items()},
        "scalar": {**metrics, "rec2ftp": values.get("rec2ftp", 80.0)},
        "config": {}, "versions": {}, "seconds": {},
    }


def cell_path(run_dir: Path, cell: dict) -> Path:
    return (run_dir / "cells" / cell["task"] / cell["variant"]
            / f"{cell['method']}-seed{cell['seed']}-perm{cell['perm']}.json")


def write_cell(run_dir: Path, cell: dict) -> Path:
    path = cell_path(run_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))
    return path


def new_run(tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    (run_dir / "cells").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"model": "tiny-test", "n_eval": 50, "tasks": ["sst2", "subj"]}))
    return run_dir


SIMAOU_NORM = {  # (task, method) → values over the three runs
    ("sst2", "gd"): (0.1, 0.2, 0.3),      # 0.20 ± 0.10
    ("sst2", "lcgd"): (0.3, 0.4, 0.5),    # 0.40 ± 0.10
    ("subj", "gd"): (0.5, 0.6, 0.7),      # 0.60 ± 0.10
    ("subj", "lcgd"): (0.1, 0.1, 0.1),    # 0.10 ± 0.00
}
RUNS = ((2, 0), (3, 1), (4, 2))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Two tasks × GD/LCGD × three runs (trained), GD on trained-embeddings; α and grad norms on subj."""
    run_dir = new_run(tmp_path)
    rng = np.random.default_rng(0)
    for (task, method), values in SIMAOU_NORM.items():
        for (seed, perm), v in zip(RUNS, values):
            cell = make_cell(task, "trained", method, seed, perm, simaou_norm=v,
                             simaou=0.5 if method == "gd" else 0.2, simam_delta=0.1 if method == "gd" else 0.4)
            if task == "subj":
                cell["grad_norms"] = {"kv": rng.uniform(0.1, 2.0, (5, N_LAYERS)).tolist(),
                                      "all": rng.uniform(0.1, 2.0, (5, N_LAYERS)).tolist()}
                if method == "lcgd":
                    cell["alpha"] = {"per_layer": [0.1 + 0.05 * seed] * N_LAYERS, "scalar": 0.1 + 0.05 * seed}
            write_cell(run_dir, cell)
    for task in ("sst2", "subj"):
        for seed, perm in RUNS:
            write_cell(run_dir, make_cell(task, "trained-embeddings", "gd", seed, perm, simaou=0.3, simam_delta=0.05))
    return run_dir


def section(md: str, heading: str) -> str:
    """The text of a '## ...' section (up to the next '## ')."""
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start:] if end < 0 else md[start:end]


def first_table(text: str) -> list[list[str]]:
    """Rows (header first, separator dropped) of the first markdown table in `text`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def table2_row(md: str, metric: str, method: str) -> dict[str, str]:
    rows = first_table(section(md, "## Table 2"))
    header = rows[0]
    row = next(r for r in rows[1:] if r[0] == metric and r[1] == method)
    return dict(zip(header, row))


def read_csvs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}


# ----------------------------------------------------------------------------- statistics


def test_mean_std_uses_sample_std():
    stat = mean_std([0.1, 0.2, 0.3])
    assert stat.mean == pytest.approx(0.2) and stat.std == pytest.approx(0.1) and stat.n == 3
    assert fmt_stat(stat) == "0.20 ± 0.10"


def test_single_run_has_no_std():
    stat = mean_std([0.25])
    assert stat == Stat(0.25, None, 1)
    assert fmt_stat(stat) == "0.25 ± —"
    assert mean_std([]) is None and fmt_stat(None) == "n/a"


def test_table2_cells_are_mean_pm_std_over_runs(run_dir: Path):
    md = write_report(run_dir, plots=False).read_text()
    gd = table2_row(md, "SimAOU_norm", "GD")
    assert gd["SST2"] == "0.20 ± 0.10"
    assert gd["Subj"] == "**0.60 ± 0.10**"


def test_single_seed_cell_in_report(tmp_path: Path):
    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0, simaou_norm=0.25))
    md = write_report(run_dir, plots=False).read_text()
    assert table2_row(md, "SimAOU_norm", "GD")["SST2"] == "0.25 ± —"
    assert table2_row(md, "SimAOU_norm", "LCGD")["SST2"] == "n/a"


# ----------------------------------------------------------------------------- emphasis and averages


def test_bold_marks_the_higher_method(run_dir: Path):
    md = write_report(run_dir, plots=False).read_text()
    # SimAOU_norm: LCGD higher on SST2, GD higher on Subj.
    assert table2_row(md, "SimAOU_norm", "LCGD")["SST2"] == "**0.40 ± 0.10**"
    assert table2_row(md, "SimAOU_norm", "GD")["SST2"] == "0.20 ± 0.10"
    assert table2_row(md, "SimAOU_norm", "LCGD")["Subj"] == "0.10 ± 0.00"
    # SimAOU: GD 0.5 vs LCGD 0.2 everywhere; SimAM_Δ: the other way round.
    assert table2_row(md, "SimAOU", "GD")["SST2"].startswith("**")
    assert not table2_row(md, "SimAOU", "LCGD")["SST2"].startswith("**")
    assert table2_row(md, "SimAM_Δ", "LCGD")["Subj"].startswith("**")
    assert not table2_row(md, "SimAM_Δ", "GD")["Subj"].startswith("**")


def test_best_flags_ties_and_missing():
    assert report.best_flags({"gd": 0.3, "lcgd": 0.1}) == {"gd": True, "lcgd": False}
    assert report.best_flags({"gd": 0.2, "lcgd": 0.2}) == {"gd": True, "lcgd": True}
    assert report.best_flags({"gd": 0.2, "lcgd": None}) == {"gd": False, "lcgd": False}


def test_average_is_mean_over_tasks(run_dir: Path):
    out = write_report(run_dir, plots=False).parent
    md = (out / "report.md").read_text()
    assert table2_row(md, "SimAOU_norm", "GD")["Average"] == "0.400"   # (0.2 + 0.6) / 2
    assert table2_row(md, "SimAOU_norm", "LCGD")["Average"] == "0.250"  # (0.4 + 0.1) / 2
    rows = [line.split(",") for line in (out / "table2.csv").read_text().splitlines()]
    avg = next(r for r in rows if r[:3] == ["simaou_norm", "gd", "average"])
    assert float(avg[4]) == pytest.approx(0.4) and avg[3] == "2"


def test_average_weights_tasks_not_runs_and_marks_missing_tasks(tmp_path: Path):
    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0, simaou_norm=0.2))
    for (seed, perm), v in zip(RUNS, (0.4, 0.5, 0.6)):
        write_cell(run_dir, make_cell("subj", "trained", "gd", seed, perm, simaou_norm=v))
    write_cell(run_dir, make_cell("subj", "trained", "lcgd", 4, 0, simaou_norm=0.5))
    md = write_report(run_dir, plots=False).read_text()
    assert table2_row(md, "SimAOU_norm", "GD")["Average"] == "0.350"  # (0.2 + 0.5) / 2, not 1.7 / 4
    assert table2_row(md, "SimAOU_norm", "LCGD")["Average"] == "0.500*"


def test_paper_tables_are_shown_with_their_bolding(run_dir: Path):
    md = write_report(run_dir, plots=False).read_text()
    paper = first_table(section(md, "Paper (P4 Table 2"))
    header = paper[0]
    rows = {(r[0], r[1]): dict(zip(header, r)) for r in paper[1:]}
    assert rows[("SimAOU", "GD")]["AGNews"] == "**0.18 ± 0.03**"
    assert rows[("SimAOU", "LCGD")]["AGNews"] == "0.13 ± 0.01"
    assert rows[("SimAOU_norm", "GD")]["Average"] == "0.187"
    assert rows[("SimAM", "GD")]["CB"] == "**0.20 ± 0.03**"
    paper1 = first_table(section(md, "Paper (P4 Table 1"))
    assert any(r[1] == "No Training" for r in paper1)
    assert "0.04 ± 0.01 ⚑" in section(md, "Paper (P4 Table 1")


def test_paper_table2_averages_match_its_cells():
    for key, by_task in report.PAPER_TABLE2.items():
        mean = np.mean([by_task[t][0] for t in report.PAPER_TASKS])
        assert mean == pytest.approx(report.PAPER_TABLE2_AVG[key], abs=0.0015), key


# ----------------------------------------------------------------------------- Table 1


def test_table1_has_rows_for_present_variants_only(run_dir: Path):
    md = write_report(run_dir, plots=False).read_text()
    rows = first_table(section(md, "## Table 1"))
    assert rows[0] == ["metric", "model", "SST2", "Subj"]
    assert [(r[0], r[1]) for r in rows[1:]] == [
        ("SimAOU", "Trained"), ("SimAOU", "Trained Embeddings"),
        ("SimAM_Δ", "Trained"), ("SimAM_Δ", "Trained Embeddings"),
        ("SimAOU_norm", "Trained"), ("SimAOU_norm", "Trained Embeddings"),
    ]
    by = {(r[0], r[1]): r for r in rows[1:]}
    assert by[("SimAOU", "Trained")][2] == "**0.50 ± 0.00**"          # GD trained 0.5 > TE 0.3
    assert by[("SimAM_Δ", "Trained Embeddings")][2] == "0.05 ± 0.00"  # trained 0.1 is higher


def test_table1_underlines_close_top_two():
    assert report.close_top_two({"a": 0.064, "b": 0.07, "c": 0.01}) == {"a": True, "b": True, "c": False}
    assert report.close_top_two({"a": 0.05, "b": 0.09}) == {"a": False, "b": False}


def test_table1_without_gd_cells(tmp_path: Path):
    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "lcgd", 2, 0))
    md = write_report(run_dir, plots=False).read_text()
    assert "No GD cells." in section(md, "## Table 1")


# ----------------------------------------------------------------------------- bad cells


def _bad_cell(kind: str) -> tuple[str, str]:
    """(file text, what the report must say) for a cell with outlandish numbers that must not count."""
    cell = make_cell("sst2", "trained", "gd", 9, 0, simaou_norm=0.99, simaou=0.99, simam=0.99,
                     simam_delta=0.99, zs=0.0, icl=1.0, ft=1.0)
    if kind == "truncated":
        text = json.dumps(cell)
        return text[: len(text) // 2], "not valid JSON"
    if kind == "nan":
        cell["scalar"]["simaou"] = float("nan")
        return json.dumps(cell), "scalar.simaou"
    if kind == "wrong_type":
        cell["per_layer"]["simam"] = "oops"
        return json.dumps(cell), "per_layer.simam"
    if kind == "ragged":
        cell["per_layer"]["simam"] = [0.9] * (N_LAYERS + 1)
        return json.dumps(cell), "differ in length"
    if kind == "percent_accuracy":
        cell["accuracy"]["icl"] = 88.0
        return json.dumps(cell), "accuracy.icl"
    path = kind.split(".")
    obj = cell
    for part in path[:-1]:
        obj = obj[part]
    del obj[path[-1]]
    return json.dumps(cell), repr(path[-1])


BAD_KINDS = ["truncated", "nan", "wrong_type", "ragged", "percent_accuracy", "accuracy", "accuracy.ft", "scalar",
             "scalar.simam_delta", "per_layer", "per_layer.simaou_norm", "seed", "perm", "task", "method"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_cell_is_listed_and_excluded_everywhere(run_dir: Path, tmp_path: Path, kind: str):
    clean_out = tmp_path / "clean"
    write_report(run_dir, clean_out, plots=False)
    text, reason = _bad_cell(kind)
    bad = run_dir / "cells" / "sst2" / "trained" / "gd-seed9-perm0.json"
    bad.write_text(text)
    cells, problems = load_cells(run_dir)
    assert [p.path for p in problems] == ["cells/sst2/trained/gd-seed9-perm0.json"]
    assert reason in problems[0].reason
    assert all(c.seed != 9 for c in cells)
    md = write_report(run_dir, tmp_path / "dirty", plots=False).read_text()
    assert "cells/sst2/trained/gd-seed9-perm0.json" in section(md, "## Problems")
    assert read_csvs(tmp_path / "dirty") == read_csvs(clean_out)  # no number moved
    clean_md = (clean_out / "report.md").read_text()
    for heading in ("## Table 2", "## Table 1", "## Accuracy", "## Random baselines"):
        assert section(md, heading) == section(clean_md, heading)


def test_content_that_disagrees_with_path_is_excluded(run_dir: Path):
    cell = make_cell("sst2", "trained", "gd", 9, 0)
    path = cell_path(run_dir, {**cell, "task": "subj"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))
    cells, problems = load_cells(run_dir)
    assert len(problems) == 1 and "task='sst2' but path says 'subj'" in problems[0].reason
    assert all(c.seed != 9 for c in cells)


def test_duplicate_cell_outside_the_grid_is_excluded(run_dir: Path):
    extra = run_dir / "cells" / "old" / "copy.json"
    extra.parent.mkdir(parents=True)
    extra.write_text(json.dumps(make_cell("sst2", "trained", "gd", 2, 0, simaou_norm=0.99)))
    cells, problems = load_cells(run_dir)
    assert [p.path for p in problems] == ["cells/sst2/trained/gd-seed2-perm0.json"]
    assert "duplicate of cells/old/copy.json" in problems[0].reason
    assert sum(c.run == (2, 0) and c.task == "sst2" and c.method == "gd" and c.variant == "trained"
               for c in cells) == 1


def test_odd_layer_count_is_excluded(run_dir: Path):
    cell = make_cell("sst2", "trained", "gd", 9, 0)
    cell["per_layer"] = {k: v + [v[0]] for k, v in cell["per_layer"].items()}
    write_cell(run_dir, cell)
    cells, problems = load_cells(run_dir)
    assert len(problems) == 1 and f"{N_LAYERS + 1} layers" in problems[0].reason
    assert all(c.n_layers == N_LAYERS for c in cells)


def test_missing_run_json_is_reported(run_dir: Path):
    (run_dir / "run.json").unlink()
    md = write_report(run_dir, plots=False).read_text()
    assert "`run.json`: missing" in md
    assert "model: `tiny-test`" in md  # falls back to the cells


def test_null_rec2ftp_is_counted_not_zeroed(tmp_path: Path):
    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0, rec2ftp=90.0))
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 3, 1, rec2ftp=70.0))
    null = make_cell("sst2", "trained", "gd", 4, 2)
    null["scalar"]["rec2ftp"] = None
    write_cell(run_dir, null)
    md = write_report(run_dir, plots=False).read_text()
    rows = first_table(section(md, "## Accuracy"))
    row = dict(zip(rows[0], rows[1]))
    assert row["Rec2FTP (GD)"] == "80.0 ± 14.1 (2/3 runs)"
    assert row["ZS"] == "50.0 ± 0.0" and row["runs (GD/LCGD)"] == "3/0"


# ----------------------------------------------------------------------------- accuracy and baselines


def test_accuracy_averages_zs_icl_per_run(tmp_path: Path):
    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0, zs=0.4, icl=0.9, ft=0.5, k_icl=30))
    write_cell(run_dir, make_cell("sst2", "trained", "lcgd", 2, 0, zs=0.4, icl=0.9, ft=0.7, k_icl=30))
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 3, 1, zs=0.6, icl=0.7, ft=0.6, k_icl=32))
    md = write_report(run_dir, plots=False).read_text()
    rows = first_table(section(md, "## Accuracy"))
    row = dict(zip(rows[0], rows[1]))
    assert row["ZS"] == "50.0 ± 14.1"   # runs: 0.4, 0.6 (the LCGD cell does not count twice)
    assert row["ICL"] == "80.0 ± 14.1"
    assert row["FT (GD)"] == "55.0 ± 7.1" and row["FT (LCGD)"] == "70.0 ± —"
    assert row["k_icl"] == "30–32"


def test_random_baselines_row(run_dir: Path):
    md = write_report(run_dir, plots=False).read_text()
    rows = first_table(section(md, "## Random baselines"))
    by = {r[0]: r for r in rows[1:]}
    assert by["Random SimAOU U[0,1), Trained"][1:] == ["0.002 ± 0.000", "0.002 ± 0.000", "0.002"]
    assert by["Random SimAOU Gaussian, Trained"][1] == "0.000 ± 0.000"
    assert by["Random SimAOU U[0,1), paper (authors' files)"][1:] == ["0.002", "0.002", "0.002"]


# ----------------------------------------------------------------------------- time per stage


def write_seconds(run_dir: Path, rel: str, seconds: dict | str) -> Path:
    path = run_dir / "seconds" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(seconds if isinstance(seconds, str) else json.dumps(seconds))
    return path


SHARED = {"prompts": 1.0, "zero_shot": 10.0, "icl": 20.0}
GD = {**SHARED, "finetune_gd": 30.0, "ftzs_gd": 5.0, "metrics_gd": 0.5}
GD_THEN_LCGD = {**GD, "finetune_lcgd": 100.0, "ftzs_lcgd": 6.0, "metrics_lcgd": 0.25}  # cumulative stopwatch


@pytest.fixture
def timed_run(tmp_path: Path) -> Path:
    """Trained: sst2 seed 2 (GD + cumulative LCGD file), subj seed 3 (GD only), subj seed 4 (LCGD resumed
    from cache: its file restarts the stopwatch, so its shared stages are near zero); one no-training group."""
    run_dir = new_run(tmp_path)
    write_seconds(run_dir, "sst2/trained/gd-seed2-perm0.json", GD)
    write_seconds(run_dir, "sst2/trained/lcgd-seed2-perm0.json", GD_THEN_LCGD)
    write_seconds(run_dir, "subj/trained/gd-seed3-perm1.json", {**GD, "zero_shot": 0.5})
    write_seconds(run_dir, "subj/trained/gd-seed4-perm2.json", GD)
    write_seconds(run_dir, "subj/trained/lcgd-seed4-perm2.json", {"prompts": 2.0, "zero_shot": 0.25, "icl": 0.25,
                                                                  "finetune_lcgd": 50.0, "ftzs_lcgd": 4.0,
                                                                  "metrics_lcgd": 0.25})
    write_seconds(run_dir, "sst2/no-training/gd-seed2-perm0.json", GD)
    (run_dir / "timing.json").write_text(json.dumps({"load_s": 12.5, "total_s": 600.0}))
    return run_dir


def time_csv(out: Path) -> dict[tuple[str, str], tuple[str, str]]:
    rows = [line.split(",") for line in (out / "time_per_stage.csv").read_text().splitlines()]
    assert rows[0] == ["variant", "stage", "groups", "seconds"]
    return {(r[0], r[1]): (r[2], r[3]) for r in rows[1:]}


def test_time_per_stage_sums_groups_and_merges_cumulative_files(timed_run: Path):
    out = write_report(timed_run, plots=False).parent
    md = (out / "report.md").read_text()
    rows = first_table(section(md, "## Time per stage"))
    by = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert list(by) == ["Trained", "No Training"]
    trained = by["Trained"]
    # Each stage once per group (max over the group's files, never GD file + LCGD file);
    # seed 4's prompts: max(1.0 from its GD file, 2.0 from its resumed LCGD file).
    assert trained["groups"] == "3"
    assert trained["prompts"] == "4.0"              # 1 + 1 + 2
    assert trained["zero-shot"] == "20.5"           # 10 + 0.5 + 10
    assert trained["ICL"] == "60.0"
    assert trained["finetune GD"] == "90.0"
    assert trained["finetune LCGD"] == "150.0"      # 100 + 50; seed 3 has none
    assert trained["evaluate GD-finetuned"] == "15.0"
    assert trained["evaluate LCGD-finetuned"] == "10.0"
    assert trained["metrics"] == "2.0"              # GD 3 × 0.5 + LCGD 2 × 0.25
    assert trained["total"] == "351.5 (0.10 h)"
    assert trained["mean per group"] == "117.2"    # 351.5 / 3
    assert by["No Training"]["finetune LCGD"] == "n/a" and by["No Training"]["total"] == "66.5 (0.02 h)"
    text = section(md, "## Time per stage")
    assert "Model load: 12.5 s" in text and "last `jaxicl run` invocation only" in text
    assert "count their load time only" in text
    csv = time_csv(out)
    assert csv[("trained", "finetune_lcgd")] == ("3", "150.0")
    assert csv[("trained", "total")] == ("3", "351.5")
    assert float(csv[("trained", "mean_per_group")][1]) == pytest.approx(351.5 / 3)
    assert csv[("no-training", "finetune_lcgd")] == ("1", "")
    assert csv[("timing.json", "load_s")] == ("", "12.5") and csv[("timing.json", "total_s")] == ("", "600.0")


def test_lcgd_file_alone_equals_both_files(timed_run: Path, tmp_path: Path):
    """The cumulative LCGD file already holds the GD stages: dropping the GD file changes nothing."""
    a = write_report(timed_run, tmp_path / "a", plots=False).parent
    (timed_run / "seconds" / "sst2" / "trained" / "gd-seed2-perm0.json").unlink()
    b = write_report(timed_run, tmp_path / "b", plots=False).parent
    assert time_csv(a) == time_csv(b)


@pytest.mark.parametrize("rel, text, reason", [
    ("sst2/trained/gd-seed9-perm0.json", '{"prompts": 1', "not valid JSON"),
    ("sst2/trained/gd-seed9-perm0.json", '{"prompts": -1.0}', "'prompts' must be a finite number"),
    ("sst2/trained/gd-seed9-perm0.json", '{"prompts": "1.0"}', "'prompts' must be a finite number"),
    ("sst2/trained/gd-seed9-perm0.json", '{"warmup": 1.0}', "unknown stage 'warmup'"),
    ("sst2/trained/gd-seed9-perm0.json", '[1.0]', "top level must be"),
    ("sst2/gd-seed9-perm0.json", json.dumps(GD), "path is not seconds/"),
])
def test_malformed_seconds_file_is_listed_and_left_out(timed_run: Path, tmp_path: Path, rel: str, text: str,
                                                       reason: str):
    clean = write_report(timed_run, tmp_path / "clean", plots=False).parent
    write_seconds(timed_run, rel, text)
    md = write_report(timed_run, tmp_path / "dirty", plots=False).read_text()
    problems = section(md, "## Problems")
    assert f"`seconds/{rel}`" in problems and reason in problems
    assert time_csv(tmp_path / "dirty") == time_csv(clean)
    assert section(md, "## Time per stage") == section((clean / "report.md").read_text(), "## Time per stage")


def test_malformed_timing_json_is_listed(timed_run: Path):
    (timed_run / "timing.json").write_text(json.dumps({"load_s": "fast"}))
    out = write_report(timed_run, plots=False).parent
    md = (out / "report.md").read_text()
    assert "`timing.json`" in section(md, "## Problems")
    assert "Model load: not recorded" in section(md, "## Time per stage")
    assert not any(variant == "timing.json" for variant, _ in time_csv(out))


def test_no_seconds_recorded(run_dir: Path):
    out = write_report(run_dir, plots=False).parent
    text = section((out / "report.md").read_text(), "## Time per stage")
    assert "None recorded" in text and "Model load: not recorded" in text
    assert time_csv(out) == {}


# ----------------------------------------------------------------------------- plots


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), path
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_pngs_are_written_and_linked(run_dir: Path):
    out = write_report(run_dir).parent
    md = (out / "report.md").read_text()
    names = ["fig3_per_layer.png", "fig3_vs_paper.png", "per_layer_sst2.png", "per_layer_subj.png",
             "fig2_alpha.png", "fig4_grad_norms_subj.png"]
    for name in names:
        assert_png(out / name)
        assert f"]({name})" in md
    alpha = (out / "alpha.csv").read_text().splitlines()
    assert alpha[0] == "task,n,mean,std"
    task, n, mean, std = alpha[1].split(",")
    assert (task, n) == ("subj", "3") and float(mean) == pytest.approx(0.25) and float(std) == pytest.approx(0.05)


def test_figures_are_skipped_without_alpha_or_grad_norms(tmp_path: Path):
    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0))
    out = write_report(run_dir).parent
    md = (out / "report.md").read_text()
    assert "No cell carries α" in md and "No cell carries grad_norms." in md
    assert not (out / "fig2_alpha.png").exists()
    assert_png(out / "fig3_per_layer.png")


def test_grad_norm_task_falls_back_to_first_with_norms(run_dir: Path, tmp_path: Path):
    chosen, gd, lcgd = report.grad_norm_cells(load_cells(run_dir)[0], "sst2")
    assert chosen == "subj" and gd.run == (2, 0) and lcgd.method == "lcgd"
    assert_png(report.plot_grad_norms(None, lcgd, tmp_path / "lcgd_only.png"))


def test_alpha_in_alpha_metrics_layout_is_read():
    cell = make_cell("sst2", "trained", "lcgd", 2, 0)
    cell["alpha"] = {"per_layer": {"alpha": [0.1, 0.2, 0.3, 0.4]}, "scalar": {"alpha": 0.25}}
    parsed = report.parse_cell(cell, "x.json")
    assert parsed.alpha == 0.25 and parsed.alpha_per_layer == (0.1, 0.2, 0.3, 0.4)


# ----------------------------------------------------------------------------- determinism


def test_output_is_deterministic(run_dir: Path, tmp_path: Path):
    a = write_report(run_dir, tmp_path / "a")
    b = write_report(run_dir, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert read_csvs(a.parent) == read_csvs(b.parent) and len(read_csvs(a.parent)) == 9
    pngs = sorted(p.name for p in a.parent.glob("*.png"))
    assert pngs and all((a.parent / n).read_bytes() == (b.parent / n).read_bytes() for n in pngs)


def test_output_does_not_depend_on_file_creation_order(run_dir: Path, tmp_path: Path):
    copy_dir = tmp_path / "copy" / run_dir.name
    files = sorted((run_dir / "cells").glob("**/*.json"), reverse=True)
    (copy_dir / "cells").mkdir(parents=True)
    shutil.copy(run_dir / "run.json", copy_dir / "run.json")
    for f in files:
        target = copy_dir / f.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    a = write_report(run_dir, tmp_path / "a", plots=False)
    b = write_report(copy_dir, tmp_path / "b", plots=False)
    assert a.read_bytes() == b.read_bytes()
    assert read_csvs(a.parent) == read_csvs(b.parent)


def test_default_out_dir(run_dir: Path):
    path = write_report(run_dir, plots=False)
    assert path == run_dir / "report" / "report.md"
    assert not list(path.parent.glob("*.png")) and "Not drawn (plots=False)." in path.read_text()
    cells, problems = load_cells(run_dir)
    assert problems == [] and len(cells) == 18  # the report folder is not read back as cells


def test_make_cell_is_schema_valid():
    cell = make_cell("sst2", "trained", "gd", 2, 0)
    parsed = report.parse_cell(copy.deepcopy(cell), "cells/sst2/trained/gd-seed2-perm0.json")
    assert parsed.value("simaou_norm") == pytest.approx(0.2) and parsed.scalar["rec2ftp"] == 80.0


def test_compare_runs_puts_two_run_directories_side_by_side_on_shared_runs(tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_runs", Path(__file__).parents[1] / "experiments" / "compare_runs.py")
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)
    a, b = new_run(tmp_path, "a"), new_run(tmp_path, "b")
    for seed, perm in RUNS:
        write_cell(a, make_cell("sst2", "trained", "gd", seed, perm, ft=0.5, simaou=0.1))
    for seed, perm in RUNS[:2]:  # b has two of the three runs: both sides use those two
        cell = make_cell("sst2", "trained", "gd", seed, perm, ft=0.7 + 0.1 * seed, simaou=0.3)
        write_cell(b, cell | {"lr": 0.0001})
    lines = compare_runs.compare(a, b, ("paper", "selected"), "trained")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[:4] for r in rows] == [["sst2", "GD", "paper", "0.001"], ["sst2", "GD", "selected", "0.0001"]]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert rows[0][header.index("acc ft")] == "0.500 ± 0.000" and rows[1][header.index("acc ft")] == "0.950 ± 0.071"
    assert rows[1][header.index("SimAOU")] == "0.30 ± 0.00"
    # a report's cells.csv stands for a run whose cell files are gone (rates: the paper's)
    write_report(a, plots=False)
    from_csv = compare_runs.compare(a / "report" / "cells.csv", b, ("paper", "selected"), "trained")
    assert [c.strip() for c in from_csv[2].strip("|").split("|")][:4] == ["sst2", "GD", "paper", "0.0005 (paper's)"]
    assert from_csv[2:][0].split("|")[7:] == lines[2:][0].split("|")[7:]  # the same accuracies and metrics


# --- the hierarchical bootstrap (issue 15) ------------------------------------------------------------


def test_bootstrap_of_one_run_with_one_example_is_that_value():
    assert report.hierarchical_bootstrap([[0.3]]) == (0.3, 0.3)
    assert report.hierarchical_bootstrap([[0.3], [0.3]]) == (0.3, 0.3)


def test_bootstrap_is_seeded_and_refuses_bad_input():
    runs = [np.linspace(0, 1, 20), np.linspace(0.5, 2, 30)]
    assert report.hierarchical_bootstrap(runs) == report.hierarchical_bootstrap(runs)
    assert report.hierarchical_bootstrap(runs, seed=1) != report.hierarchical_bootstrap(runs)
    for bad in ([], [[]], [[0.1, float("nan")]]):
        with pytest.raises(ValueError):
            report.hierarchical_bootstrap(bad)


@pytest.mark.parametrize("n_runs, n_examples, run_sd", [(1, 60, 0.0), (20, 10, 0.5)])
def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time(n_runs, n_examples, run_sd):
    """Synthetic normal data with true mean 0.3: examples only (one run), and runs + examples."""
    rng = np.random.default_rng(123)
    hits, trials = 0, 200
    for trial in range(trials):
        run_means = 0.3 + run_sd * rng.standard_normal(n_runs)
        runs = [m + rng.standard_normal(n_examples) for m in run_means]
        low, high = report.hierarchical_bootstrap(runs, n_resamples=400, seed=trial)
        hits += low <= 0.3 <= high
    assert 0.88 <= hits / trials <= 0.99, hits / trials


def _with_examples(cell: dict, values) -> dict:
    values = [float(v) for v in values]
    cell = copy.deepcopy(cell)
    cell["n_eval"] = len(values)
    for metric in report.TABLE_METRICS:
        cell["per_example"] = cell.get("per_example", {}) | {metric: values}
        cell["scalar"][metric] = float(np.mean(values))
        cell["per_layer"][metric] = [float(np.mean(values))] * N_LAYERS
    return cell


def test_gd_minus_lcgd_is_paired_by_run_and_example_and_marked_when_it_excludes_zero(tmp_path: Path):
    run_dir = new_run(tmp_path)
    rng = np.random.default_rng(0)
    for seed, perm in RUNS:
        lcgd = rng.normal(0.2, 0.3, 40)  # wide spread between examples, a constant gap to GD
        write_cell(run_dir, _with_examples(make_cell("sst2", "trained", "lcgd", seed, perm), lcgd))
        write_cell(run_dir, _with_examples(make_cell("sst2", "trained", "gd", seed, perm), lcgd + 0.1))
    cells, problems = load_cells(run_dir)
    assert not problems and all(len(c.per_example["simaou"]) == 40 for c in cells)
    diff = report.method_difference(report.select(cells, method="gd"), report.select(cells, method="lcgd"), "simaou")
    assert diff.paired_examples and diff.n_runs == 3 and diff.excludes_zero
    assert diff.mean == pytest.approx(0.1) and diff.ci == pytest.approx((0.1, 0.1))  # pairing removes the spread
    gd_alone = report.metric_stat(report.select(cells, method="gd"), "simaou", interval=True)
    assert gd_alone.ci[1] - gd_alone.ci[0] > 0.05  # each method alone keeps it

    md = write_report(run_dir, plots=False).read_text()
    assert "**+0.10 [0.10, 0.10]**" in section(md, "## Uncertainty")
    assert "6 of 6 cells keep per-example values" in md
    rows = (run_dir / "report" / "gd_minus_lcgd.csv").read_text().splitlines()
    assert rows[0] == "metric,task,n_runs,mean,ci_low,ci_high,excludes_zero,paired_examples"
    assert rows[1].startswith("simaou_norm,sst2,3,0.1") and rows[1].endswith(",1,1")
    header = (run_dir / "report" / "table2.csv").read_text().splitlines()[0]
    assert header.endswith("ci_low,ci_high")


def test_cells_without_per_example_values_are_resampled_by_run(run_dir: Path):
    cells, _ = load_cells(run_dir)
    stat = report.metric_stat(report.select(cells, variant="trained", task="sst2", method="gd"), "simaou_norm",
                              interval=True)  # fmt: skip
    assert 0.1 <= stat.ci[0] < stat.mean < stat.ci[1] <= 0.3  # runs 0.1, 0.2, 0.3: within their range
    assert "0 of 18 cells keep per-example values" in write_report(run_dir, plots=False).read_text()


def test_per_example_values_that_do_not_average_to_the_scalar_are_a_problem(tmp_path: Path):
    run_dir = new_run(tmp_path)
    cell = _with_examples(make_cell("sst2", "trained", "gd", 2, 0), [0.1, 0.3])
    cell["per_example"]["simaou"] = [0.1, 0.9]
    write_cell(run_dir, cell)
    cells, problems = load_cells(run_dir)
    assert not cells and "per_example.simaou averages to" in problems[0].reason


def test_intervals_from_cells_csv_equal_the_reports_own_for_cells_without_per_example_values(run_dir: Path):
    """experiments/intervals_from_cells_csv.py: the committed reproduction keeps only cells.csv."""
    import importlib.util

    script = Path(__file__).parents[1] / "experiments" / "intervals_from_cells_csv.py"
    spec = importlib.util.spec_from_file_location("intervals_from_cells_csv", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main
    md = write_report(run_dir, plots=False).read_text()
    out = run_dir / "intervals.md"
    main([str(run_dir / "report" / "cells.csv"), "--out", str(out)])
    assert out.read_text().strip() == section(md, "## Uncertainty").strip()


def _with_tokenwise(cell: dict, value: float) -> dict:
    """A cell of a --token-wise run: IA2's measure beside the probe-token SimAOU."""
    cell["per_layer"]["tokenwise_simaou"] = [value] * N_LAYERS
    cell["scalar"]["tokenwise_simaou"] = value
    return cell


def test_tokenwise_section_sits_beside_simaou_and_is_absent_without_token_wise_cells(run_dir: Path, tmp_path: Path):
    md = write_report(run_dir, plots=False).read_text()
    assert "No cells with token-wise records" in section(md, "## Token-wise similarity")
    assert not (run_dir / "report" / "tokenwise.csv").exists()

    tw = new_run(tmp_path, "tw")
    for seed, perm in RUNS:  # GD: SimAOU 0.5 at the probe, 0.30 over tokens; LCGD: 0.2 and 0.10
        write_cell(tw, _with_tokenwise(make_cell("sst2", "trained", "gd", seed, perm, simaou=0.5), 0.30))
        write_cell(tw, _with_tokenwise(make_cell("sst2", "trained", "lcgd", seed, perm, simaou=0.2), 0.10))
    write_cell(tw, make_cell("subj", "trained", "gd", 2, 0, simaou=0.4))  # not a token-wise cell: left out
    md = section(write_report(tw, plots=False).read_text(), "## Token-wise similarity")
    row = next(line for line in md.splitlines() if line.startswith("| SST2"))
    assert row.split(" | ")[1:6] == ["3/3", "0.50 ± 0.00", "0.20 ± 0.00", "0.30 ± 0.00", "0.10 ± 0.00"]
    assert "**+0.20 [0.20, 0.20]**" in row and "**+0.30 [0.30, 0.30]**" in row
    assert "| Subj" not in md
    rows = (tw / "report" / "tokenwise.csv").read_text().splitlines()
    assert rows[0] == "variant,task,quantity,metric,n,mean,std,ci_low,ci_high"
    diff = next(r.split(",") for r in rows if r.startswith("trained,sst2,gd_minus_lcgd,tokenwise_simaou,3,"))
    assert [float(x) for x in (diff[5], diff[7], diff[8])] == pytest.approx([0.2, 0.2, 0.2])
