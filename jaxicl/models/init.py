"""The params layout of a config, as shapes and as a seeded random initialisation.

`param_shapes` is the single source of truth loaders check tensors against; `init_params` gives
the random weights of untrained baselines and of shape-only benchmarks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.models.config import ModelConfig


def _norm_shapes(config: ModelConfig, dim: int, stacked: bool) -> dict:
    lead = (config.n_layers,) if stacked else ()
    shapes = {"scale": lead + (dim,)}
    if config.norm_kind == "layer":
        shapes["bias"] = lead + (dim,)
    return shapes


def _linear_shapes(config: ModelConfig, d_in: int, d_out: int, bias: bool) -> dict:
    shapes = {"w": (config.n_layers, d_in, d_out)}
    if bias:
        shapes["b"] = (config.n_layers, d_out)
    return shapes


def param_shapes(config: ModelConfig) -> dict:
    """Nested dict of shape tuples, mirroring the params pytree exactly."""
    d, hd, L = config.d_model, config.head_dim, config.n_layers
    q_dim, kv_dim = config.n_heads * hd, config.n_kv_heads * hd
    blocks = {
        "attn_norm": _norm_shapes(config, d, True),
        "q": _linear_shapes(config, d, q_dim, config.attn_bias),
        "k": _linear_shapes(config, d, kv_dim, config.attn_bias),
        "v": _linear_shapes(config, d, kv_dim, config.attn_bias),
        "o": _linear_shapes(config, q_dim, d, config.attn_bias and config.attn_out_bias),
        "mlp_norm": _norm_shapes(config, d, True),
        "up": _linear_shapes(config, d, config.d_ff, config.mlp_bias),
        "down": _linear_shapes(config, config.d_ff, d, config.mlp_bias),
    }
    if config.gated_mlp:
        blocks["gate"] = _linear_shapes(config, d, config.d_ff, config.mlp_bias)
    if config.qk_norm:
        blocks["q_norm"] = {"scale": (L, hd)}
        blocks["k_norm"] = {"scale": (L, hd)}
    if config.post_norms:
        blocks["post_attn_norm"] = _norm_shapes(config, d, True)
        blocks["post_mlp_norm"] = _norm_shapes(config, d, True)
    shapes = {
        "embed": (config.vocab_size, d),
        "final_norm": _norm_shapes(config, d, False),
        "blocks": blocks,
    }
    if config.position_kind == "learned":
        shapes["pos_embed"] = (config.max_positions + config.position_offset, d)
    if not config.tie_embeddings:
        shapes["unembed"] = (d, config.vocab_size)
    return shapes


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def init_params(config: ModelConfig, key: jax.Array, dtype=jnp.float32) -> dict:
    """Seeded random params: normal(0, 0.02) matrices, zero biases, identity norms.

    "Identity" means the norm multiplies by 1: scale 0 under Gemma's (1 + scale) convention.
    """
    shapes = param_shapes(config)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, shape), k in zip(leaves, keys):
        names = [p.key for p in path]
        if names[-1] == "scale":
            out.append(jnp.full(shape, 0.0 if config.norm_plus_one else 1.0, dtype))
        elif names[-1] in ("b", "bias"):
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((0.02 * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def check_param_shapes(config: ModelConfig, params: dict, source: str) -> None:
    """Raise CheckpointError naming the first tensor whose presence or shape is wrong."""
    from jaxicl.errors import CheckpointError

    expected = dict(
        ("/".join(p.key for p in path), shape)
        for path, shape in jax.tree_util.tree_flatten_with_path(param_shapes(config), is_leaf=_is_shape)[0]
    )
    got = {
        "/".join(p.key for p in path): tuple(np.shape(x))
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    for name, shape in expected.items():
        if name not in got:
            raise CheckpointError(f"{source}: missing tensor for {name} (expected shape {shape})")
        if got[name] != shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {got[name]}, expected {shape}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensors {extra}")
