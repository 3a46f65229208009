"""The jitted SGD step on one padded demonstration, and its vmapped and scanned forms.

A step is a pure function of (trainable, optimizer state, frozen, demonstration, lr, active): the
learning rate is traced, so tasks share compilations, and `active=False` computes the step but
keeps the old params, which lets sets of different lengths run together under `jax.vmap`.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxicl.engine import transforms as T
from jaxicl.engine.finetune.objective import objective_loss
from jaxicl.engine.finetune.options import optimizer

Array = jax.Array


@flax.struct.dataclass
class StepStats:
    loss: Array  # scalar, before the update
    layer_losses: Array  # [L'] per-layer readout losses ([1] for the output readout)
    kv_grad_norms: Array  # [L] l2 norm of the stepped (masked: k/v by default) gradient per block
    grad_norms: Array  # [L] l2 norm over all of a block's parameters (NaN if not recorded)


def _layer_norms(grads: dict, n_layers: int) -> Array:
    flat = T.flatten(grads)
    total = jnp.zeros((n_layers,), jnp.float32)
    for path, g in flat.items():
        if path.startswith("blocks/"):
            total = total + jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(n_layers, -1), axis=1)
    return jnp.sqrt(total)


def _step_impl(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask):
    params = T.merge_params(trainable, frozen)
    paths = set(mask.paths)
    if spec.all_grad_norms:
        paths |= {p for p in T.flatten(params) if p.startswith("blocks/")}
    diff, rest = T.split_params(params, paths)
    dtype = jnp.dtype(spec.compute_dtype)

    def loss_fn(diff):
        full = jax.tree.map(lambda x: x.astype(dtype), T.merge_params(diff, rest))
        return objective_loss(full, config, spec.objective, batch)

    (loss, layer_losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(diff)
    stepped = mask.apply(grads)
    masked_norms = _layer_norms(stepped, config.n_layers)
    all_norms = (
        _layer_norms(grads, config.n_layers) if spec.all_grad_norms else jnp.full((config.n_layers,), jnp.nan)
    )
    updates, new_opt_state = optimizer(spec, lr).update(stepped, opt_state, trainable)
    new = mask.where(optax.apply_updates(trainable, updates), trainable)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
    stats = StepStats(loss, layer_losses, masked_norms, all_norms)
    return keep(new, trainable), keep(new_opt_state, opt_state), stats


_STATIC = ("config", "spec", "mask")


@functools.partial(jax.jit, static_argnames=_STATIC)
def train_step(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask):
    """One SGD step on a padded demonstration batch [1, T] -> (trainable, opt_state, StepStats).

    trainable/frozen: `transforms.split_params(params, mask.paths)` (frozen may be in the compute
    dtype already); lr: traced scalar; active=False computes the step but keeps the old params."""
    return _step_impl(trainable, opt_state, frozen, batch, lr, active, config=config, spec=spec, mask=mask)


def _step_many(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask, frozen_per_set):
    step = functools.partial(_step_impl, config=config, spec=spec, mask=mask)
    axes = (0, 0, 0 if frozen_per_set else None, 0, 0, 0)
    return jax.vmap(step, in_axes=axes)(trainable, opt_state, frozen, batch, lr, active)


_MANY_STATIC = (*_STATIC, "frozen_per_set")


@functools.partial(jax.jit, static_argnames=_MANY_STATIC)
def train_step_many(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask, frozen_per_set=False):
    """`train_step` vmapped over a leading set axis of trainable, opt_state, batch, lr and active
    (and of frozen if `frozen_per_set`: sets that start from different params)."""
    return _step_many(
        trainable, opt_state, frozen, batch, lr, active, config=config, spec=spec, mask=mask,
        frozen_per_set=frozen_per_set,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=_MANY_STATIC)
def train_run_many(trainable, opt_state, frozen, batches, lr, active, *, config, spec, mask, frozen_per_set=False):
    """Every step of a run of `train_step_many` as one `lax.scan`: one dispatch for the whole run.

    batches: [n_steps, S, 1, T] (one padded length for every step); active: [n_steps, S].
    Returns (trainable, opt_state, StepStats with leaves [n_steps, S, ...])."""

    def body(carry, xs):
        batch, on = xs
        new_trainable, new_state, stats = _step_many(
            *carry, frozen, batch, lr, on, config=config, spec=spec, mask=mask, frozen_per_set=frozen_per_set
        )
        return (new_trainable, new_state), stats

    (trainable, opt_state), stats = jax.lax.scan(body, (trainable, opt_state), (batches, active))
    return trainable, opt_state, stats
