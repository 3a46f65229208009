"""Where a stage's time goes: device (waiting on compiled programs), compilation, or host.

jaxicl dispatches its compiled programs asynchronously and blocks only where it needs their results
(a query batch's scores and records, a finetuning run's stacked stats and params). Those points are
wrapped in `waiting()`; the time inside is device time (the programs running and the copies back),
minus the compilations they triggered (counted from JAX's own events). Everything else of a stage
is host time: prompt building, padding, Python, metrics, file writes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from jaxicl.runtime.compile_stats import BACKEND_COMPILE_EVENT

_lock = threading.Lock()
_totals = {"waiting": 0.0, "compile": 0.0, "programs": 0}
_listening = False


def _on_duration(event: str, duration: float, **_) -> None:
    if event == BACKEND_COMPILE_EVENT:
        with _lock:
            _totals["compile"] += duration
            _totals["programs"] += 1


def _listen() -> None:
    global _listening
    if not _listening:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Mark the host as blocked on the device (dispatch + results) for the block's duration."""
    _listen()
    start = time.perf_counter()
    try:
        yield
    finally:
        with _lock:
            _totals["waiting"] += time.perf_counter() - start


def totals() -> dict[str, float]:
    """Process-wide seconds spent waiting on the device and compiling, and programs compiled, so far."""
    _listen()
    with _lock:
        return dict(_totals)


class StageClock:
    """Seconds per named stage: `seconds` (wall) and `split` ({wall, device, compile, host, programs}:
    programs is the number of XLA programs the stage compiled, eager ops included).

        clock = StageClock()
        with clock("icl"):
            ...
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.split: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        before, start = totals(), time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - start
            after = totals()
            waited = after["waiting"] - before["waiting"]
            compiled = min(after["compile"] - before["compile"], waited)  # compiles outside a wait: host
            programs = after["programs"] - before["programs"]
            self.add(stage, {"wall": wall, "device": waited - compiled, "compile": compiled, "host": wall - waited,
                             "programs": programs})

    def add(self, stage: str, split: dict[str, float]) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + split["wall"]
        mine = self.split.setdefault(stage, {})
        for key, value in split.items():
            mine[key] = mine.get(key, 0) + value

    def merge(self, other: "StageClock") -> None:
        for stage, split in other.split.items():
            self.add(stage, split)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {stage: {k: round(v, 3) for k, v in split.items()} for stage, split in self.split.items()}
