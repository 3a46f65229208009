"""The resumable runner on two CPU processes joined through jax.distributed (gloo collectives).

Process 1 gets a run directory of its own, as a host without the shared filesystem would: it must
write nothing there and still follow process 0's view of what is done and cached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap

import pytest

pytest.importorskip("torch")

import jaxicl  # noqa: E402
from jaxicl.runner import run  # noqa: E402
from tests.test_distributed import REPO, free_port, run_processes  # noqa: E402
from tests.test_experiment import _assert_close, _config, task_spec  # noqa: E402, F401 (task_spec: a fixture)
from tests.test_hf_parity import _save_tiny  # noqa: E402

WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from jaxicl.runtime import distributed as d
    process_id, port, model, config_json, run_dir = int(sys.argv[1]), *sys.argv[2:5], Path(sys.argv[5])
    assert d.initialize(f"localhost:{port}", 2, process_id)
    import jaxicl
    from jaxicl.runner import RunConfig, run
    config = RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(config_json).items()})
    lm = jaxicl.load(model)
    counts = [run(config, run_dir, lm=lm, quiet=True)]
    if process_id == 0:  # lose a cell and its finetuned evaluation; its checkpoint and ICL evals stay
        (run_dir / "cells/tiny/trained/lcgd-seed2-perm1.json").unlink()
        (run_dir / "evals/tiny/trained/seed2-perm1/lcgd-ft.npz").unlink()
    counts.append(run(config, run_dir, lm=lm, quiet=True))  # process 1 restores nothing itself
    counts.append(run(config, run_dir, lm=lm, quiet=True))
    print("RESULT " + json.dumps(counts))
""")


def _files(root):
    """Relative paths under root, the orbax tree/ folders as one entry (their layout may differ)."""
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if "tree" in rel.parts[:-1]:
            continue
        if p.is_file() or p.name == "tree":
            out.add(str(rel))
    return out


@pytest.mark.slow  # two processes, each running the tiny grid three times
def test_two_processes_write_the_cells_of_one_once_and_resume(task_spec, tmp_path):  # noqa: F811
    model = tmp_path / "model"
    _save_tiny("gemma3", model)
    config = _config(task_spec, methods=("lcgd",))  # GD would double the compile time only
    reference, shared, private = tmp_path / "one", tmp_path / "two", tmp_path / "two-process1"
    assert run(config, reference, lm=jaxicl.load(str(model)), quiet=True)["done"] == 2

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXICL_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    config_json = json.dumps(dataclasses.asdict(config))
    argvs = [[str(script), str(i), str(port), str(model), config_json, str([shared, private][i])] for i in range(2)]
    for counts in run_processes(argvs, [env, env], timeout=240):
        assert counts == [
            {"done": 2, "skipped": 0, "recomputed": 0, "deferred": 0},
            {"done": 1, "skipped": 1, "recomputed": 0, "deferred": 0},  # the lost cell, from process 0's checkpoint
            {"done": 0, "skipped": 2, "recomputed": 0, "deferred": 0},
        ]

    assert not private.exists(), "process 1 wrote into its run directory"
    assert _files(shared) == _files(reference)  # one copy of each file, no temp files, nothing more
    assert (shared / "run.json").read_bytes() == (reference / "run.json").read_bytes()
    cells = sorted(p.relative_to(reference) for p in (reference / "cells").rglob("*.json"))
    assert len(cells) == 2
    for rel in cells:
        _assert_close(json.loads((shared / rel).read_text()), json.loads((reference / rel).read_text()), str(rel))
