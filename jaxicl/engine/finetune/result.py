"""A finetuning run's result, and the one host copy of its per-step statistics.

The steps of a run are dispatched without waiting on each other; `fetch_stats` is the run's only
device-to-host copy of statistics, after which divergence is found from the recorded losses and
gradient norms.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.engine.finetune.step import StepStats


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    params: dict  # the full finetuned params
    losses: np.ndarray  # [n_steps] loss at each step, before its update
    layer_losses: np.ndarray  # [n_steps, L'] per-layer readout losses ([n_steps, 1] for GD)
    kv_grad_norms: np.ndarray  # [n_steps, L] norm of the stepped (masked: k/v by default) gradient
    grad_norms: np.ndarray  # [n_steps, L] norm over all params of each block (NaN if off)
    seconds: float
    diverged: str | None = None  # finetune_many(on_divergence="mark"): why; params are then non-finite

    def records(self) -> dict[str, np.ndarray]:
        return {
            "losses": self.losses,
            "layer_losses": self.layer_losses,
            "kv_grad_norms": self.kv_grad_norms,
            "grad_norms": self.grad_norms,
        }


def fetch_stats(steps: Sequence[StepStats] | StepStats) -> dict[str, np.ndarray]:
    """Every step's stats (a list of steps, stacked here on the device, or already stacked by a
    scan), copied to the host in one transfer.

    The steps before it were dispatched without waiting on each other (no per-step host sync);
    this is the run's only device-to-host copy of stats, and its only explicitly allowed one."""
    stacked = steps if isinstance(steps, StepStats) else stack_trees(list(steps))
    fields = {f.name: getattr(stacked, f.name) for f in dataclasses.fields(stacked)}  # asdict would deep-copy
    with jax.transfer_guard_device_to_host("allow"):
        fetched = jax.device_get(fields)
    return {k: np.asarray(v, np.float32) for k, v in fetched.items()}


@jax.jit
def stack_trees(trees: list):
    """Trees of one structure stacked leaf by leaf along a new leading axis (steps, sets, models):
    one program, not one eager op per leaf."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def first_divergence(stats: dict[str, np.ndarray]) -> tuple[int, str] | None:
    """(step, why) of the first step with a non-finite loss or stepped gradient, found after the run
    from its stats [n_steps, ...] (every later step computed on non-finite params and is ignored)."""
    bad_loss = ~np.isfinite(stats["loss"])
    bad_grad = ~np.isfinite(stats["kv_grad_norms"].reshape(len(bad_loss), -1)).all(axis=1)
    bad = np.flatnonzero(bad_loss | bad_grad)
    if not bad.size:
        return None
    step = int(bad[0])
    return step, (f"loss {stats['loss'][step]}" if bad_loss[step] else "non-finite gradient")


def make_result(params: dict, stats: dict[str, np.ndarray], seconds: float, diverged: str | None = None) -> FinetuneResult:
    return FinetuneResult(
        params=params,
        losses=stats["loss"],
        layer_losses=stats["layer_losses"],
        kv_grad_norms=stats["kv_grad_norms"],
        grad_norms=stats["grad_norms"],
        seconds=seconds,
        diverged=diverged,
    )
