"""A full disk while a run writes: one error naming the path and the bytes, no partial, zero-byte or
truncated file left, and the same command resumes once there is space. Each writer is tested by
making its write fail as a full disk does; a whole run is tested on a real, small tmpfs where this
machine lets the tests mount one (as root)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from jaxicl import cli
from jaxicl.errors import StorageError
from jaxicl.io import atomic, checkpoint
from jaxicl.io.results import write_json_atomic

pytest.importorskip("torch")

from jaxicl.runner import RunConfig, run  # noqa: E402
from jaxicl.runner.rundir import save_npz_atomic  # noqa: E402
from tests.test_experiment import _assert_close, _config, task_spec, tiny_lm  # noqa: E402,F401  (fixtures)


@pytest.fixture
def disk_full(monkeypatch):
    """Every write stops half way with ENOSPC, as on a full disk."""

    def half_then_full(f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "write_and_sync", half_then_full)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or p.stat().st_size == 0)]


def _write_png(path: Path) -> None:
    from matplotlib.figure import Figure

    from jaxicl.report.figures import _save

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    _save(fig, path)


def _write_csv(path: Path) -> None:
    from jaxicl.report.fmt import write_csv

    write_csv(path, ["a", "b"], [[1, 2.5], ["x", None]])


WRITERS = {  # what a run writes, by kind: JSON (cells, timing.json, lr_selection.json), npz, CSV, PNG
    "cell.json": lambda path: write_json_atomic(path, {"task": "sst2", "scalar": {"simaou": 0.1}}),
    "icl.npz": lambda path: save_npz_atomic(path, {"scores": np.ones((4, 2), np.float32)}),
    "table2.csv": _write_csv,
    "fig.png": _write_png,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_writer_names_the_path_and_bytes_and_leaves_nothing_partial(name, tmp_path, disk_full):
    path = tmp_path / "run" / name
    with pytest.raises(StorageError, match=rf"could not write {path} \(\d+ bytes\): No space left on device"):
        WRITERS[name](path)
    assert not path.exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_failed_rewrite_keeps_the_earlier_file_whole(name, tmp_path, monkeypatch):
    path = tmp_path / name
    WRITERS[name](path)
    before = path.read_bytes()
    monkeypatch.setattr(atomic, "write_and_sync", lambda f, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(StorageError):
        WRITERS[name](path)
    assert path.read_bytes() == before and not _leftovers(tmp_path)


def test_the_report_on_a_full_disk_is_one_error_and_no_partial_file(tmp_path, disk_full, capsys):
    from tests.test_report import make_cell, new_run, write_cell

    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0))
    assert cli.main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not write" in err and "bytes" in err and "No space left" in err
    assert not _leftovers(run_dir)


def test_a_checkpoint_on_a_full_disk_leaves_no_partial_tree(tmp_path, monkeypatch):
    """orbax reports a full disk as tensorstore's RESOURCE_EXHAUSTED; its half-written tree goes."""

    class Full:
        def save(self, directory, tree, force):
            tmp = Path(f"{directory}.orbax-checkpoint-tmp-1")
            tmp.mkdir(parents=True)
            (tmp / "part").write_bytes(b"x" * 10)
            raise ValueError("RESOURCE_EXHAUSTED: Failed to write 140469 bytes to file 4: No space left on "
                             "device [os_error_code='28']")  # fmt: skip

    monkeypatch.setattr(checkpoint, "_checkpointer", Full)
    tree = {"k": np.ones((10, 10), np.float32)}
    with pytest.raises(StorageError, match=rf"could not write {tmp_path / 'ck' / 'tree'} \(400 bytes\)"):
        checkpoint.save(tmp_path / "ck", tree, "key")
    assert list((tmp_path / "ck").iterdir()) == []  # no tree, no meta, no orbax temporary
    assert not checkpoint.has(tmp_path / "ck", "key")


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (skipped where this process may not mount one)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


@pytest.mark.slow  # a tiny grid three times: on a full tmpfs, resumed there, and elsewhere for reference
@pytest.mark.parametrize("free_kib, writing", [(24, "evals/"), (160, "checkpoints/")])  # where the disk fills
def test_a_run_on_a_full_tmpfs_stops_cleanly_and_resumes_to_the_same_cells(tiny_lm, task_spec, small_disk, tmp_path,
                                                                           free_kib, writing):
    config: RunConfig = _config(task_spec, n_runs=1)
    run_dir = small_disk / "run"
    filler = _fill(small_disk, leave=free_kib * 1024)
    with pytest.raises(StorageError, match=r"could not write .* \(\d+ bytes\): No space left on device") as full:
        run(config, run_dir, lm=tiny_lm, quiet=True)
    assert f"{run_dir}/{writing}" in str(full.value)
    assert not _leftovers(run_dir)
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())  # every file there is whole
    filler.unlink()
    assert run(config, run_dir, lm=tiny_lm, quiet=True)["done"] >= 1
    run(config, tmp_path / "reference", lm=tiny_lm, quiet=True)
    for ref in sorted((tmp_path / "reference" / "cells").rglob("*.json")):
        got = json.loads((run_dir / ref.relative_to(tmp_path / "reference")).read_text())
        want = json.loads(ref.read_text())
        _assert_close({k: got[k] for k in ("scalar", "per_layer", "accuracy")},
                      {k: want[k] for k in ("scalar", "per_layer", "accuracy")})
    shutil.rmtree(run_dir)
