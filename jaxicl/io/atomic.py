"""Every file jaxicl writes reaches the disk here, whole or not at all.

The bytes go to a temporary file in the target's directory, are flushed and fsynced, and the
temporary file is renamed over the target, so a reader (or a resumed run) never sees half a file.
Any OSError on the way (a full disk above all) becomes one `StorageError` that names the path and
the bytes, after the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jaxicl.errors import StorageError


def storage_error(path: str | os.PathLike, nbytes: int, error: OSError) -> StorageError:
    """The one-line error for a write that failed: what, how much, why, and what to do."""
    why = error.strerror or str(error)
    return StorageError(f"could not write {path} ({nbytes} bytes): {why}; nothing partial was left. "
                        "Free space and rerun the same command: finished work is kept")  # fmt: skip


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file, fsync, rename); StorageError on any OSError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(path, len(data), e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write_and_sync(f, data)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise storage_error(path, len(data), e) from e
        raise
    return path


def write_and_sync(f, data: bytes) -> None:
    """The bytes onto the disk: written, flushed and fsynced (tests make this fail as a full disk would)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
