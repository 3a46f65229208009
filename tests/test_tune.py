"""Learning-rate selection (jaxicl/runner/tune.py): the rule, the grid, the selection set, resuming, the
batched sweep against one by one, and `--lrs` in the runner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from jaxicl.data.prompts import build_prompts  # noqa: E402
from jaxicl.data.tasks import get_task, select_eval  # noqa: E402
from jaxicl.engine import finetune as F  # noqa: E402
from jaxicl.errors import DataError, JaxiclError, TrainingError  # noqa: E402
from jaxicl.runner import RunConfig, run  # noqa: E402
from jaxicl.runner import tune as T  # noqa: E402
from tests.test_experiment import task_spec, tiny_lm  # noqa: E402,F401  (fixtures)

# --- the rule and the grid --------------------------------------------------------------------------


def test_choose_takes_the_argmax_and_breaks_a_tie_toward_the_smaller_rate():
    got = T.choose({0.1: 0.60, 0.01: 0.72, 0.05: 0.72, 0.001: 0.50}, zero_shot=0.55)
    assert got["lr"] == 0.01 and got["accuracy"] == 0.72 and got["finetuning_helps"]
    assert "tied with 0.05 (the smaller rate wins)" in got["reason"]
    assert T.choose({0.2: 0.8, 0.3: 0.7}, zero_shot=0.1)["lr"] == 0.2


def test_choose_says_plainly_when_finetuning_does_not_help():
    got = T.choose({0.1: 0.50, 0.01: 0.61}, zero_shot=0.61)
    assert got["lr"] == 0.01 and not got["finetuning_helps"]  # the chosen rate is still given
    assert "finetuning does not help here: zero-shot accuracy on the same set is 0.6100" in got["reason"]


def test_choose_excludes_diverged_rates_and_refuses_when_every_rate_diverged():
    got = T.choose({0.1: None, 0.01: 0.61, 0.001: 0.55}, zero_shot=0.5)
    assert got["lr"] == 0.01 and "diverged, excluded: 0.1" in got["reason"]
    with pytest.raises(TrainingError, match=r"diverged at every learning rate tried \(0.01, 0.1\)"):
        T.choose({0.1: None, 0.01: None}, zero_shot=0.5)


@pytest.mark.parametrize("scores", [
    [0.1, 0.2, 0.3, 0.5, 0.6, 0.55, 0.4, 0.3, 0.2],  # peak inside
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # peak at the decade's first rate
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # peak at its last
    [0.5, 0.6, None, None, None, None, None, None, None],  # diverging from the third on
])  # fmt: skip
def test_unimodal_search_finds_the_peak_with_fewer_evaluations(scores):
    seen: list[int] = []

    def score(indices):
        seen.extend(i for i in indices if i not in seen)
        return [scores[i] for i in indices]

    T.unimodal_search(len(scores), score)
    best = max(range(len(scores)), key=lambda i: -1 if scores[i] is None else scores[i])
    assert best in seen and len(seen) <= 6


def test_unimodal_search_breaks_a_tie_toward_the_smaller_rate():
    seen: list[int] = []
    flat = [0.5] * 9

    def score(indices):
        seen.extend(indices)
        return [flat[i] for i in indices]

    T.unimodal_search(9, score)
    assert 0 in seen and 8 not in seen  # ties keep the smaller side, down to the decade's first rate


def test_dai_grid_and_coarse_to_fine():
    assert len(T.DAI_GRID) == 36 and min(T.DAI_GRID) == 1e-4 and max(T.DAI_GRID) == 0.9
    assert T.coarse_rates(T.DAI_GRID) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert T.fine_rates(T.DAI_GRID, 0.01) == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09]
    assert T.fine_rates(T.DAI_GRID, 1e-4)[-1] == 9e-4


@pytest.mark.parametrize("grid", [(0.1, 0.0), (0.1, -1e-3), (0.1, math.nan), (math.inf,), (), (0.1, 0.1)])
def test_a_grid_with_a_bad_rate_is_refused(grid):
    with pytest.raises(JaxiclError, match="not a positive finite number|empty|repeats"):
        T.TuneConfig(grid=grid)


# --- the selection set --------------------------------------------------------------------------------


def test_selection_set_is_disjoint_from_every_demonstration_set_and_the_eval_set(tiny_lm, task_spec, tmp_path):
    task = get_task(task_spec)
    config = T.TuneConfig(tasks=(task_spec,), k=4, selection_size=8)
    sets = [build_prompts(task, tiny_lm.tokenizer, seed=s, perm=p, k=4, n_eval=6, max_len=256) for s, p in task.runs]
    sel = T.build_selection(task, tiny_lm.tokenizer, sets, config)
    assert len(sel.indices) == 8 and len(set(sel.indices)) == 8 and sel.split == "train"
    for p in sets:
        assert not set(sel.indices) & set(p.selected_indices)
    again = T.build_selection(task, tiny_lm.tokenizer, sets, config)
    assert again.indices == sel.indices  # a fixed seed
    # a task whose eval set comes from the train split too: the selection avoids its eval pool as well
    spec = json.loads(open(task_spec).read()) | {"name": "tiny-same-split", "eval_split": "train", "eval_pool": 10}
    path = Path(task_spec).parent / "same-split.json"
    path.write_text(json.dumps(spec))
    same = get_task(str(path))
    sets2 = [build_prompts(same, tiny_lm.tokenizer, seed=s, perm=p, k=4, n_eval=6, max_len=256) for s, p in same.runs]
    sel2 = T.build_selection(same, tiny_lm.tokenizer, sets2, T.TuneConfig(tasks=(str(path),), k=4, selection_size=8))
    eval_pool = set(select_eval(40, None, same.eval_seed, same.eval_pool))
    assert len(eval_pool) == 10 and not set(sel2.indices) & eval_pool
    assert not set(sel2.indices) & {i for p in sets2 for i in p.selected_indices}
    # on the eval set (Dai's choice): labelled as such
    on_eval = T.build_selection(task, tiny_lm.tokenizer, sets, T.TuneConfig(tasks=(task_spec,), select_on="eval"))
    assert on_eval.indices == sets[0].eval_indices and "eval set" in on_eval.labelled_as


def test_a_selection_set_that_cannot_be_disjoint_gives_the_counts(tiny_lm, task_spec):
    task = get_task(task_spec)
    sets = [build_prompts(task, tiny_lm.tokenizer, seed=s, perm=p, k=4, n_eval=6, max_len=256) for s, p in task.runs]
    excluded = len({i for p in sets for i in p.selected_indices})
    with pytest.raises(DataError, match=f"needs 39 examples .* has 40 rows of which {excluded} are excluded, "
                                        f"leaving {40 - excluded}"):
        T.build_selection(task, tiny_lm.tokenizer, sets, T.TuneConfig(tasks=(task_spec,), k=4, selection_size=39))
    # the default size shrinks to what the split allows (CB's case)
    assert len(T.build_selection(task, tiny_lm.tokenizer, sets, T.TuneConfig(tasks=(task_spec,), k=4)).indices) == (
        40 - excluded)


# --- a whole tune ----------------------------------------------------------------------------------


GRID = (0.5, 0.05, 0.005)


def _config(task_spec, **changes) -> T.TuneConfig:
    return T.TuneConfig(**({"model": "tiny", "tasks": (task_spec,), "grid": GRID, "k": 4, "selection_size": 8,
                            "batch_size": 4} | changes))  # fmt: skip


@pytest.mark.slow  # three tunes of a tiny model (one interrupted), batched and one by one
def test_tune_resumes_without_recomputing_and_batched_equals_one_by_one(tiny_lm, task_spec, tmp_path, monkeypatch):
    config = _config(task_spec)
    real, calls = F.finetune, []

    def interrupted(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 3:  # the second rate's second run: the first rate is saved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.tune(config, tmp_path / "one", lm=tiny_lm, batch_runs="off")
    saved = sorted(p.name for p in (tmp_path / "one" / "tune" / "tiny" / "gd").glob("lr-*.json"))
    assert saved == ["lr-0.005.json"] and not (tmp_path / "one" / T.SELECTION_FILE).exists()
    calls.clear()
    monkeypatch.setattr(F, "finetune", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    one = T.tune(config, tmp_path / "one", lm=tiny_lm, batch_runs="off")
    assert len(calls) == 2 * 2  # two rates left x two runs: the saved rate was not recomputed
    entry = one["tasks"]["tiny"]
    assert set(entry["rates"]) == {"0.005", "0.05", "0.5"} and len(entry["selection_indices"]) == 8
    assert entry["chosen"]["lr"] in GRID and entry["paper_lr"] == 0.05
    best = max(v["mean_accuracy"] for v in entry["rates"].values())
    assert entry["chosen"]["accuracy"] == best
    for v in entry["rates"].values():
        assert len(v["accuracy"]) == 2 and len(v["final_loss"]) == 2 and all(map(math.isfinite, v["final_loss"]))
    written = json.loads((tmp_path / "one" / T.SELECTION_FILE).read_text())
    assert written["tasks"]["tiny"]["chosen"] == entry["chosen"] and written["complete"]

    batched = T.tune(config, tmp_path / "batched", lm=tiny_lm, batch_runs="on")["tasks"]["tiny"]
    assert batched["chosen"]["lr"] == entry["chosen"]["lr"]
    for rate, v in entry["rates"].items():
        assert batched["rates"][rate]["accuracy"] == v["accuracy"], rate
        np.testing.assert_allclose(batched["rates"][rate]["final_loss"], v["final_loss"], rtol=1e-5, atol=1e-6)

    coarse = T.tune(_config(task_spec, grid=(0.01, 0.02, 0.1, 0.3), search="coarse-to-fine"), tmp_path / "coarse",
                    lm=tiny_lm, batch_runs="off")["tasks"]["tiny"]  # fmt: skip
    first = T.choose({r: coarse["rates"][f"{r:g}"]["mean_accuracy"] for r in (0.01, 0.1)}, 0)["lr"]
    assert set(coarse["rates"]) == {"0.01", "0.1"} | {f"{r:g}" for r in T.fine_rates((0.01, 0.02, 0.1, 0.3), first)}
    unimodal = T.tune(_config(task_spec, grid=(0.01, 0.02, 0.1, 0.3), search="coarse-to-unimodal"),
                      tmp_path / "coarse", lm=tiny_lm, batch_runs="off", force=True)["tasks"]["tiny"]  # fmt: skip
    assert unimodal["chosen"] == coarse["chosen"] and unimodal["rates_evaluated"] == len(coarse["rates"])

    # the runner with the selected rates: each cell records its rate and where it came from
    rates = T.rates_for("selected", ["tiny"], tmp_path / "one")
    run_config = RunConfig(model="tiny", tasks=(task_spec,), k=4, n_eval=6, batch_size=4, methods=("gd",), n_runs=1,
                           lrs=tuple(rates.items()), lrs_source="selected")  # fmt: skip
    assert run(run_config, tmp_path / "one", lm=tiny_lm, quiet=True)["done"] == 1
    cell = json.loads(next((tmp_path / "one" / "cells").rglob("*.json")).read_text())
    assert cell["lr"] == entry["chosen"]["lr"] and cell["lr_origin"] == "selected"

    # the report plots accuracy against the rate and tabulates the choice
    from jaxicl.report import write_report

    report = write_report(tmp_path / "one").read_text()
    assert "## Learning-rate selection" in report and f"| tiny | 0.0500 | {entry['chosen']['lr']:g} |" in report
    assert (tmp_path / "one" / "report" / "lr_selection.png").stat().st_size > 1000
    rows = (tmp_path / "one" / "report" / "lr_selection.csv").read_text().splitlines()
    assert rows[0] == "task,lr,run,selection_accuracy,final_loss" and len(rows) == 1 + 3 * 3


@pytest.mark.parametrize("batch_runs", ["off", "on"])
def test_a_diverging_rate_is_marked_and_excluded_and_the_sweep_goes_on(tiny_lm, task_spec, tmp_path, batch_runs):
    config = _config(task_spec, grid=(0.05, 3e38))
    entry = T.tune(config, tmp_path, lm=tiny_lm, batch_runs=batch_runs)["tasks"]["tiny"]
    wild = entry["rates"]["3e+38"]
    assert wild["mean_accuracy"] is None and len(wild["diverged"]) == 2 and "finetuning diverged" in wild["diverged"][0]
    assert wild["accuracy"] == [None, None] and wild["final_loss"] == [None, None]
    assert entry["rates"]["0.05"]["mean_accuracy"] is not None and "diverged" not in entry["rates"]["0.05"]
    assert entry["chosen"]["lr"] == 0.05 and "diverged, excluded: 3e+38" in entry["chosen"]["reason"]
    json.loads((tmp_path / T.SELECTION_FILE).read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN

    from jaxicl.report import write_report

    report = write_report(tmp_path, plots=batch_runs == "on").read_text()
    assert "| 2 (1 diverged: 3e+38) |" in report


def test_a_tune_directory_refuses_another_config(tiny_lm, task_spec, tmp_path):
    T.open_tune_dir(tmp_path, _config(task_spec))
    refusal = r"tune.json was written by a different config \(grid: run dir has \[0.005, 0.05, 0.5\], this command \[0.1\]"
    with pytest.raises(JaxiclError, match=refusal):
        T.open_tune_dir(tmp_path, _config(task_spec, grid=(0.1,)))


# --- --lrs ---------------------------------------------------------------------------------------------


def test_lrs_sources_and_their_errors(tmp_path):
    assert T.rates_for("paper", ["sst2"]) is None
    with pytest.raises(JaxiclError, match="must be 'paper', 'selected' or an existing .json file; got 'papers'"):
        T.rates_for("papers", ["sst2"])
    with pytest.raises(JaxiclError, match="lr_selection.json does not exist; run `jaxicl tune"):
        T.rates_for("selected", ["sst2"], tmp_path)
    plain = tmp_path / "rates.json"
    plain.write_text(json.dumps({"sst2": 0.01, "mr": 0.02}))
    assert T.rates_for(str(plain), ["sst2", "mr"]) == {"sst2": 0.01, "mr": 0.02}
    with pytest.raises(JaxiclError, match="has no learning rate for task cb"):
        T.rates_for(str(plain), ["sst2", "cb"])
    plain.write_text(json.dumps({"sst2": -0.01}))
    with pytest.raises(JaxiclError, match="learning rate -0.01 for task sst2 .* is not a positive finite number"):
        T.rates_for(str(plain), ["sst2"])
    selection = {"tasks": {"sst2": {"chosen": {"lr": 0.003}}}}
    (tmp_path / T.SELECTION_FILE).write_text(json.dumps(selection))
    assert T.rates_for("selected", ["sst2"], tmp_path) == {"sst2": 0.003}


def test_cli_run_refuses_an_unknown_lrs_value(tmp_path, capsys):
    from jaxicl import cli

    code = cli.main(["run", "--tasks", "sst2", "--out", str(tmp_path / "r"), "--lrs", "fast", "--compile-cache", "off"])
    assert code == 2 and "--lrs must be 'paper', 'selected' or an existing .json file; got 'fast'" in capsys.readouterr().err


def test_cli_tune_refuses_a_bad_grid_before_loading_anything(tmp_path, capsys):
    from jaxicl import cli

    code = cli.main(["tune", "--tasks", "sst2", "--grid", "0.1,-0.01", "--out", str(tmp_path / "t"),
                     "--compile-cache", "off"])  # fmt: skip
    assert code == 2 and "learning rate -0.01 in the grid is not a positive finite number" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
