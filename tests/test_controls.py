"""Task-specificity controls (jaxicl/analyses/controls.py): shuffled labels, cross-task partners, their
cells in a tiny run, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from jaxicl.analyses import controls  # noqa: E402
from jaxicl.data.prompts import build_prompts_from_rows, relabel  # noqa: E402
from jaxicl.data.tasks import Task  # noqa: E402
from jaxicl.errors import DataError, JaxiclError  # noqa: E402
from jaxicl.report import load_cells, write_report  # noqa: E402
from jaxicl.runner import RunConfig, run  # noqa: E402
from tests.test_experiment import task_spec, tiny_lm, write_task  # noqa: E402,F401  (fixtures)


@pytest.mark.parametrize("labels", [(0, 1), (0, 0, 0, 1), (0, 1, 2, 0, 1, 2, 1, 1), tuple([0] * 31 + [1])])
def test_shuffled_labels_differ_on_a_demonstration_for_every_seed_and_are_deterministic(labels):
    for seed in range(40):
        shuffled = controls.shuffled_labels(labels, seed, perm=seed % 3)
        assert sorted(shuffled) == sorted(labels) and shuffled != tuple(labels), seed
        assert shuffled == controls.shuffled_labels(labels, seed, perm=seed % 3)
    draws = {controls.shuffled_labels(labels, seed, 0) for seed in range(40)}
    assert len(draws) > 1 or len(labels) == 2  # seeds give different permutations


def test_labels_that_are_all_the_same_cannot_be_shuffled():
    with pytest.raises(DataError, match="all have label 1"):
        controls.shuffled_labels((1, 1, 1), seed=0, perm=0)


def test_partner_is_the_next_task_unless_given():
    tasks = ("sst2", "mr", "cb")
    assert [controls.partner(t, tasks, None) for t in tasks] == ["mr", "cb", "sst2"]
    assert controls.partner("sst2", tasks, (("sst2", "cb"),)) == "cb"


@pytest.mark.parametrize("kwargs, message", [
    (dict(controls=("cross-task", "random-gd")), r"unknown control\(s\) \['random-gd'\]"),
    (dict(controls=("cross-task",), cross_task=(("sst2", "agnews"),)), "task 'agnews' is not in the grid"),
    (dict(controls=("cross-task",), cross_task=(("sst2", "sst2"),)), "its own cross-task partner"),
    (dict(controls=("shuffled-gd",), methods=("lcgd",)), "add gd to --methods"),
    (dict(controls=("cross-task",), tasks=("sst2",)), "at least two tasks"),
])  # fmt: skip
def test_bad_controls_are_refused_by_name(kwargs, message):
    args = dict(controls=(), tasks=("sst2", "mr"), cross_task=None, methods=("gd", "lcgd")) | kwargs
    with pytest.raises(JaxiclError, match=message):
        controls.check_controls(args["controls"], args["tasks"], args["cross_task"], args["methods"])


class _Words:
    """A whitespace tokenizer over w<N> words: enough for prompt building."""

    bos_id, eos_id, add_bos = 2, 1, True

    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]


def test_relabel_swaps_the_label_tokens_and_keeps_everything_else():
    task = Task(name="t", template="{text} w3", label_words=("w5 w6", "w7"), input_fields=("text",))
    rows = [{"text": f"w{10 + i} w{40 + i}", "label": i % 2} for i in range(12)]
    prompts = build_prompts_from_rows(task, _Words(), rows, rows, seed=0, k=6, n_eval=4, max_len=200, separator="\n")
    labels = controls.shuffled_labels(prompts.demo_labels, 0, 0)
    new = relabel(prompts, labels)
    assert new.demo_labels == labels and len(new.prefix_ids) == len(prompts.prefix_ids)
    assert new.query_ids == prompts.query_ids and new.ft_label_starts == prompts.ft_label_starts
    for seq, start, y in zip(new.ft_sequences, new.ft_label_starts, labels):
        assert tuple(seq[start:]) == tuple(prompts.candidate_ids[y])
    assert new.ft_sequences != prompts.ft_sequences
    with pytest.raises(DataError, match="labels for"):
        relabel(prompts, labels[:-1])


@pytest.fixture(scope="module")
def other_spec(tmp_path_factory):
    """A second tiny task with other label words (w4/w5) and other inputs: the cross-task partner."""
    return write_task(tmp_path_factory.mktemp("othertask"), "other", ["w4", "w5"], 60, 10, [[7, 0]], seed=1)


@pytest.mark.slow  # a tiny run with every control: about 30 s on the 2-core CPU
def test_control_cells_are_written_apart_resumable_and_reported(tiny_lm, task_spec, other_spec, tmp_path):
    config = RunConfig(model="tiny", tasks=(task_spec, other_spec), k=8, n_eval=6, batch_size=4, methods=("gd",),
                       n_runs=1, controls=controls.CONTROLS)  # fmt: skip
    counts = run(config, tmp_path, lm=tiny_lm, quiet=True)
    assert counts["done"] == 2 * (1 + 3)  # two tasks x (real GD + three controls)
    real = json.loads((tmp_path / "cells/tiny/trained/gd-seed1-perm0.json").read_text())
    cross = json.loads((tmp_path / "controls/cross-task/tiny/trained/gd-seed1-perm0.json").read_text())
    shuffled_gd = json.loads((tmp_path / "controls/shuffled-gd/tiny/trained/gd-seed1-perm0.json").read_text())
    shuffled_icl = json.loads((tmp_path / "controls/shuffled-icl/tiny/trained/gd-seed1-perm0.json").read_text())
    # cross-task: the partner's demonstrations, this task's queries and label words
    assert cross["partner"] == "other" and cross["partner_run"] == [7, 0] and cross["format"]["label_words"] == ["w1", "w2"]
    assert cross["partner_demo_indices"] != real["demo_indices"]
    assert cross["accuracy"]["zs"] == real["accuracy"]["zs"] and cross["accuracy"]["icl"] == real["accuracy"]["icl"]
    # shuffled: the same demonstrations, labels permuted; GD vs real ICL, and ICL on the same permuted labels
    assert shuffled_gd["shuffled_labels"] != shuffled_gd["original_labels"]
    assert sorted(shuffled_gd["shuffled_labels"]) == sorted(shuffled_gd["original_labels"])
    assert shuffled_gd["accuracy"]["icl"] == real["accuracy"]["icl"]
    assert shuffled_icl["accuracy"]["ft"] == shuffled_gd["accuracy"]["ft"]  # one finetuning, shared
    assert shuffled_gd["losses"] != real["losses"]
    # never in the tables: the report's cells are the real ones only
    cells, problems = load_cells(tmp_path)
    assert not problems and len(cells) == 2 and all(c.path.startswith("cells/") for c in cells)
    md = write_report(tmp_path, plots=False).read_text()
    assert "## Task-specificity controls" in md and "Does real GD beat the controls?" in md
    # resumable: nothing is recomputed
    assert run(config, tmp_path, lm=tiny_lm, quiet=True)["skipped"] == 8
    (tmp_path / "controls/shuffled-icl/tiny/trained/gd-seed1-perm0.json").unlink()
    again = run(config, tmp_path, lm=tiny_lm, quiet=True)
    assert again["done"] == 1
    redone = json.loads((tmp_path / "controls/shuffled-icl/tiny/trained/gd-seed1-perm0.json").read_text())
    np.testing.assert_allclose(redone["scalar"]["simaou"], shuffled_icl["scalar"]["simaou"], rtol=1e-6)


def test_report_renders_without_controls(tmp_path):
    (tmp_path / "cells").mkdir()
    md = write_report(tmp_path, plots=False).read_text()
    assert "## Task-specificity controls" in md and "No control cells" in md
