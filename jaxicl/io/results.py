"""Results files: JSON written atomically (a reader never sees half a file), plus provenance."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxicl.io.atomic import write_bytes_atomic

PACKAGES = ("jaxicl", "jax", "jaxlib", "flax", "optax", "numpy", "transformers", "gguf", "orbax-checkpoint")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """JSON (strict: no NaN) written atomically; StorageError when the disk is full."""
    text = json.dumps(payload, indent=1, sort_keys=False, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode())


def write_config(path: str | os.PathLike, config: dict, force: bool = False, defaults: dict | None = None) -> None:
    """Write a directory's config file, or refuse (naming each differing key) when the file already
    there was written by another config: a resumed run must never mix two configs' results.

    defaults: a key the file lacks counts as this value (a field added since the file was written)."""
    from jaxicl.errors import JaxiclError

    path = Path(path)
    if path.exists() and not force:
        theirs = (defaults or {}) | json.loads(path.read_text())
        differing = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
        if differing:
            details = "; ".join(f"{k}: run dir has {theirs.get(k)!r}, this command {config.get(k)!r}" for k in differing)
            raise JaxiclError(f"{path} was written by a different config ({details}); use --force to reuse it")
    write_json_atomic(path, config)


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    import jax

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
