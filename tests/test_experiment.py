"""The resumable runner on a tiny model and a tiny task written in a JSON spec."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

pytest.importorskip("torch")

import jaxicl  # noqa: E402
import jaxicl.runner.batched  # noqa: E402
import jaxicl.runner.execute  # noqa: E402
from jaxicl import runner as experiment  # noqa: E402
from jaxicl.engine import metrics  # noqa: E402
from jaxicl.errors import JaxiclError  # noqa: E402
from jaxicl.runner import RunConfig, parse_only, read_cell, run  # noqa: E402
from tests.test_hf_parity import _save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3")
    _save_tiny("gemma3", path)
    return jaxicl.load(str(path))


def write_task(root, name: str, label_words: list[str], first_word: int, spread: int, runs: list, seed: int) -> str:
    """A two-class task spec over the tiny tokenizer's words w<N>: inputs drawn from `spread` words
    starting at `first_word`, shifted by `spread` for label 1; returns the spec's path."""
    rng = random.Random(seed)
    for split, n in (("train", 40), ("validation", 12)):
        with open(root / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                label = rng.randrange(2)
                words = " ".join(f"w{rng.randrange(first_word, first_word + spread) + spread * label}"
                                 for _ in range(rng.randrange(2, 5)))  # fmt: skip
                f.write(json.dumps({"text": words, "label": label}) + "\n")
    spec = {
        "name": name, "template": "{text} w3", "label_words": label_words,
        "data_files": {"train": "train.jsonl", "validation": "validation.jsonl"}, "runs": runs, "lr": 0.05,
    }  # fmt: skip
    path = root / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.fixture(scope="module")
def task_spec(tmp_path_factory):
    """A two-class task over the tiny tokenizer's words (w10.. are inputs, w1/w2 the labels)."""
    return write_task(tmp_path_factory.mktemp("tinytask"), "tiny", ["w1", "w2"], 10, 20, [[1, 0], [2, 1]], seed=0)


def _config(spec: str, **changes) -> RunConfig:
    base = dict(model="tiny", tasks=(spec,), k=4, n_eval=6, batch_size=4, methods=("gd", "lcgd"))
    base.update(changes)
    return RunConfig(**base)


def _assert_close(got, want, where=""):
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert math.isnan(got) == math.isnan(want), where
        if not math.isnan(want):  # float32 rounding of other batches, relative to magnitude
            assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (where, got, want)
    else:
        assert got == want, where


def _cell_files(run_dir):
    return sorted((run_dir / "cells").rglob("*.json"))


def test_run_writes_one_complete_cell_per_grid_point(tiny_lm, task_spec, tmp_path):
    counts = run(_config(task_spec), tmp_path, lm=tiny_lm, quiet=True)
    files = _cell_files(tmp_path)
    assert counts == {"done": 4, "skipped": 0, "recomputed": 0, "deferred": 0} and len(files) == 4
    cell = json.loads(files[0].read_text())
    L = tiny_lm.config.n_layers
    for key in ("simaou_norm", "simaou", "simam", "simam_delta", "zsl_simam", "random_simaou"):
        assert len(cell["per_layer"][key]) == L
    assert set(cell["accuracy"]) == {"zs", "icl", "ft"} and cell["lr"] == 0.05
    assert len(cell["grad_norms"]["kv"]) == cell["k_icl"]
    lcgd = json.loads((tmp_path / "cells/tiny/trained/lcgd-seed1-perm0.json").read_text())
    assert len(lcgd["alpha"]["per_layer"]) == L
    assert json.loads((tmp_path / "run.json").read_text())["tasks"] == [task_spec]
    assert "versions" in json.loads((tmp_path / "provenance.json").read_text())


def test_rerun_skips_finished_cells_and_recomputes_nothing(tiny_lm, task_spec, tmp_path, monkeypatch):
    run(_config(task_spec), tmp_path, lm=tiny_lm, quiet=True)
    before = {p: p.read_bytes() for p in _cell_files(tmp_path)}

    def fail(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(jaxicl.runner.execute, "run_group", fail)
    assert run(_config(task_spec), tmp_path, lm=tiny_lm, quiet=True) == {"done": 0, "skipped": 4, "recomputed": 0, "deferred": 0}
    assert {p: p.read_bytes() for p in _cell_files(tmp_path)} == before


def test_interrupt_loses_at_most_the_cell_in_progress(tiny_lm, task_spec, tmp_path, monkeypatch):
    real = metrics.all_metrics
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(metrics, "all_metrics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(_config(task_spec), tmp_path, lm=tiny_lm, quiet=True)
    assert len(_cell_files(tmp_path)) == 2
    assert not list(tmp_path.rglob("*.tmp")), "a partial file was left behind"
    for path in _cell_files(tmp_path):
        assert read_cell(path)[1] is None
    monkeypatch.setattr(metrics, "all_metrics", real)
    assert run(_config(task_spec), tmp_path, lm=tiny_lm, quiet=True)["done"] == 2
    assert len(_cell_files(tmp_path)) == 4


def test_a_different_config_is_refused_naming_the_keys(tiny_lm, task_spec, tmp_path):
    run(_config(task_spec, methods=("gd",)), tmp_path, lm=tiny_lm, quiet=True)
    with pytest.raises(JaxiclError, match=r"different config \(k: run dir has 4, this command 5"):
        run(_config(task_spec, methods=("gd",), k=5), tmp_path, lm=tiny_lm, quiet=True)
    assert run(_config(task_spec, methods=("gd",), k=5), tmp_path, lm=tiny_lm, quiet=True, force=True)["done"] == 0


def test_a_run_directory_from_before_a_config_field_existed_is_still_valid(tiny_lm, task_spec, tmp_path):
    config = _config(task_spec, methods=("gd",), n_runs=1)
    run(config, tmp_path, lm=tiny_lm, quiet=True)
    older = json.loads((tmp_path / "run.json").read_text())
    del older["token_wise"]  # written before the field existed: it counts as its default
    (tmp_path / "run.json").write_text(json.dumps(older))
    assert run(config, tmp_path, lm=tiny_lm, quiet=True)["skipped"] == 1
    with pytest.raises(JaxiclError, match=r"token_wise: run dir has False, this command True"):
        run(_config(task_spec, methods=("gd",), n_runs=1, token_wise=True), tmp_path, lm=tiny_lm, quiet=True)


def test_token_wise_cells_carry_ia2s_measure_from_the_same_evaluations(tiny_lm, task_spec, tmp_path):
    from jaxicl.engine import metrics

    run(_config(task_spec, methods=("gd",), n_runs=1, token_wise=True), tmp_path, lm=tiny_lm, quiet=True)
    cell = json.loads(_cell_files(tmp_path)[0].read_text())
    assert len(cell["per_layer"]["tokenwise_simaou"]) == tiny_lm.config.n_layers
    assert len(cell["per_example"]["tokenwise_simaou"]) == cell["n_eval"]
    names = ("zs", "icl", "gd-ft")
    evals = {name: experiment.load_eval(next((tmp_path / "evals").rglob(f"{name}.npz"))) for name in names}
    tokens = [evals[name].records["attn_out@all"] for name in names]
    want = metrics.tokenwise_simaou(*tokens, evals["zs"].map_lengths)
    _assert_close(cell["per_layer"]["tokenwise_simaou"], want)
    assert cell["per_layer"]["simaou"] != cell["per_layer"]["tokenwise_simaou"]  # the probe is one token of many


def test_corrupt_cell_is_reported_and_recomputed(tiny_lm, task_spec, tmp_path, capsys):
    run(_config(task_spec, methods=("gd",)), tmp_path, lm=tiny_lm, quiet=True)
    victim = _cell_files(tmp_path)[0]
    good = json.loads(victim.read_text())
    victim.write_text(victim.read_text()[:50])
    counts = run(_config(task_spec, methods=("gd",)), tmp_path, lm=tiny_lm, quiet=True)
    assert counts == {"done": 1, "skipped": 1, "recomputed": 1, "deferred": 0}
    assert "corrupt cell file" in capsys.readouterr().out
    again = json.loads(victim.read_text())
    assert again["per_layer"] == good["per_layer"] and again["accuracy"] == good["accuracy"]


def test_same_config_and_seed_give_the_same_numbers(tiny_lm, task_spec, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(_config(task_spec, methods=("lcgd",)), a, lm=tiny_lm, quiet=True)
    run(_config(task_spec, methods=("lcgd",)), b, lm=tiny_lm, quiet=True)
    for pa, pb in zip(_cell_files(a), _cell_files(b)):
        assert pa.read_bytes() == pb.read_bytes()
    assert json.loads((a / "seconds/tiny/trained/lcgd-seed1-perm0.json").read_text())["finetune_lcgd"] > 0


def test_a_slice_now_and_the_rest_later_write_the_same_files_as_one_run(tiny_lm, task_spec, tmp_path):
    whole, sliced = tmp_path / "whole", tmp_path / "sliced"
    run(_config(task_spec), whole, lm=tiny_lm, quiet=True)
    counts = run(_config(task_spec), sliced, lm=tiny_lm, quiet=True, only=parse_only(["method=gd", "seed=1,2"]))
    assert counts == {"done": 2, "skipped": 0, "recomputed": 0, "deferred": 2}
    assert [p.name for p in _cell_files(sliced)] == ["gd-seed1-perm0.json", "gd-seed2-perm1.json"]
    # the LCGD cells then run alone: α comes from GD's cached finetuned records
    assert run(_config(task_spec), sliced, lm=tiny_lm, quiet=True) == {
        "done": 2, "skipped": 2, "recomputed": 0, "deferred": 0}
    for pa, pb in zip(_cell_files(whole), _cell_files(sliced), strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    assert "alpha" in json.loads((sliced / "cells/tiny/trained/lcgd-seed2-perm1.json").read_text())


@pytest.mark.parametrize("only, message", [
    (["method"], r"--only takes KEY=V1,V2"),
    (["colour=red"], r"--only takes KEY=V1,V2 with KEY one of task, variant"),
    (["method=gd,sgd"], r"--only method=sgd matches no cell of this config's grid \(its methods: gd, lcgd\)"),
    (["task=sst2"], r"--only task=sst2 matches no cell"),
])  # fmt: skip
def test_a_slice_that_names_nothing_in_the_grid_is_refused(tiny_lm, task_spec, tmp_path, only, message):
    with pytest.raises(JaxiclError, match=message):
        run(_config(task_spec), tmp_path, lm=tiny_lm, quiet=True, only=parse_only(only))
    assert not _cell_files(tmp_path)


def test_cli_run_takes_a_slice(tiny_lm, task_spec, tmp_path, capsys):
    from jaxicl import cli

    argv = ["run", "--model", tiny_lm.source, "--tasks", task_spec, "--k", "4", "--n-eval", "6", "--batch-size", "4",
            "--out", str(tmp_path), "--loss-tokens", "label"]  # fmt: skip
    assert cli.main([*argv, "--only", "method=gd", "--only", "seed=2"]) == 0
    assert "1 cells run, 0 already done, 0 corrupt cell files recomputed, 3 left" in capsys.readouterr().out
    assert [p.name for p in _cell_files(tmp_path)] == ["gd-seed2-perm1.json"]
    cell = json.loads(_cell_files(tmp_path)[0].read_text())
    assert cell["config"]["loss_tokens"] == "label" and cell["lr_origin"] == "paper" and cell["lr"] == 0.05
    assert cli.main([*argv, "--only", "perm=7"]) == 2
    assert "--only perm=7 matches no cell" in capsys.readouterr().err


def test_timing_counts_the_compilations(tiny_lm, task_spec, tmp_path):
    import jax

    jax.clear_caches()  # programs compiled by earlier tests would otherwise be reused, not counted
    run(_config(task_spec, methods=("gd",)), tmp_path / "a", lm=tiny_lm, quiet=True)
    first = json.loads((tmp_path / "a" / "timing.json").read_text())["compile"]
    # at least the step, the stats stack, the prefix cache and the scoring rows
    assert first["programs"] >= 4 and first["seconds"] > 0 and first["cache_hits"] == 0
    run(_config(task_spec, methods=("gd",)), tmp_path / "b", lm=tiny_lm, quiet=True)  # same shapes: reused
    again = json.loads((tmp_path / "b" / "timing.json").read_text())["compile"]
    assert again["programs"] < first["programs"] // 2, (first, again)


def test_cli_run_interrupted_prints_one_line_resumes_and_profiles(tiny_lm, task_spec, tmp_path, capsys, monkeypatch):
    from jaxicl import cli
    from jaxicl.runtime import compile_cache

    real = metrics.all_metrics
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the first cell of the second group: both of its cells are lost
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(metrics, "all_metrics", interrupted)
    cache = tmp_path / "xla"
    argv = ["run", "--model", tiny_lm.source, "--tasks", task_spec, "--k", "4", "--n-eval", "6", "--batch-size", "4",
            "--out", str(tmp_path / "run"), "--compile-cache", str(cache)]  # fmt: skip
    try:
        assert cli.main(argv) == 130
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("jaxicl:") == 1, err
        err = err[err.index("jaxicl:"):].rstrip()  # after the closed progress bars: the one line
        assert "\n" not in err, err
        assert "interrupted after 2 cells this run; lost the 2 cells in progress (tiny/trained/gd seed 2 perm 1; " in err
        assert err.startswith("jaxicl: interrupted") and err.endswith("resume with: jaxicl " + " ".join(argv))
        assert any(p.is_file() for p in cache.rglob("*")), "the persistent compilation cache was not written"
        monkeypatch.setattr(metrics, "all_metrics", real)
        assert cli.main([*argv, "--profile", str(tmp_path / "trace")]) == 0
        assert "2 cells run, 2 already done" in capsys.readouterr().out
        assert list((tmp_path / "trace").rglob("*.xplane.pb")), "no profiler trace of the group"
    finally:
        compile_cache.disable()
    assert len(_cell_files(tmp_path / "run")) == 4


@pytest.mark.slow  # the tiny grid (two variants) twice, plus the vmapped finetuning and evaluation programs
def test_batched_runs_write_the_cells_of_the_one_by_one_run(tiny_lm, task_spec, tmp_path):
    config = _config(task_spec, variants=("trained", "trained-embeddings"))
    assert run(config, tmp_path / "one", lm=tiny_lm, quiet=True, batch_runs="off")["done"] == 8
    # interrupted in the first batched evaluation: the trained variant's 4 runs are finetuned and
    # saved, no cell is written; the rerun reuses those runs and completes the grid
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch, pytest.raises(experiment.RunInterrupted):
        patch.setattr(jaxicl.runner.batched, "evaluate_many", interrupted)
        run(config, tmp_path / "batched", lm=tiny_lm, quiet=True, batch_runs="on")
    assert not _cell_files(tmp_path / "batched")
    assert run(config, tmp_path / "batched", lm=tiny_lm, quiet=True, batch_runs="on")["done"] == 8
    timing = json.loads((tmp_path / "batched" / "timing.json").read_text())["batched"]
    # trained-embeddings: 2 runs x GD and LCGD finetuned under vmap (the trained runs were saved
    # before the interrupt); per variant, the 4 ftzs evaluations at once
    assert timing["runs"] == 4 and timing["evaluations"] == 8 and timing["seconds"] > 0, timing
    assert json.loads((tmp_path / "one" / "timing.json").read_text())["batched"]["runs"] == 0
    stages = json.loads((tmp_path / "batched" / "timing.json").read_text())["stages"]
    assert {"together", "zero_shot", "icl", "ftzs_gd", "metrics_gd"} <= set(stages), stages
    for name, split in stages.items():  # wall = device + compile + host (each rounded to 1 ms)
        assert split["wall"] == pytest.approx(split["device"] + split["compile"] + split["host"], abs=0.003), name
        assert min(split.values()) >= 0, (name, split)
    cells = [p.relative_to(tmp_path / "one") for p in _cell_files(tmp_path / "one")]
    assert cells == [p.relative_to(tmp_path / "batched") for p in _cell_files(tmp_path / "batched")]
    for rel in cells:
        one, batched = (json.loads((tmp_path / d / rel).read_text()) for d in ("one", "batched"))
        assert one["accuracy"] == batched["accuracy"], rel
        _assert_close(batched, one, str(rel))  # every metric within 1e-5 (relative above 1)
    with pytest.raises(JaxiclError, match="--batch-runs must be one of auto, on, off; got 'yes'"):
        run(config, tmp_path / "bad", lm=tiny_lm, quiet=True, batch_runs="yes")


def test_reproduce_paper_batch_size_defaults_to_16_on_cpu_and_takes_auto():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "experiments" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.run_config(module.parse_args([])).batch_size == 16  # this machine is a CPU
    assert module.run_config(module.parse_args(["--batch-size", "auto"])).batch_size == "auto"
    assert module.run_config(module.parse_args(["--batch-size", "64"])).batch_size == 64
    with pytest.raises(JaxiclError, match="--batch-size must be a positive integer or 'auto', got '0'"):
        module.run_config(module.parse_args(["--batch-size", "0"]))
