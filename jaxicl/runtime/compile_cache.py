"""JAX's persistent compilation cache, switched on for every program (small ones included).

    from jaxicl.runtime import compile_cache
    compile_cache.enable("~/.cache/jaxicl/xla")   # before (or after) the first jit call

A second process with the same directory loads compiled executables from disk instead of
recompiling them. The cache is trusted input: do not point it at a directory others can write.
"""

from __future__ import annotations

import os
from pathlib import Path


def enable(path: str | os.PathLike, *, min_compile_time_s: float = 0.0, min_entry_size_bytes: int = -1) -> Path:
    """Cache compiled programs under `path` (created if missing); returns the resolved path.

    JAX by default only caches programs that took at least a second to compile; here every
    program is cached (min_compile_time_s=0) whatever its size (min_entry_size_bytes=-1: no
    limit, and no backend default overrides it). Safe to call after compilations have happened
    or with a new directory: the cache is re-initialised on the next compile.
    """
    import jax

    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    _reset()  # the cache binds its directory once, at first use
    return path


def disable() -> None:
    """Stop reading and writing the persistent cache (in-memory jit caches are unaffected)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", None)
    _reset()


def _reset() -> None:
    try:
        from jax.experimental.compilation_cache.compilation_cache import reset_cache
    except ImportError:  # then only an enable() before the first compilation takes effect
        return
    reset_cache()
