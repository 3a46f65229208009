"""Every argument of `jaxicl run`, `tune` and `eval` is checked before the model loads: a refused
command exits 2 with one line that names the argument and what it may be, loads no model and
writes no file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jaxicl import cli


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    for module in ("jaxicl.runner.execute", "jaxicl.runner.tune", "jaxicl.runner.checkpoints", "jaxicl.cli.evaluate"):
        monkeypatch.setattr(f"{module}.load", refuse)


def _lrs_file(tmp_path: Path) -> str:
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({"sst2": 1e-4}))
    return str(path)


def _revisions(tmp_path: Path) -> str:
    (tmp_path / "model" / "step0").mkdir(parents=True)
    return str(tmp_path / "model")


RUN = [  # (extra arguments, the message's words)
    (["--tasks", "nosuch"], "unknown task 'nosuch'; known tasks: agnews, cb, mr, sst2, sst5, subj"),
    (["--tasks", "sst2,sst2"], "--tasks names sst2 more than once"),
    (["--seeds", "1,2", "--perms", "0,7"], "--perms: perm must be in 0..4 (the paper's permutation draws), got 7"),
    (["--seeds", "1,2", "--perms", "0"], "--perms has 1 values for 2 seeds"),
    (["--seeds", "-1"], "--seeds must be an integer >= 0, got -1"),
    (["--n-runs", "0"], "--n-runs must be an integer >= 1, got 0"),
    (["--methods", "gd,sgd"], "--methods: unknown 'sgd'; choose from gd, lcgd"),
    (["--variants", "trained,random"], "--variants: unknown 'random'; choose from trained, trained-embeddings, "
                                       "no-training, no-training-keep-norms"),
    (["--k", "-1"], "--k must be an integer >= 0, got -1"),
    (["--k", "100000"], "--k 100000 exceeds the 67349 rows of sst2's train split"),
    (["--n-eval", "0"], "--n-eval must be an integer >= 1, got 0"),
    (["--max-len", "1"], "--max-len must be an integer >= 2, got 1"),
    (["--max-len", "99999999"], "--max-len 99999999 exceeds gemma3-270m's context window of 32768 tokens"),
    (["--batch-size", "0"], "--batch-size (or 'auto') must be an integer >= 1, got 0"),
    (["--lrs", "rates.yaml"], "--lrs must be 'paper', 'selected' or an existing .json file; got 'rates.yaml'"),
    (["--tasks", "sst2,sst5", "--lrs", "@lrs"], "has no learning rate for task sst5"),
    (["--controls", "nosuch"], "unknown control(s) ['nosuch']; known: cross-task, shuffled-gd, shuffled-icl"),
    (["--controls", "shuffled-gd", "--methods", "lcgd"], "the controls compare against GD: add gd to --methods"),
    (["--tasks", "sst2,mr", "--controls", "cross-task", "--cross-task", "sst2:cb"],
     "--cross-task sst2:cb: task 'cb' is not in the grid (sst2, mr)"),
    (["--checkpoints", "step0"], "--checkpoints needs --model hf:org/name or a local directory of revisions"),
    (["--model", "@revisions", "--checkpoints", "step0,step9"], "--checkpoints: revision 'step9' of"),
    (["--checkpoints", "a/b"], "--checkpoints: 'a/b' is not a revision name (no '/')"),
    (["--order-permutations", "1"], "order sensitivity needs P >= 2 permutations (0: off), got 1"),
    (["--only", "method=sgd"], "--only method=sgd matches no cell of this config's grid (its methods: gd, lcgd)"),
    (["--only", "colour=red"], "--only takes KEY=V1,V2 with KEY one of task, variant, method, seed, perm"),
    (["--lcgd-readout", "mlp"], "--lcgd-readout: unknown 'mlp'; choose from block, attn"),
    (["--layer-reduction", "max"], "--layer-reduction: unknown 'max'; choose from sum, mean"),
    (["--finetune-dtype", "float16"], "--finetune-dtype: unknown 'float16'; choose from float32, bfloat16"),
    (["--stepped", "q"], "--stepped: unknown 'q'; choose from kv, k, v"),
    (["--data-dir", "@empty"], "missing split file"),
    (["--model", "no-such-model"], "--model 'no-such-model' is neither a registry name (gemma3-270m, smollm2-135m, "
                                   "qwen2.5-coder-0.5b)"),
]
TUNE = [
    (["--tasks", "nosuch"], "unknown task 'nosuch'"),
    (["--grid", "0.1,-1"], "learning rate -1.0 in the grid is not a positive finite number"),
    (["--n-runs", "0"], "--n-runs must be an integer >= 1, got 0"),
    (["--selection-size", "0"], "selection_size must be >= 1, got 0"),
    (["--k", "-1"], "--k must be an integer >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size (or 'auto') must be an integer >= 1, got 0"),
    (["--data-dir", "@empty"], "missing split file"),
    (["--model", "no-such-model"], "--model 'no-such-model' is neither a registry name"),
]
EVAL = [
    (["--task", "nosuch"], "unknown task 'nosuch'"),
    (["--perm", "5"], "perm must be in 0..4"),
    (["--seed", "-1"], "--seeds must be an integer >= 0, got -1"),
    (["--k", "-1"], "--k must be an integer >= 0, got -1"),
    (["--n-eval", "0"], "--n-eval must be an integer >= 1, got 0"),
    (["--max-len", "1"], "--max-len must be an integer >= 2, got 1"),
    (["--batch-size", "0"], "--batch-size (or 'auto') must be an integer >= 1, got 0"),
    (["--data-dir", "@empty"], "missing split file"),
    (["--model", "no-such-model"], "--model 'no-such-model' is neither a registry name"),
]


def _argv(command: str, extra: list[str], tmp_path: Path, data_dir: Path) -> list[str]:
    base = {"run": ["run", "--tasks", "sst2"], "tune": ["tune", "--tasks", "sst2"],
            "eval": ["eval", "--task", "sst2", "--seed", "1"]}[command]  # fmt: skip
    out = [] if command == "eval" else ["--out", str(tmp_path / "out")]
    given = {"@lrs": _lrs_file(tmp_path), "@revisions": _revisions(tmp_path), "@empty": str(tmp_path)}
    extra = [given.get(a, a) for a in extra]
    data = [] if "--data-dir" in extra else ["--data-dir", str(data_dir)]
    if command == "eval" and "--task" in extra:  # the argument under test replaces the base task
        base = ["eval", "--seed", "1"]
    return base + out + data + extra + ([] if command == "eval" else ["--compile-cache", "off"])


@pytest.mark.parametrize("command, extra, message",
                         [("run", *case) for case in RUN] + [("tune", *case) for case in TUNE]
                         + [("eval", *case) for case in EVAL])  # fmt: skip
def test_a_bad_argument_is_refused_before_anything_runs(command, extra, message, tmp_path, data_dir, no_load, capsys):
    start = time.perf_counter()
    assert cli.main(_argv(command, extra, tmp_path, data_dir)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("jaxicl: error: ")  # one line
    assert not (tmp_path / "out").exists()  # no run directory for a refused command
    assert time.perf_counter() - start < 60


def test_token_wise_records_that_do_not_fit_in_memory_are_refused_before_the_first_group(tmp_path, monkeypatch,
                                                                                        capsys):
    pytest.importorskip("torch")
    import jaxicl
    from jaxicl.errors import InputError
    from jaxicl.runner import run
    from jaxicl.runtime import memory
    from tests.test_experiment import _config, write_task
    from tests.test_hf_parity import _save_tiny

    _save_tiny("gemma3", tmp_path / "model")
    lm = jaxicl.load(str(tmp_path / "model"))
    (tmp_path / "task").mkdir()
    spec = write_task(tmp_path / "task", "tiny", ["w1", "w2"], 10, 20, [[1, 0]], seed=0)
    config = _config(spec, n_runs=1, methods=("gd",), token_wise=True, stability_check=True)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(InputError, match=r"--token-wise on tiny: its records need about 0.00 GiB of host memory "
                                         r"\(6 x 3 layers x 32 x \d+ query tokens x 4 bytes x 4\), more than the "
                                         r"0.00 GiB available; lower --n-eval"):
        run(config, tmp_path / "run", lm=lm, quiet=True)
    assert not (tmp_path / "run" / "cells").exists()
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**34)
    run(config, tmp_path / "run", lm=lm, quiet=True, only={"method": ["gd"]})
    assert "token-wise records of tiny: about 0.00 GiB of host memory" in capsys.readouterr().out
