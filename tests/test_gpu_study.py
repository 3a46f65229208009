"""experiments/gpu_study.py on the CPU with a tiny model: the path a lent accelerator would take
(machine record, prompt fingerprints against a reference, the study as a child, progress written as
it goes, a stop at the deadline, the cells compared and packed)."""

from __future__ import annotations

import json
import tarfile

import pytest

pytest.importorskip("torch")

from experiments import gpu_study  # noqa: E402
from jaxicl.studies.models import model_dir, publish_model  # noqa: E402
from tests.test_experiment import task_spec  # noqa: E402,F401  (fixture)
from tests.test_hf_parity import _save_tiny  # noqa: E402


@pytest.mark.slow  # a tiny model's study in a child process, then a resumed one and a cut one
def test_the_device_script_checks_prompts_writes_progress_and_compares_cells(task_spec, tmp_path):
    model = tmp_path / "tiny"
    _save_tiny("gemma3", model)
    common = ["--model", str(model), "--tasks", task_spec, "--n-runs", "1", "--k", "4", "--n-eval", "6", "--every", "1"]
    study = ["--", "--search", "full", "--grid", "0.01,0.05", "--batch-size", "4", "--compile-cache", "off"]
    first = tmp_path / "first"
    assert gpu_study.main([*common, "--out-dir", str(first), "--work", str(tmp_path / "w1"), *study]) == 0
    machine = json.loads((first / "machine.json").read_text())
    assert machine["backend"] == "cpu" and machine["matmul_float32_tflops"] > 0
    done = json.loads((first / "progress.json").read_text())
    assert done["study_rc"] == 0 and done["cells_done"] == 4 and done["cells_per_minute"] > 0

    reference = tmp_path / "published"  # what the CPU publishes: selection, cells, and the prompts' fingerprints
    publish_model(model_dir(tmp_path / "w1", str(model)), reference)
    assert gpu_study.main([*common, "--out-dir", str(reference), "--fingerprint-only"]) == 0
    moved = sorted((reference / "cells").rglob("*.json"))[0]  # one reference number off by a known amount
    cell = json.loads(moved.read_text())
    cell["accuracy"]["icl"] += 0.25
    moved.write_text(json.dumps(cell))
    second = tmp_path / "second"  # resumes the first study's directory: its cells are compared, not recomputed
    assert gpu_study.main([*common, "--out-dir", str(second), "--work", str(tmp_path / "w1"),
                           "--reference", str(reference), *study]) == 0  # fmt: skip
    assert json.loads((second / "fingerprint.json").read_text())["match"] is True
    compared = json.loads((second / "progress.json").read_text())["versus_reference"]
    assert len(compared) == 4
    off = compared.pop(moved.relative_to(reference / "cells").as_posix())
    assert off["metric"] == "icl" and abs(off["max_abs_diff"] - 0.25) < 1e-12
    assert all(c["max_abs_diff"] == 0.0 for c in compared.values())  # the others: the very cells
    with tarfile.open(second / "cells.tgz") as tar:
        assert len([n for n in tar.getnames() if n.endswith(".json")]) == 4

    prints = json.loads((reference / gpu_study.PROMPTS_FILE).read_text())
    task = next(iter(prints))
    prints[task][next(iter(prints[task]))] = "0" * 64  # another tokenizer's prompts
    (reference / gpu_study.PROMPTS_FILE).write_text(json.dumps(prints))
    third = tmp_path / "third"
    assert gpu_study.main([*common, "--out-dir", str(third), "--reference", str(reference), *study]) == 3
    assert json.loads((third / "fingerprint.json").read_text())["differing"] == [f"{task}/{next(iter(prints[task]))}"]
    assert not (third / "progress.json").exists()  # stopped before the study

    cut = tmp_path / "cut"  # the deadline: the child is stopped, and what it finished is kept and reported
    assert gpu_study.main([*common, "--out-dir", str(cut), "--work", str(tmp_path / "w3"), "--minutes", "0.01",
                           *study]) == 0  # fmt: skip
    stopped = json.loads((cut / "progress.json").read_text())
    assert stopped["study_rc"] != 0 and stopped["cells_done"] < 4
