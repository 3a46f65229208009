"""`jaxicl study` end to end on two tiny models and one that does not load: the tune, the grid task
by task, each model's report, the cross-model summary, an interrupt and the resume."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

pytest.importorskip("torch")

from jaxicl import cli  # noqa: E402
from jaxicl.errors import InputError  # noqa: E402
from jaxicl.report.models import Verdict, task_average  # noqa: E402
from jaxicl.studies import models as study_module  # noqa: E402
from tests.test_experiment import task_spec  # noqa: E402,F401  (fixture)
from tests.test_hf_parity import _save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    paths = []
    for family in ("gemma3", "gpt2"):
        path = tmp_path_factory.mktemp(family)
        _save_tiny(family, path)
        paths.append(str(path))
    return paths


def test_a_verdict_reads_its_interval():
    import numpy as np

    mean, ci, holding = task_average({"a": [np.array([0.2, 0.3]), np.array([0.25])], "b": [np.array([0.1])]})
    assert mean == pytest.approx((0.25 + 0.1) / 2) and ci[0] <= mean <= ci[1] and holding == 2
    assert Verdict(0.1, (0.05, 0.2), 2, 2).word == "holds" and Verdict(-0.1, (-0.2, -0.01), 0, 2).word == "does not"
    assert Verdict(0.01, (-0.02, 0.04), 1, 2).text() == "mixed: +0.010 [-0.020, +0.040], 1/2 tasks"


@pytest.mark.slow  # two tiny models tuned and run twice (interrupted, then resumed)
def test_study_runs_every_model_skips_one_that_does_not_load_and_resumes(tiny_models, task_spec, tmp_path,
                                                                       monkeypatch, capsys):
    models = [tiny_models[0], str(tmp_path / "no-such-model"), tiny_models[1]]
    argv = ["study", "--models", ",".join(models), "--tasks", task_spec, "--n-runs", "1", "--search", "full",
            "--grid", "0.01,0.05", "--k", "4", "--n-eval", "6", "--batch-size", "4", "--out", str(tmp_path / "out"),
            "--publish", str(tmp_path / "published"), "--compile-cache", "off"]  # fmt: skip
    real_run, calls = study_module.run, []

    def interrupted(*args, **kwargs):  # the second model's first grid slice is cut off
        calls.append(kwargs["only"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(study_module, "run", interrupted)
    assert cli.main(argv) == 130
    first = tmp_path / "out" / study_module.model_dir(tmp_path, tiny_models[0]).name / "grid" / "cells"
    done_before = {p: p.stat().st_mtime_ns for p in first.rglob("*.json")}
    assert len(done_before) == 4  # the first model's trained GD/LCGD and untrained GD cells
    monkeypatch.setattr(study_module, "run", real_run)
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "no-such-model: failed (does not load:" in out
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*.json")} == done_before  # not recomputed
    summary = (tmp_path / "published" / "README.md").read_text()
    names = [m for m in models if "no-such" not in m]
    header = next(line for line in summary.splitlines() if line.startswith("| claim"))
    assert all(name in header for name in names)
    assert "LCGD > GD on SimAM_Δ" in summary and "was skipped: does not load" in summary
    with open(tmp_path / "published" / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 5 and {r["verdict"] for r in rows} <= {"holds", "does not", "mixed"}
    assert (tmp_path / "published" / "models.png").stat().st_size > 1000
    for name in names:
        published = tmp_path / "published" / study_module.model_dir(tmp_path, name).name
        assert published.parent == tmp_path / "published"
        assert (published / "lr_selection.json").is_file() and (published / "report" / "cells.csv").is_file()
        record = json.loads((tmp_path / "out" / study_module.model_dir(tmp_path, name).name / "study.json").read_text())
        assert record["status"] == "done" and record["seconds"]["tune"] > 0 and record["seconds"]["trained"] > 0
        assert json.loads((published / "study.json").read_text())["seconds"] == record["seconds"]
        assert len(list((published / "cells").rglob("*.json"))) == 4 and (published / "tune" / "tune.json").is_file()

    # a fresh study directory resumes the first model from its published folder: nothing is recomputed
    published = tmp_path / "published" / study_module.model_dir(tmp_path, tiny_models[0]).name
    import jaxicl.runner.execute as execute

    monkeypatch.setattr(study_module, "tune", lambda *a, **k: pytest.fail("tuned although the selection was published"))
    monkeypatch.setattr(execute, "run_group", lambda *a, **k: pytest.fail("a published cell was recomputed"))
    monkeypatch.setattr(execute, "run_together", lambda *a, **k: pytest.fail("a published cell was recomputed"))
    again = ["study", *argv[1:argv.index("--out")], "--out", str(tmp_path / "again"), "--adopt", str(published),
             "--compile-cache", "off"]  # fmt: skip
    again[again.index("--models") + 1] = tiny_models[0]
    assert cli.main(again) == 0
    resumed = tmp_path / "again" / published.name
    assert sorted(p.relative_to(resumed / "grid").as_posix() for p in (resumed / "grid" / "cells").rglob("*.json")) \
        == sorted(p.relative_to(published).as_posix() for p in (published / "cells").rglob("*.json"))
    records = [json.loads((d / "study.json").read_text()) for d in (published, resumed)]
    assert records[1]["seconds"]["tune"] >= records[0]["seconds"]["tune"] > 0  # its seconds go on adding up
    assert records[1]["adopted"] == {"selection": None, "cells": 0}  # its own work, not adopted

    # from another run's directory and selection file, the same cells and rates count as adopted (not timed here)
    earlier = tmp_path / "out" / published.name
    other = [*again[: again.index("--out")], "--out", str(tmp_path / "other"), "--adopt", str(earlier / "grid"),
             "--adopt", str(earlier / "tune" / "lr_selection.json"), "--publish", str(tmp_path / "other-summary"),
             "--compile-cache", "off"]  # fmt: skip
    assert cli.main(other) == 0
    record = json.loads((tmp_path / "other" / published.name / "study.json").read_text())
    assert record["adopted"] == {"selection": str(earlier / "tune" / "lr_selection.json"), "cells": 4}
    assert "| the selection, 4 cells |" in (tmp_path / "other-summary" / "README.md").read_text()


def test_a_published_tune_resumes_only_under_the_same_config(tmp_path):
    config = study_module.StudyConfig(models=("m",), tasks=("sst2",), grid=(0.01, 0.05))
    published = tmp_path / "published"
    (published / "tune" / "sst2").mkdir(parents=True)
    (published / "tune" / "tune.json").write_text(json.dumps(config.tune_config("m").to_json()))
    (published / "tune" / "sst2" / "gd-lr0.01.json").write_text(json.dumps({"lr": 0.01, "mean_accuracy": 0.5}))
    assert study_module._adopt_tune(published, tmp_path / "mine", config.tune_config("m")) == 2
    assert json.loads((tmp_path / "mine" / "tune" / "sst2" / "gd-lr0.01.json").read_text())["lr"] == 0.01
    assert study_module._adopt_tune(published, tmp_path / "mine", config.tune_config("m")) == 0  # already there
    other = dataclasses.replace(config, grid=(0.01, 0.02))
    assert study_module._adopt_tune(published, tmp_path / "other", other.tune_config("m")) == 0
    assert not (tmp_path / "other").exists()


def test_an_adopted_selection_of_the_same_config_replaces_the_tune(tmp_path, monkeypatch):
    config = study_module.StudyConfig(models=("m",), tasks=("sst2",), grid=(0.01, 0.05))
    theirs = {"config": config.tune_config("m").to_json(), "complete": True,
              "tasks": {"sst2": {"chosen": {"lr": 0.05}}}}  # fmt: skip
    adopted = tmp_path / "lr_selection_unimodal_gd.json"
    adopted.write_text(json.dumps(theirs))
    monkeypatch.setattr(study_module, "tune", lambda *a, **k: pytest.fail("tuned although a selection was adopted"))
    rates = study_module._selected_rates(config, "m", tmp_path / "tune", None, {}, [adopted])
    assert rates == {"sst2": 0.05} and json.loads((tmp_path / "tune" / "lr_selection.json").read_text()) == theirs
    other = study_module.StudyConfig(models=("m",), tasks=("sst2",), grid=(0.01, 0.02))
    calls = []
    monkeypatch.setattr(study_module, "tune", lambda *a, **k: calls.append(a))
    with pytest.raises(InputError, match="an existing .json file"):  # another config: the tune runs (a stand-in
        # that writes no selection here)
        study_module._selected_rates(other, "m", tmp_path / "tune2", None, {}, [adopted])
    assert len(calls) == 1


def test_the_reading_says_what_holds_on_every_model_and_what_depends_on_it(monkeypatch):
    from jaxicl.report import models as report_models

    holds, fails = Verdict(0.1, (0.05, 0.2), 2, 2), Verdict(-0.1, (-0.2, -0.01), 0, 2)
    first = report_models.CLAIMS[0][0]
    # a model's "cells" here name how its claims come out: the first claim fails on "b" only
    monkeypatch.setattr(report_models, "verdicts",
                        lambda cells: {c: (fails if cells == "b" and c == first else holds) for c, _ in report_models.CLAIMS})  # fmt: skip
    two = report_models.reading({"a": "a", "b": "b"}, {})
    assert two[0] == f"- {first}: depends on the model (a: holds; b: does not)."
    assert two[1].endswith("holds on every model.")
    one = report_models.reading({"a": "a"}, {"c": "does not load"})
    assert one[0] == f"- {first}: holds on a, the only model with cells." and one[-1] == "- c was skipped: does not load"
