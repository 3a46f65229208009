"""`jaxicl ablate` on a tiny model: each factor's run directory, the evaluations it reuses from the
baseline, LCGD's own tune, the summary's CSV, table and figure, the resume, and the refused inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("torch")

from jaxicl import cli  # noqa: E402
from jaxicl.data.tasks import get_task  # noqa: E402
from jaxicl.errors import InputError  # noqa: E402
from jaxicl.studies import ablation  # noqa: E402
from tests.test_experiment import task_spec  # noqa: E402,F401  (fixture)
from tests.test_hf_parity import _save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3")
    _save_tiny("gemma3", path)
    return str(path)


def _rates(tmp_path, task_spec) -> str:
    path = tmp_path / "gd_rates.json"
    path.write_text(json.dumps({"tiny": 0.05}))
    return str(path)


@pytest.mark.slow  # a tiny model tuned and run under four factors, then resumed
def test_ablation_runs_each_factor_reuses_the_baselines_evaluations_and_resumes(tiny_model, task_spec, tmp_path,
                                                                              capsys):
    factors = "baseline,lcgd-rate,readout-attn,keys-only"
    argv = ["ablate", "--model", tiny_model, "--gd-rates", _rates(tmp_path, task_spec), "--tasks", task_spec,
            "--n-runs", "2", "--factors", factors, "--search", "full", "--lcgd-grid", "0.005,0.02", "--k", "4",
            "--n-eval", "6", "--batch-size", "4", "--out", str(tmp_path / "out"), "--compile-cache", "off",
            "--publish", str(tmp_path / "published")]  # fmt: skip
    assert cli.main(argv) == 0
    out, published = tmp_path / "out", tmp_path / "published"
    cells = {f: sorted(p.name for p in (out / f / "cells").rglob("*.json")) for f in factors.split(",")}
    assert cells["baseline"] == cells["keys-only"] == ["gd-seed1-perm0.json", "gd-seed2-perm1.json",
                                                       "lcgd-seed1-perm0.json", "lcgd-seed2-perm1.json"]
    assert cells["lcgd-rate"] == cells["readout-attn"] == ["lcgd-seed1-perm0.json", "lcgd-seed2-perm1.json"]
    tuned = json.loads((out / "tune-lcgd" / "lr_selection.json").read_text())
    lcgd_rate = tuned["tasks"]["tiny"]["chosen"]["lr"]
    cell = json.loads(next((out / "lcgd-rate" / "cells").rglob("lcgd-seed1-perm0.json")).read_text())
    assert tuned["config"]["method"] == "lcgd" and cell["lr"] == lcgd_rate
    assert cell["config"]["lrs_source"] == "tune-lcgd/lr_selection.json"  # relative to OUT, not a machine path
    keys_only = json.loads(next((out / "keys-only" / "cells").rglob("lcgd-seed1-perm0.json")).read_text())
    assert keys_only["config"]["stepped"] == "k" and keys_only["alpha"]  # α: this factor's own GD
    base = json.loads(next((out / "baseline" / "cells").rglob("lcgd-seed1-perm0.json")).read_text())
    assert keys_only["scalar"]["simam_delta"] != base["scalar"]["simam_delta"]
    # ICL's evaluation is the baseline's, copied; an LCGD-only factor also takes GD's, so its α is computed
    group = ("evals", "tiny", "trained", "seed1-perm0")
    for name in ("readout-attn", "keys-only"):
        assert out.joinpath(name, *group, "icl.npz").read_bytes() == out.joinpath("baseline", *group, "icl.npz").read_bytes()
    assert out.joinpath("readout-attn", *group, "gd-ft.npz").read_bytes() == out.joinpath(
        "baseline", *group, "gd-ft.npz").read_bytes()  # fmt: skip
    assert json.loads(next((out / "readout-attn" / "cells").rglob("lcgd-seed1-perm0.json")).read_text())["alpha"]
    for name in factors.split(","):  # published beside the summary: run.json and cells, not the evaluations
        assert (published / name / "run.json").read_bytes() == (out / name / "run.json").read_bytes()
        assert sorted(p.name for p in (published / name / "cells").rglob("*.json")) == cells[name]
    assert (published / "tune-lcgd" / "lr_selection.json").is_file() and not list(published.rglob("*.npz"))
    assert (published / ablation.ABLATION_FILE).is_file()
    with open(published / "lcgd_simam_ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["factor"], r["method"]) for r in rows] == [(f, m) for f in factors.split(",") for m in ("gd", "lcgd")]
    by = {(r["factor"], r["method"]): r for r in rows}
    assert by[("readout-attn", "gd")]["cells_from"] == "baseline" and by[("keys-only", "gd")]["cells_from"] == "keys-only"
    assert by[("readout-attn", "gd")]["simam_delta"] == by[("baseline", "gd")]["simam_delta"]
    for r in rows:
        mean, lo, hi = (float(r[k]) for k in ("simam_delta", "simam_delta_lo", "simam_delta_hi"))
        assert lo <= mean <= hi and r["n_runs"] == "2" and np.isfinite(float(r["map_update_over_icl"]))
        assert 0 <= float(r["share_positive"]) <= 1 and 0 < float(r["mean_abs_cos"]) <= 1
        assert -1 <= float(r["simam_delta_centered"]) <= 1 and 0 <= float(r["shift_share"]) <= 1
        assert 0 <= float(r["shift_up"]) <= 1 and 0 <= float(r["shift_agreement"]) <= 1
        assert float(r["lcgd_minus_gd_lo"]) <= float(r["lcgd_minus_gd_simam_delta"]) <= float(r["lcgd_minus_gd_hi"])
    gd, lcgd = by[("baseline", "gd")], by[("baseline", "lcgd")]
    assert float(lcgd["lcgd_minus_gd_simam_delta"]) == pytest.approx(float(lcgd["simam_delta"]) - float(gd["simam_delta"]))
    summary = (published / "README.md").read_text()
    assert summary.count("LCGD − GD on SimAM_Δ averages") == 4 and "| keys-only |" in summary
    assert (published / "lcgd_simam_layers.png").stat().st_size > 1000
    record = json.loads((out / ablation.ABLATION_FILE).read_text())
    assert set(record["seconds"]) == set(factors.split(","))
    done = {p: p.stat().st_mtime_ns for p in out.rglob("cells/**/*.json")}
    capsys.readouterr()
    assert cli.main(argv) == 0  # the rerun computes nothing
    assert {p: p.stat().st_mtime_ns for p in out.rglob("cells/**/*.json")} == done


def test_a_rate_factor_runs_both_methods_at_a_multiple_of_gds_rates():
    factor = ablation.AblationConfig(gd_rates="x").factor("rate-x10")
    assert factor.methods == ("gd", "lcgd") and factor.rate_scale == 10.0
    assert ablation.scaled({"sst2": 1e-4, "cb": 4e-3}, factor, "gd.json") == ({"sst2": 1e-3, "cb": 4e-2}, "gd.json x10")
    baseline = ablation.AblationConfig(gd_rates="x").factor("baseline")
    assert ablation.scaled({"sst2": 1e-4}, baseline, "gd.json") == ({"sst2": 1e-4}, "gd.json")


def test_the_paper_rate_factor_runs_both_methods_at_each_tasks_paper_rate(tmp_path):
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"sst2": 1e-4, "cb": 4e-3}))
    config = ablation.AblationConfig(gd_rates=str(rates), tasks=("sst2", "cb"), factors=("baseline", "paper-rate"))
    ablation.check_ablation(config)
    factor = config.factor("paper-rate")
    run_config = config.run_config(factor, *ablation.scaled({"sst2": 1e-4, "cb": 4e-3}, factor, str(rates)))
    assert factor.methods == ("gd", "lcgd") and run_config.lrs is None and run_config.lrs_source is None
    assert [run_config.learning_rate(get_task(t)) for t in ("sst2", "cb")] == [(0.0005, "paper"), (0.08, "paper")]


def test_combined_factors_change_every_parts_setting_at_once():
    factor = ablation.named_factor("paper-rate+layer-mean")
    assert factor.paper_rates and dict(factor.changes) == {"layer_reduction": "mean"}
    assert factor.methods == ("gd", "lcgd")  # paper-rate reruns GD, so the combination does
    both = ablation.named_factor("readout-attn+rate-x0.1")
    assert both.methods == ("gd", "lcgd") and both.rate_scale == 0.1
    assert dict(both.changes) == {"lcgd_readout": "attn"}
    assert ablation.named_factor("readout-attn+layer-mean").methods == ("lcgd",)


@pytest.mark.parametrize("changes, message", [
    ({"factors": ("baseline", "nosuch")}, "--factors: unknown nosuch; known: baseline, lcgd-rate"),
    ({"factors": ("baseline", "layer-mean+nosuch")}, "--factors: unknown nosuch"),
    ({"factors": ("baseline", "lcgd-rate+layer-mean")}, "lcgd-rate cannot be combined with another factor"),
    ({"factors": ("baseline", "keys-only+values-only")}, "two parts change the same setting"),
    ({"factors": ("baseline", "paper-rate+rate-x10")}, "paper-rate and rate-x<S> cannot be combined"),
    ({"factors": ("baseline", "rate-x0")}, "rate-x0: the scale after rate-x must be a positive number"),
    ({"factors": ("baseline", "rate-xfast")}, "rate-xfast: the scale after rate-x must be a positive number"),
    ({"factors": ("keys-only",)}, "--factors must include baseline"),
    ({"gd_rates": "paper"}, "--gd-rates must be GD's lr_selection.json"),
    ({"tasks": ("sst2", "mr")}, "has no learning rate for task mr"),
    ({"lcgd_grid": (0.1, -1.0)}, "learning rate -1.0 in the grid"),
])  # fmt: skip
def test_a_bad_ablation_is_refused_before_a_model_loads(changes, message, tmp_path, monkeypatch):
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"sst2": 1e-4}))
    monkeypatch.setattr(ablation, "load", lambda *a: pytest.fail("loaded a model before the checks"))
    config = ablation.AblationConfig(**({"gd_rates": str(rates), "tasks": ("sst2",)} | changes))
    with pytest.raises(InputError, match=message):
        ablation.ablate(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_two_processes_splitting_the_factors_add_to_one_record(tmp_path):
    """Each process reads ablation.json under the lock before it adds its seconds, so neither erases
    the other's, and the recorded factors are the union of theirs."""
    first = ablation.AblationConfig(gd_rates="x", factors=("baseline", "values-only"))
    second = ablation.AblationConfig(gd_rates="x", factors=("baseline", "lcgd-rate"))
    ablation.add_seconds(tmp_path, first, "values-only", 10.0)
    ablation.add_seconds(tmp_path, second, "lcgd-rate", 5.0)
    ablation.add_seconds(tmp_path, first, "values-only", 1.5)
    record = json.loads((tmp_path / ablation.ABLATION_FILE).read_text())
    assert record["seconds"] == {"values-only": 11.5, "lcgd-rate": 5.0}
    assert record["config"]["factors"] == ["baseline", "values-only", "lcgd-rate"]
