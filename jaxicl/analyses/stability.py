"""How far float rounding alone moves a cell's metrics.

The stability check finetunes a cell a second time with the demonstrations padded to another
length multiple. Padding changes the shapes XLA compiles, and with them the order of its float
sums, but not the maths: padded positions are masked out of attention and carry no loss. SGD at a
large learning rate can amplify that rounding, so a metric that moves between the two runs by
more than a reader would notice is marked in the report.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.engine.finetune import FinetuneOptions
from jaxicl.engine.metrics import TABLE_METRICS

STABILITY = "stability"
PERTURBED_MULTIPLE = 13  # prime: its padded lengths differ from those of 16 (or 8, 32) up to 195 tokens
UNSTABLE = 0.01  # a scalar metric that moves more than this marks its cell unstable in the report


def perturbed(options: FinetuneOptions) -> FinetuneOptions:
    """The same finetuning with the demonstrations padded to a multiple of 13 instead."""
    if options.length_multiple == PERTURBED_MULTIPLE:
        raise ValueError(f"the stability check pads to multiples of {PERTURBED_MULTIPLE}: pick another length_multiple")
    return dataclasses.replace(options, length_multiple=PERTURBED_MULTIPLE)


def run_difference(first, second) -> dict:
    """How far the second finetuning itself moved: the largest |Δ| of its per-step losses and of
    its params. A loss that differs shows the rounding took effect; params that do not (0.0) show
    it stayed below float32's resolution of the weights (a small learning rate)."""
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params))
             if a is not b]  # fmt: skip
    return {"losses": float(np.max(np.abs(np.asarray(first.losses) - np.asarray(second.losses)))),
            "params": max(moved, default=0.0)}


def difference(values: dict, again: dict, accuracy: float, accuracy_again: float, options: FinetuneOptions,
               runs: dict | None = None) -> dict:
    """The cell's "stability" record: the largest absolute difference of each Tables 1-2 metric
    between the two finetunings, on its scalar and over its layers, of the finetuned accuracy, and
    (`runs`, from `run_difference`) of the finetunings' losses and params."""
    scalar = {m: abs(float(values["scalar"][m]) - float(again["scalar"][m])) for m in TABLE_METRICS}
    per_layer = {
        m: float(np.max(np.abs(np.asarray(values["per_layer"][m]) - np.asarray(again["per_layer"][m]))))
        for m in TABLE_METRICS
    }
    return {
        "length_multiples": [options.length_multiple, PERTURBED_MULTIPLE],
        "scalar": scalar,
        "per_layer": per_layer,
        "ft_accuracy": abs(accuracy - accuracy_again),
        "max_scalar": max(scalar.values()),
        **({} if runs is None else {"finetuning": runs}),
    }


def is_unstable(record: dict | None, threshold: float = UNSTABLE) -> bool:
    """Whether a cell's stability record shows a scalar metric moving by more than `threshold`."""
    return record is not None and record["max_scalar"] > threshold
