"""How many XLA programs a block of code compiles, and how long that takes.

    with compile_stats.counting() as compiled:
        run_the_grid()
    print(compiled.programs, compiled.seconds, compiled.cache_hits)

Read from JAX's own monitoring events, so it counts every jit, pmap and eager op program of the
process while the block runs, from any thread. A program loaded from the persistent compilation
cache counts as a program and as a cache hit; its seconds are the load time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

# JAX's event names (jax/_src/dispatch.py and compiler.py); stable across recent releases.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileStats:
    programs: int = 0  # backend compilations, persistent-cache loads included
    seconds: float = 0.0  # wall time spent in them
    cache_hits: int = 0  # programs the persistent cache supplied

    def as_dict(self) -> dict:
        return {"programs": self.programs, "seconds": round(self.seconds, 3), "cache_hits": self.cache_hits}


@contextlib.contextmanager
def counting() -> Iterator[CompileStats]:
    """Count the compilations while the block runs (the returned stats fill in as they happen)."""
    import jax

    stats = CompileStats()

    def on_duration(event: str, duration: float, **_) -> None:
        if event == BACKEND_COMPILE_EVENT:
            stats.programs += 1
            stats.seconds += duration

    def on_event(event: str, **_) -> None:
        if event == CACHE_HIT_EVENT:
            stats.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield stats
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
