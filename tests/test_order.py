"""Order sensitivity (jaxicl/analyses/order.py): the measure by hand, the orders, and a tiny run's order cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from jaxicl.analyses import order  # noqa: E402
from jaxicl.errors import JaxiclError  # noqa: E402
from jaxicl.report import write_report  # noqa: E402
from jaxicl.runner import RunConfig, run  # noqa: E402
from tests.test_experiment import task_spec, tiny_lm  # noqa: E402,F401  (fixtures)


def test_class_distribution_and_order_std_by_hand():
    p = order.class_distribution(np.log([[1.0, 3.0], [2.0, 2.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])
    # two orders, one example: probabilities 0.2/0.8 then 0.6/0.4 -> each class's std is 0.4/sqrt(2)
    dists = np.array([[[0.2, 0.8]], [[0.6, 0.4]]])
    np.testing.assert_allclose(order.order_std(dists), [0.4 / np.sqrt(2)])
    assert order.order_std(np.array([[[0.3, 0.7]], [[0.3, 0.7]]])).tolist() == [0.0]  # order does not matter
    with pytest.raises(JaxiclError, match="P >= 2"):
        order.order_std(dists[:1])


def test_summarize_gives_each_method_its_std_and_the_ratio():
    icl = [np.log([[0.2, 0.8]]), np.log([[0.6, 0.4]])]
    gd = [np.log([[0.4, 0.6]]), np.log([[0.5, 0.5]])]
    got = order.summarize({"icl": icl, "gd": gd}, gold=[1])
    assert got["methods"]["icl"]["mean_std"] == pytest.approx(0.4 / np.sqrt(2))
    assert got["methods"]["gd"]["mean_std"] == pytest.approx(0.1 / np.sqrt(2))
    assert got["ratio"]["icl/gd"] == pytest.approx(4.0)
    assert got["methods"]["icl"]["accuracy"] == [1.0, 0.0]


def test_orders_start_with_the_runs_own_are_distinct_seeded_and_refuse_p_below_2():
    orders = order.permutations(6, 8, seed=2, perm=1)
    assert orders[0] == tuple(range(6)) and len(set(orders)) == 8
    assert orders == order.permutations(6, 8, seed=2, perm=1) != order.permutations(6, 8, seed=3, perm=1)
    for bad in (1, -2):
        with pytest.raises(JaxiclError, match="P >= 2"):
            order.permutations(6, bad, seed=0, perm=0)
    with pytest.raises(JaxiclError, match="only 6 orders"):
        order.permutations(3, 7, seed=0, perm=0)
    with pytest.raises(JaxiclError, match="P >= 2"):
        run(RunConfig(model="tiny", tasks=("sst2",), order_permutations=1), "/nonexistent/never-written")


@pytest.mark.slow  # a tiny run with 3 orders, GD and LCGD: about 30 s on the 2-core CPU
def test_order_cell_of_a_tiny_run_is_written_reported_and_resumable(tiny_lm, task_spec, tmp_path):
    config = RunConfig(model="tiny", tasks=(task_spec,), k=6, n_eval=6, batch_size=4, n_runs=1, order_permutations=3)
    assert run(config, tmp_path, lm=tiny_lm, quiet=True)["done"] == 3  # GD, LCGD and the order cell
    cell = json.loads((tmp_path / "order/tiny/trained/seed1-perm0.json").read_text())
    assert len(cell["permutations"]) == 3 and cell["permutations"][0] == list(range(cell["k_icl"]))
    assert set(cell["methods"]) == {"icl", "gd", "lcgd"} and set(cell["ratio"]) == {"icl/gd", "icl/lcgd"}
    for entry in cell["methods"].values():
        assert len(entry["per_example_std"]) == 6 and len(entry["accuracy"]) == 3 and entry["mean_std"] >= 0
    # the first order is the run's own: its accuracies are the real cells'
    gd = json.loads((tmp_path / "cells/tiny/trained/gd-seed1-perm0.json").read_text())
    assert cell["methods"]["icl"]["accuracy"][0] == gd["accuracy"]["icl"]
    assert cell["methods"]["gd"]["accuracy"][0] == gd["accuracy"]["ft"]
    assert cell["methods"]["icl"]["mean_std"] > 0  # a tiny random model still moves with the order
    md = write_report(tmp_path, plots=False).read_text()
    assert "## Order sensitivity" in md and "| tiny | 1 | 3 |" in md
    assert (tmp_path / "report" / "order_sensitivity.csv").exists()
    assert run(config, tmp_path, lm=tiny_lm, quiet=True)["skipped"] == 3


def test_the_flag_alone_asks_for_eight_orders_and_its_absence_for_none():
    from jaxicl.cli import build_parser

    def parse(*flags):
        return build_parser().parse_args(["run", "--out", "x", *flags]).order_permutations

    assert (parse(), parse("--order-permutations"), parse("--order-permutations", "3")) == (0, 8, 3)
