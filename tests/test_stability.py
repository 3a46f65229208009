"""The stability check (`jaxicl run --stability-check`): a second finetuning of each cell with the
demonstrations padded to another length, the same maths under other float rounding, and the
largest difference of each Tables 1-2 metric recorded in the cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from jaxicl.analyses import stability  # noqa: E402
from jaxicl.data.tasks import get_task  # noqa: E402
from jaxicl.engine import metrics  # noqa: E402
from jaxicl.engine.finetune import FinetuneOptions, finetune  # noqa: E402
from jaxicl.models.inputs import bucket  # noqa: E402
from jaxicl.runner import load_eval, run  # noqa: E402
from jaxicl.runner.plan import finetune_options, run_prompts  # noqa: E402
from tests.test_experiment import _config, task_spec, tiny_lm  # noqa: E402,F401  (fixtures)
from tests.test_report import run_dir  # noqa: E402,F401  (fixture)


def test_the_perturbed_padding_differs_for_every_demonstration_length_up_to_195():
    assert all(bucket(n, 16) != bucket(n, stability.PERTURBED_MULTIPLE) for n in range(1, 196))
    assert bucket(200, 16) == bucket(200, stability.PERTURBED_MULTIPLE) == 208  # where they meet again
    with pytest.raises(ValueError, match="pads to multiples of 13"):
        stability.perturbed(FinetuneOptions(lr=0.1, length_multiple=13))


def test_the_record_is_the_largest_difference_per_metric():
    names = metrics.TABLE_METRICS
    values = {"scalar": {m: 0.5 for m in names}, "per_layer": {m: [0.1, 0.2, 0.3] for m in names}}
    again = {"scalar": {m: 0.5 for m in names}, "per_layer": {m: [0.1, 0.2, 0.3] for m in names}}
    again["scalar"]["simam_delta"] = 0.48
    again["per_layer"]["simaou"] = [0.1, 0.25, 0.27]
    got = stability.difference(values, again, 0.75, 0.70, FinetuneOptions(lr=0.1))
    assert got["length_multiples"] == [16, 13]
    assert got["scalar"]["simam_delta"] == pytest.approx(0.02) and got["scalar"]["simaou"] == 0.0
    assert got["per_layer"]["simaou"] == pytest.approx(0.05) and got["per_layer"]["simam"] == 0.0
    assert got["ft_accuracy"] == pytest.approx(0.05) and got["max_scalar"] == pytest.approx(0.02)
    assert stability.is_unstable(got) and not stability.is_unstable(got, threshold=0.03)
    assert not stability.is_unstable(None)


@pytest.mark.slow  # a tiny grid finetuned twice per cell
def test_a_checked_run_records_what_a_second_finetuning_moves(tiny_lm, task_spec, tmp_path):
    config = _config(task_spec, n_runs=1, stability_check=True)
    assert run(config, tmp_path, lm=tiny_lm, quiet=True)["done"] == 2
    evals = tmp_path / "evals" / "tiny" / "trained" / "seed1-perm0"
    zs, icl = load_eval(tmp_path / "evals/tiny/trained/zs.npz"), load_eval(evals / "icl.npz")
    task = get_task(task_spec)
    prompts = run_prompts(tiny_lm, config, task, 1, 0)
    gold = list(prompts.gold_labels)
    for method in ("gd", "lcgd"):
        cell = json.loads((tmp_path / f"cells/tiny/trained/{method}-seed1-perm0.json").read_text())
        ft, again = load_eval(evals / f"{method}-ft.npz"), load_eval(evals / f"{method}-ft-stability.npz")
        want = stability.difference(metrics.all_metrics(zs, icl, ft, gold=gold, seed=0),
                                    metrics.all_metrics(zs, icl, again, gold=gold, seed=0),
                                    ft.accuracy(gold), again.accuracy(gold), finetune_options(config, task, method))
        runs = cell["stability"].pop("finetuning")
        assert cell["stability"] == json.loads(json.dumps(want))
        assert cell["stability"]["max_scalar"] < 1e-3  # a tiny model at a small rate: rounding only
        # the same maths: the perturbed finetuning's losses are the cell's, up to float rounding
        options = stability.perturbed(finetune_options(config, task, method))
        losses = finetune(tiny_lm.params, tiny_lm.config, prompts.ft_sequences, options,
                          label_starts=prompts.ft_label_starts).losses
        np.testing.assert_allclose(losses, cell["losses"], rtol=1e-4)
        assert runs["losses"] == pytest.approx(float(np.max(np.abs(losses - np.asarray(cell["losses"])))), abs=1e-6)
        assert 0.0 <= runs["params"] < 1e-3
        assert (tmp_path / f"checkpoints/tiny/trained/{method}-stability-seed1-perm0").is_dir()
    seconds = json.loads((tmp_path / "seconds/tiny/trained/lcgd-seed1-perm0.json").read_text())
    assert seconds["stability_gd"] > 0 and seconds["stability_lcgd"] > 0


@pytest.mark.slow  # a tiny grid, then the same cells checked
def test_cells_without_a_stability_record_are_completed_by_a_checked_run(tiny_lm, task_spec, tmp_path, capsys):
    run(_config(task_spec, n_runs=1, methods=("gd",)), tmp_path, lm=tiny_lm, quiet=True)
    plain = json.loads((tmp_path / "cells/tiny/trained/gd-seed1-perm0.json").read_text())
    counts = run(_config(task_spec, n_runs=1, methods=("gd",), stability_check=True), tmp_path, lm=tiny_lm,
                 quiet=True, force=True)  # fmt: skip
    assert counts["done"] == 1 and counts["recomputed"] == 0 and "corrupt" not in capsys.readouterr().out
    checked = json.loads((tmp_path / "cells/tiny/trained/gd-seed1-perm0.json").read_text())
    assert checked["scalar"] == plain["scalar"] and "stability" in checked  # the cell's own numbers are unchanged


def _stable(cell: dict, **moves: float) -> dict:
    """A report test cell with a stability record: every metric moved by 0.001 unless told."""
    scalar = {m: moves.get(m, 0.001) for m in metrics.TABLE_METRICS}
    cell["stability"] = {"length_multiples": [16, 13], "scalar": scalar, "per_layer": scalar,
                         "ft_accuracy": 0.0, "max_scalar": max(scalar.values())}
    return cell


def test_the_report_marks_entries_with_an_unstable_cell_and_counts_them(run_dir, tmp_path):
    from jaxicl.report import write_report
    from tests.test_report import RUNS, cell_path, make_cell, section, table2_row, write_cell

    for task in ("sst2", "subj"):
        for seed, perm in RUNS:
            for method in ("gd", "lcgd"):
                path = cell_path(run_dir, make_cell(task, "trained", method, seed, perm))
                cell = json.loads(path.read_text())
                moved = {"simam_delta": 0.05} if (task, method, seed) == ("subj", "gd", 3) else {}
                write_cell(run_dir, _stable(cell, **moved))
    md = write_report(run_dir).read_text()
    row = table2_row(md, "SimAM_Δ", "GD")
    assert row["Subj"].endswith("†") and not row["SST2"].endswith("†")
    assert not table2_row(md, "SimAOU", "GD")["Subj"].endswith("†")  # only the metric that moved
    assert "†: at least one of the entry's cells moved by more than 0.01" in section(md, "## Table 2")
    uncertainty = section(md, "## Uncertainty")
    assert "12 of 18 cells were finetuned again" in uncertainty and "1 moved by more than 0.01" in uncertainty
    assert "| Trained | GD | 0.001 | 6 | 1 |" in uncertainty  # variant, method, rate, checked, unstable
    rows = (run_dir / "report" / "table2.csv").read_text().splitlines()
    assert rows[0].endswith("ci_low,ci_high,unstable_cells,checked_cells")
    subj_gd = next(r for r in rows if r.startswith("simam_delta,gd,subj,"))
    assert subj_gd.endswith(",1,3")
    t1 = (run_dir / "report" / "table1.csv").read_text().splitlines()
    assert t1[0].endswith("unstable_cells,checked_cells")
    assert next(r for r in t1 if r.startswith("simaou,trained-embeddings,sst2,")).endswith(",,")  # not checked


def test_a_report_without_checked_cells_is_unchanged(run_dir):
    from jaxicl.report import write_report

    md = write_report(run_dir).read_text()
    assert "†" not in md and "Numerical stability" not in md
    assert (run_dir / "report" / "table2.csv").read_text().splitlines()[0].endswith("ci_low,ci_high")


def test_a_malformed_stability_record_is_refused(run_dir):
    from jaxicl.report import write_report
    from tests.test_report import cell_path, make_cell, write_cell

    cell = _stable(make_cell("sst2", "trained", "gd", 2, 0))
    cell["stability"]["scalar"]["simaou"] = -1.0
    write_cell(run_dir, cell)
    md = write_report(run_dir).read_text()
    assert "stability.scalar.simaou must be a finite number >= 0" in md
    assert cell_path(run_dir, cell).exists()


def test_checked_cells_that_did_not_move_are_said_so(run_dir):
    from jaxicl.report import write_report
    from tests.test_report import RUNS, cell_path, make_cell, section, write_cell

    for seed, perm in RUNS:
        for method in ("gd", "lcgd"):
            path = cell_path(run_dir, make_cell("sst2", "trained", method, seed, perm))
            write_cell(run_dir, _stable(json.loads(path.read_text())))
    md = write_report(run_dir).read_text()
    assert "No entry moved by more than 0.01 when its cells were finetuned again" in section(md, "## Table 2")
    assert "†" not in section(md, "## Table 2") and "| Trained | GD | 0.001 | 3 | 0 | 1.0e-03 |" in section(md, "## Uncertainty")
