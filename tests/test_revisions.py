"""ICL vs GD across training checkpoints (jaxicl/runner/checkpoints.py) on tiny random "revisions" saved as
local directories: one run directory per revision, the revision in every cell and in the run key,
the report's curves, and the refusals."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")

from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxicl.errors import InputError, JaxiclError, ModelNotFoundError  # noqa: E402
from jaxicl.runner import RunConfig, run  # noqa: E402
from jaxicl.runner import checkpoints as revisions  # noqa: E402
from jaxicl.runner.checkpoints import run_checkpoints  # noqa: E402
from tests.test_experiment import task_spec  # noqa: E402,F401  (fixture)
from tests.test_hf_parity import _save_tiny  # noqa: E402


def test_checkpoint_lists_steps_and_sources(tmp_path):
    assert revisions.parse_checkpoints("step0, step1000,step143000") == ("step0", "step1000", "step143000")
    listed = tmp_path / "revs.txt"
    listed.write_text("# Pythia\nstep0\n\nstep512  # early\n")
    assert revisions.parse_checkpoints(f"@{listed}") == ("step0", "step512")
    for bad, message in (("step0,step0", "repeats"), (",", "names no revision"), ("a/b", "not a revision name"),
                         ("@/nonexistent.txt", "no such file")):  # fmt: skip
        with pytest.raises(JaxiclError, match=message):
            revisions.parse_checkpoints(bad)
    assert [revisions.training_step(r) for r in ("step0", "step143000", "main", "v2")] == [0, 143000, None, 2]
    assert revisions.revision_source("hf:EleutherAI/pythia-70m", "step0") == "hf:EleutherAI/pythia-70m@step0"
    assert revisions.revision_source(str(tmp_path), "step0") == str(tmp_path / "step0")
    with pytest.raises(JaxiclError, match="already names a revision"):
        revisions.revision_source("hf:org/name@main", "step0")
    with pytest.raises(JaxiclError, match="needs --model hf:org/name or a local directory"):
        revisions.revision_source("gemma3-270m", "step0")


@pytest.fixture(scope="module")
def revision_dir(tmp_path_factory):
    """step0 and step1000: the same tiny Gemma 3 with other weights (the later one moved a little)."""
    root = tmp_path_factory.mktemp("revisions")
    _save_tiny("gemma3", root / "step0")
    shutil.copytree(root / "step0", root / "step1000")
    tensors = load_file(root / "step1000" / "model.safetensors")
    save_file({k: v * 1.1 for k, v in tensors.items()}, root / "step1000" / "model.safetensors", metadata={"format": "pt"})
    return root


@pytest.mark.slow  # two tiny runs
def test_the_grid_runs_on_each_revision_apart_and_the_report_follows_training(revision_dir, task_spec, tmp_path):
    config = RunConfig(model=str(revision_dir), tasks=(task_spec,), k=4, n_eval=6, batch_size=4, methods=("gd", "lcgd"),
                       n_runs=1, checkpoints=("step0", "step1000"))  # fmt: skip
    assert run_checkpoints(config, tmp_path, quiet=True)["done"] == 4
    index = json.loads((tmp_path / "revisions.json").read_text())
    assert list(index["revisions"]) == ["step0", "step1000"] and index["revisions"]["step1000"]["step"] == 1000
    cells = {rev: json.loads((tmp_path / f"revisions/{rev}/cells/tiny/trained/gd-seed1-perm0.json").read_text())
             for rev in ("step0", "step1000")}  # fmt: skip
    assert [c["revision"] for c in cells.values()] == ["step0", "step1000"]
    assert cells["step0"]["scalar"]["simaou"] != cells["step1000"]["scalar"]["simaou"]  # other weights
    # the revision is part of each revision's run key: its directory refuses another revision's config
    theirs = json.loads((tmp_path / "revisions/step0/run.json").read_text())
    assert theirs["revision"] == "step0" and theirs["model"].endswith("step0")
    assert run_checkpoints(config, tmp_path, quiet=True) == {"done": 0, "skipped": 4, "recomputed": 0, "deferred": 0}

    from jaxicl import cli

    assert cli.main(["report", str(tmp_path)]) == 0  # a checkpoints run directory has no cells/ of its own
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Across training checkpoints" in md and "| step1000 | 1000 | 2 |" in md
    assert (tmp_path / "report" / "checkpoints.png").stat().st_size > 1000
    rows = (tmp_path / "report" / "checkpoints.csv").read_text().splitlines()
    assert rows[0].startswith("revision,step,cells,simaou_gd") and len(rows) == 3


def test_a_missing_revision_is_named_and_nothing_is_written_for_it(revision_dir, task_spec, tmp_path):
    config = RunConfig(model=str(revision_dir), tasks=(task_spec,), k=4, n_eval=6, batch_size=4, methods=("gd",),
                       n_runs=1, checkpoints=("step0", "step5"))  # fmt: skip
    with pytest.raises(ModelNotFoundError, match="revision 'step5'"):
        run_checkpoints(config, tmp_path, quiet=True)
    assert not (tmp_path / "revisions").exists() and not (tmp_path / "revisions.json").exists()  # refused up front


def test_a_revision_with_another_tokenizer_is_refused(revision_dir, task_spec, tmp_path):
    root = tmp_path / "model"
    shutil.copytree(revision_dir / "step0", root / "step0")
    shutil.copytree(revision_dir / "step0", root / "retokenized")
    vocab = json.loads((root / "retokenized" / "tokenizer.json").read_text())
    vocab["model"]["vocab"] = {(w if w != "w10" else "w10x"): i for w, i in vocab["model"]["vocab"].items()}
    (root / "retokenized" / "tokenizer.json").write_text(json.dumps(vocab))
    config = RunConfig(model=str(root), tasks=(task_spec,), k=4, n_eval=6, batch_size=4, methods=("gd",), n_runs=1,
                       checkpoints=("step0", "retokenized"))  # fmt: skip
    with pytest.raises(JaxiclError, match="'retokenized' .* has another tokenizer"):
        run_checkpoints(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run/revisions/retokenized").exists()


def test_run_refuses_a_checkpoints_config_and_names_the_caller(revision_dir, task_spec, tmp_path):
    """The runner never imports the checkpoints module: a config over checkpoints goes through
    run_checkpoints (as `jaxicl run --checkpoints` does), and `run` says so before writing anything."""
    config = RunConfig(model=str(revision_dir), tasks=(task_spec,), k=4, n_eval=6, batch_size=4, methods=("gd",),
                       n_runs=1, checkpoints=("step0",))  # fmt: skip
    with pytest.raises(InputError, match="run_checkpoints"):
        run(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # one tiny revision through the command line
def test_jaxicl_run_with_checkpoints_goes_through_the_checkpoint_runner(revision_dir, task_spec, tmp_path, capsys):
    from jaxicl import cli

    argv = ["run", "--model", str(revision_dir), "--tasks", task_spec, "--k", "4", "--n-eval", "6", "--batch-size",
            "4", "--n-runs", "1", "--methods", "gd", "--checkpoints", "step0", "--out", str(tmp_path),
            "--compile-cache", "off"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (tmp_path / "revisions/step0/cells/tiny/trained/gd-seed1-perm0.json").is_file()
    assert "1 cells run" in capsys.readouterr().out
