"""One writer per run directory.

`jaxicl run` and `jaxicl tune` hold a lock file in their directory while they work: created
atomically (O_CREAT | O_EXCL), naming the PID, the host, the start time and the command. A second
command on the same directory is refused at once with the holder's name. A lock left by a process
that is gone (`kill -9`, a crash) on this host is taken over with a warning; one from another host
is never taken over, since its process cannot be seen from here. The lock is released on normal
exit, Ctrl-C and SIGTERM (turned into KeyboardInterrupt while it is held). On several hosts,
process 0 alone holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

from jaxicl.errors import InputError, JaxiclError
from jaxicl.io.atomic import storage_error
from jaxicl.runner.layout import LOCK_FILE
from jaxicl.runtime import distributed

UNREADABLE_GRACE_S = 2.0  # a lock file that is still being written is read again after this


class BusyError(JaxiclError, RuntimeError):
    """A run directory that another command holds."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused PID apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether the holder's process runs: its PID exists and, where known, started when it did."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"pid", "host"} <= set(holder) else None


def _create(path: Path, mine: dict) -> bool:
    """Create the lock file with `mine` in it unless it exists (atomic); False if it does."""
    data = (json.dumps(mine, indent=1) + "\n").encode()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise storage_error(path, len(data), e) from e
    try:
        os.write(fd, data)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise storage_error(path, len(data), e) from e
    os.close(fd)
    return True


def _refusal(run_dir: Path, path: Path, holder: dict | None) -> BusyError:
    if holder is None:
        return BusyError(f"{run_dir} has a lock file that cannot be read ({path}); if no jaxicl command is "
                         f"using the directory, delete it and rerun")  # fmt: skip
    who = f"PID {holder['pid']} on {holder['host']}, since {holder.get('started', '?')}: `{holder.get('command', '?')}`"
    if holder["host"] != socket.gethostname():
        return BusyError(f"{run_dir} is locked by another host ({who}); jaxicl cannot see that process from "
                         f"here. If it no longer runs, delete {path} and rerun")  # fmt: skip
    return BusyError(f"{run_dir} is in use by another command ({who}). Wait for it to finish (its finished "
                     f"work is kept; rerun the same command then) or stop it; a lock whose process is gone "
                     f"is taken over by the next command")  # fmt: skip


def _make_run_dir(run_dir: Path) -> None:
    """The run directory, or an error naming what stands in its place (a file, a link to nowhere)."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise InputError(f"--out {run_dir} is a link to {os.readlink(run_dir)}, which does not exist; "
                         f"create that directory or point --out elsewhere")  # fmt: skip
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir} is a file, not a directory; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)


def acquire(run_dir: str | os.PathLike, command: str | None = None) -> dict:
    """Take the directory's lock; BusyError naming the holder when another command has it."""
    run_dir = Path(run_dir)
    _make_run_dir(run_dir)
    path = run_dir / LOCK_FILE
    me = os.getpid()
    mine = {"pid": me, "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command or " ".join(sys.argv), "process_start": _process_start(me),
            "token": secrets.token_hex(8)}  # fmt: skip
    for _ in range(3):
        if _create(path, mine):
            return mine
        holder = _read(path)
        if holder is None:  # perhaps being written this instant
            time.sleep(UNREADABLE_GRACE_S)
            holder = _read(path)
        if holder is None or holder["host"] != mine["host"] or _alive(int(holder["pid"]), holder.get("process_start")):
            raise _refusal(run_dir, path, holder)
        warnings.warn(f"taking over the lock of {run_dir}: PID {holder['pid']} on {holder['host']} "
                      f"(since {holder.get('started', '?')}) is gone", stacklevel=2)  # fmt: skip
        path.unlink(missing_ok=True)
    raise _refusal(run_dir, path, _read(path))


def release(run_dir: str | os.PathLike, mine: dict) -> None:
    """Remove the lock if it is still this command's."""
    path = Path(run_dir) / LOCK_FILE
    holder = _read(path)
    if holder is not None and holder.get("token") == mine["token"]:
        path.unlink(missing_ok=True)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def holding(run_dir: str | os.PathLike, command: str | None = None) -> Iterator[None]:
    """The directory's lock for the duration (process 0 only), with SIGTERM as KeyboardInterrupt
    so that `kill` releases it as Ctrl-C does."""
    mine = acquire(run_dir, command) if distributed.is_writer() else None
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if mine is not None:
            release(run_dir, mine)
