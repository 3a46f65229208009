"""One writer per run directory: the lock file, the refusal naming the holder, the takeover of a
stale lock, release on exit, Ctrl-C, SIGTERM and after kill -9, and a report during a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxicl import cli
from jaxicl.errors import InputError
from jaxicl.runner import lock
from jaxicl.runner.layout import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
HOLDER = textwrap.dedent("""
    import signal, sys, time
    from jaxicl.runner.lock import holding
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal (a background CI job ignores it)
    with holding(sys.argv[1], command="jaxicl run --out test"):
        print("holding", flush=True)
        time.sleep(120)
""")


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the directory's lock and sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)  # fmt: skip
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _write_lock(run_dir: Path, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+0000",
              "command": "jaxicl run --out elsewhere", "process_start": None, "token": "t"} | fields  # fmt: skip
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps(holder))
    return path


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    with lock.holding(tmp_path, command="jaxicl tune --out x"):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "jaxicl tune --out x" and holder["started"]
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_command_is_refused_with_the_holder_and_what_to_do(tmp_path):
    proc = _holder(tmp_path)
    try:
        start = time.perf_counter()
        with pytest.raises(lock.BusyError) as refused:
            lock.acquire(tmp_path)
        assert time.perf_counter() - start < 5
        message = str(refused.value)
        assert f"PID {proc.pid} on {socket.gethostname()}" in message and "`jaxicl run --out test`" in message
        assert "Wait for it to finish" in message
    finally:
        proc.terminate()
        proc.wait()


def test_sigterm_and_ctrl_c_release_the_lock(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = _holder(tmp_path)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert not (tmp_path / LOCK_FILE).exists(), sig


def test_after_kill_9_the_next_command_takes_the_stale_lock_over(tmp_path):
    proc = _holder(tmp_path)
    proc.kill()
    proc.wait()
    assert (tmp_path / LOCK_FILE).exists()
    with pytest.warns(UserWarning, match=f"taking over the lock of {tmp_path}: PID {proc.pid} .* is gone"):
        mine = lock.acquire(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release(tmp_path, mine)


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    """The PID runs, but it is another process than the holder: its start time differs."""
    _write_lock(tmp_path, pid=os.getpid(), process_start="1")
    with pytest.warns(UserWarning, match="is gone"):
        lock.release(tmp_path, lock.acquire(tmp_path))


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    path = _write_lock(tmp_path, host="tpu-worker-7", pid=_gone_pid())
    with pytest.raises(lock.BusyError, match=f"locked by another host .*tpu-worker-7.*delete {path}"):
        lock.acquire(tmp_path)
    assert json.loads(path.read_text())["host"] == "tpu-worker-7"


def test_an_unreadable_lock_is_refused_with_how_to_clear_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "UNREADABLE_GRACE_S", 0.01)
    (tmp_path / LOCK_FILE).write_text("")
    with pytest.raises(lock.BusyError, match="cannot be read .* delete it"):
        lock.acquire(tmp_path)


def test_only_process_0_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lock.distributed, "is_writer", lambda: False)
    with lock.holding(tmp_path):
        assert not (tmp_path / LOCK_FILE).exists()


def test_a_busy_run_directory_refuses_jaxicl_run_and_tune_within_seconds(tmp_path, data_dir, capsys):
    proc = _holder(tmp_path)
    try:
        for command in (["run", "--tasks", "sst2"], ["tune", "--tasks", "sst2"]):
            start = time.perf_counter()
            argv = [*command, "--out", str(tmp_path), "--data-dir", str(data_dir), "--compile-cache", "off"]
            assert cli.main(argv) == 2
            assert time.perf_counter() - start < 30
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"is in use by another command (PID {proc.pid}" in err
        assert not (tmp_path / "run.json").exists()
    finally:
        proc.terminate()
        proc.wait()


def test_the_report_reads_a_directory_while_its_run_holds_it(tmp_path):
    from jaxicl.report import write_report
    from tests.test_report import make_cell, new_run, write_cell

    run_dir = new_run(tmp_path)
    write_cell(run_dir, make_cell("sst2", "trained", "gd", 2, 0))
    half = run_dir / "cells" / "sst2" / "trained" / ".gd-seed3-perm1.json.1234.tmp"  # a cell being written
    half.write_text('{"task": "sst2"')
    with lock.holding(run_dir):
        md = write_report(run_dir).read_text()
    assert "Runs per task (GD/LCGD): SST2 1/0" in md and ".tmp" not in md


def test_a_run_directory_that_is_a_dangling_link_or_a_file_is_refused_by_name(tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"is a link to .*nowhere, which does not exist"):
        lock.acquire(link)
    (tmp_path / "nowhere").mkdir()
    lock.release(link, lock.acquire(link))  # the same link, once its target exists
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        lock.acquire(plain)
