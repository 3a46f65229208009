"""What a finetuning loss reads and where its gradients may flow: GD, LCGD and their variants.

GD reads the model's own output. LCGD puts `stop_gradient` on every block's input and sums the
losses of each layer's readout U (final norm + unembedding) of the block output, as the authors'
code does; `readout="attn"` reads the attention output instead, as the paper's formula does.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from jaxicl.engine import transforms as T
from jaxicl.models.config import ModelConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the loss reads and where gradients may flow.

    readout: "output" (the model's own logits: vanilla GD) or a per-layer readout U of each
      block output ("block", the authors' LCGD) or each attention output ("attn", the paper's).
    causal: stop_gradient on the input of every block (True) or of the listed blocks.
    readout_layers: per-layer losses of these layers only (None: all).
    layer_reduction: how per-layer losses combine ("sum": the authors' code; "mean").
    """

    readout: Literal["output", "block", "attn"] = "output"
    causal: bool | tuple[int, ...] = False
    readout_layers: tuple[int, ...] | None = None
    layer_reduction: Literal["sum", "mean"] = "sum"

    def __post_init__(self):
        for name in ("causal", "readout_layers"):  # any iterable of layers -> a hashable tuple
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                object.__setattr__(self, name, tuple(int(i) for i in value))
        if self.readout not in ("output", *T.READOUT_TAPS):
            raise ValueError(f"readout must be 'output', 'block' or 'attn', got {self.readout!r}")
        if self.layer_reduction not in ("sum", "mean"):
            raise ValueError(f"layer_reduction must be 'sum' or 'mean', got {self.layer_reduction!r}")
        if self.readout_layers is not None and self.readout == "output":
            raise ValueError("readout_layers needs a per-layer readout ('block' or 'attn')")

    def block_input_transform(self):
        if self.causal is False:
            return None
        return T.stop_gradient_inputs(None if self.causal is True else self.causal)


GD = Objective()
LCGD = Objective(readout="block", causal=True)
METHODS = {"gd": GD, "lcgd": LCGD}


@flax.struct.dataclass
class DemoBatch:
    """Padded demonstrations [B, T]: ids, valid (False on padding), next-token targets and loss
    weights (1 on the tokens whose prediction counts)."""

    ids: Array
    valid: Array
    targets: Array
    weights: Array


def objective_loss(params: dict, config: ModelConfig, objective: Objective, batch: DemoBatch) -> tuple[Array, Array]:
    """(loss, per-layer losses [L'] — or [1] for the output readout) of a batch of demonstrations.
    The output readout is U applied to the last block's output, i.e. the model's own logits."""
    transform = objective.block_input_transform()
    readout = "block" if objective.readout == "output" else objective.readout
    states = T.block_states(
        params, config, batch.ids, readout=readout, valid=batch.valid, block_input_transform=transform
    )
    if objective.readout == "output":
        states = states[-1:]
    elif objective.readout_layers is not None:
        states = states[jnp.asarray(objective.readout_layers)]
    per_layer = T.readout_losses(params, config, states, batch.targets, batch.weights)
    loss = per_layer.sum() if objective.layer_reduction == "sum" else per_layer.mean()
    return loss, per_layer
