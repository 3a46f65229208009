"""Orbax save/restore of finetuned parameters (and their run records), keyed by a config hash.

A checkpoint directory holds `tree/` (an orbax checkpoint of a pytree of arrays) and `meta.json`
(the key, written last and atomically). `meta.json` is removed before `tree/` is rewritten, so a
checkpoint whose meta is present is complete; an interrupted save leaves none, and `restore`
returns None for it, for another key, or for anything unreadable, so the caller simply recomputes.

In a multi-process run (jax.distributed) `save` and `restore` involve the calling process alone
(orbax would otherwise wait for every process at its barriers): call them from one process, as
`finetune_cached` does from process 0. There `save` stores numpy copies of the arrays, since orbax
refuses one host's local jax.Arrays; they restore the same.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxicl.io.atomic import storage_error
from jaxicl.io.results import write_json_atomic

TREE_DIR = "tree"
META_FILE = "meta.json"
FORMAT = 1


def fingerprint(payload: Any) -> str:
    """sha256 of the canonical JSON of `payload` (dict keys sorted; tuples as lists)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    raise TypeError(f"cannot fingerprint a {type(x).__name__}")


def array_fingerprint(tree: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes: the identity of a params pytree."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _checkpointer():
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()  # this process alone: no barriers with the others
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def save(directory: str | os.PathLike, tree: Any, key: str, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `tree` under `directory` as the checkpoint of `key`, replacing any earlier one."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).unlink(missing_ok=True)  # invalid from here until the new meta lands
    if jax.process_count() > 1:
        tree = jax.tree.map(np.asarray, tree)
    checkpointer = _checkpointer()
    try:
        checkpointer.save(directory / TREE_DIR, tree, force=True)
        checkpointer.wait_until_finished()
    except Exception as e:  # orbax reports a full disk as a ValueError (tensorstore's RESOURCE_EXHAUSTED)
        for partial in [directory / TREE_DIR, *directory.glob(f"{TREE_DIR}.orbax-checkpoint-tmp*")]:
            shutil.rmtree(partial, ignore_errors=True)
        if not _out_of_space(e):
            raise
        nbytes = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(tree))
        raise storage_error(directory / TREE_DIR, nbytes, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from e
    write_json_atomic(directory / META_FILE, {"format": FORMAT, "key": key, "meta": dict(meta or {})})
    return directory


def _out_of_space(error: BaseException) -> bool:
    """Whether a failed save ran out of disk (an OSError anywhere in its chain, or tensorstore's words)."""
    while error is not None:
        if isinstance(error, OSError) or "No space left" in str(error) or "os_error_code='28'" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def has(directory: str | os.PathLike, key: str) -> bool:
    """Whether `directory` holds a checkpoint saved under `key` (its meta only; `restore` checks the tensors)."""
    try:
        info = json.loads((Path(directory).absolute() / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == FORMAT and info.get("key") == key


def restore(
    directory: str | os.PathLike, key: str, expect: Any | None = None
) -> tuple[dict, dict] | None:
    """(tree, meta) saved under `key`, or None when absent, saved under another key, unreadable,
    or when a leaf of `expect` (arrays or ShapeDtypeStructs) is missing or differs in shape/dtype."""
    directory = Path(directory).absolute()
    if not has(directory, key):
        return None
    info = json.loads((directory / META_FILE).read_text())
    try:
        tree = _checkpointer().restore(directory / TREE_DIR)
    except Exception as e:  # orbax raises many types for a damaged directory
        warnings.warn(f"{directory}: checkpoint unreadable ({type(e).__name__}: {e}); ignoring it")
        return None
    if expect is not None and not _matches(tree, expect):
        warnings.warn(f"{directory}: checkpoint tensors do not match the expected shapes; ignoring it")
        return None
    return tree, info.get("meta", {})


def _matches(tree: Any, expect: Any) -> bool:
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    for path, want in jax.tree_util.tree_flatten_with_path(expect)[0]:
        x = got.get(jax.tree_util.keystr(path))
        if x is None or tuple(x.shape) != tuple(want.shape) or np.dtype(x.dtype) != np.dtype(want.dtype):
            return False
    return True
