"""Activation patching at one position per row: edits of the forward pass as data, so that a whole
grid of edits (every layer, every head) runs as one vmapped batch instead of a Python loop.

A `Patch` holds at most one residual edit and one head edit, both at each row's probe position:

  * residual: at block `resid_layer`'s input, replace the residual with `resid_vector` (a task
    vector, Hendel et al. 2023) or add it (a function vector, Todd et al. 2024);
  * head: replace query head `head` of block `head_layer` by `head_vector` [hd], just before the
    output projection (the causal indirect effect of that head).

A layer of -1 switches an edit off. Leaves are arrays, so `jax.vmap` over a leading patch axis
runs M edits at once (`stack`). `transforms` turns one patch into the two callables `forward`
takes (`block_input_transform`, `head_transform`).
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.errors import InputError
from jaxicl.models.config import ModelConfig
from jaxicl.models.transformer import BlockInputTransform, HeadTransform

Array = jax.Array
OFF = -1  # the layer of an edit that is switched off


@flax.struct.dataclass
class Patch:
    resid_layer: Array  # int32 [] (or [M] stacked): the block whose input is edited; -1: none
    resid_vector: Array  # [d]
    resid_add: Array  # bool []: add resid_vector (True) or replace the residual by it (False)
    head_layer: Array  # int32 []: the block whose head output is replaced; -1: none
    head: Array  # int32 []: which query head
    head_vector: Array  # [hd]


def _check(config: ModelConfig, layer: int, head: int | None = None) -> None:
    if not 0 <= layer < config.n_layers:
        raise InputError(f"layer {layer} is out of range: the model has layers 0..{config.n_layers - 1}")
    if head is not None and not 0 <= head < config.n_heads:
        raise InputError(f"head {head} is out of range: the model has query heads 0..{config.n_heads - 1}")


def _patch(config: ModelConfig, resid=(OFF, None, False), head=(OFF, 0, None)) -> Patch:
    (r_layer, r_vec, add), (h_layer, h, h_vec) = resid, head
    return Patch(
        resid_layer=jnp.asarray(r_layer, jnp.int32),
        resid_vector=jnp.zeros(config.d_model, jnp.float32) if r_vec is None else jnp.asarray(r_vec, jnp.float32),
        resid_add=jnp.asarray(add, bool),
        head_layer=jnp.asarray(h_layer, jnp.int32),
        head=jnp.asarray(h, jnp.int32),
        head_vector=jnp.zeros(config.head_dim, jnp.float32) if h_vec is None else jnp.asarray(h_vec, jnp.float32),
    )


def residual(config: ModelConfig, layer: int, vector, add: bool = False) -> Patch:
    """Replace (or, with add, shift) the residual entering block `layer` at the probe by `vector` [d]."""
    _check(config, layer)
    if np.shape(vector) != (config.d_model,):
        raise InputError(f"a residual patch needs a vector of shape ({config.d_model},), got {np.shape(vector)}")
    return _patch(config, resid=(layer, vector, add))


def head_output(config: ModelConfig, layer: int, head: int, vector) -> Patch:
    """Replace query head `head` of block `layer` at the probe by `vector` [hd]."""
    _check(config, layer, head)
    if np.shape(vector) != (config.head_dim,):
        raise InputError(f"a head patch needs a vector of shape ({config.head_dim},), got {np.shape(vector)}")
    return _patch(config, head=(layer, head, vector))


def stack(patches: Sequence[Patch]) -> Patch:
    """M patches -> one Patch whose leaves have a leading axis M (what a vmapped forward takes)."""
    if not patches:
        raise InputError("no patches to stack")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *patches)


def count(patches: Patch) -> int:
    """M of a stacked patch."""
    return int(patches.resid_layer.shape[0])


def take(patches: Patch, start: int, stop: int) -> Patch:
    """Patches start..stop-1 of a stacked patch, padded with copies of the last to stop - start."""
    m = count(patches)
    index = np.minimum(np.arange(start, stop), m - 1)
    return jax.tree.map(lambda x: x[index], patches)


def transforms(patch: Patch, probe: Array, length: int) -> tuple[BlockInputTransform, HeadTransform]:
    """The (block_input_transform, head_transform) of one patch for rows [B, length] whose probe
    positions are `probe` [B]. Rows away from the probe, and layers other than the edit's, pass
    through unchanged (jnp.where, so gradients and the KV cache are those of the plain forward)."""
    at_probe = jnp.arange(length)[None, :] == probe[:, None]  # [B, T]

    def block_input(x: Array, layer: Array) -> Array:
        vector = patch.resid_vector.astype(x.dtype)
        new = jnp.where(patch.resid_add, x + vector, jnp.broadcast_to(vector, x.shape))
        return jnp.where(((layer == patch.resid_layer) & at_probe)[..., None], new, x)

    def heads(z: Array, layer: Array) -> Array:  # z [B, T, H, hd]
        which = jnp.arange(z.shape[2]) == patch.head
        hit = (layer == patch.head_layer) & at_probe[:, :, None] & which[None, None, :]
        return jnp.where(hit[..., None], patch.head_vector.astype(z.dtype), z)

    return block_input, heads
