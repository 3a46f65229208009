"""The one forward pass: embeddings → scanned blocks → final norm → unembedding.

Variants are arguments, not copies:
  * `cache`: keys/values of an earlier chunk (a shared prefix), reused without recomputation;
  * `taps`: names of activations to record per layer (TransformerLens names), either at every
    position or only at one probe position per row (`tap_at`), returned as [layers, ...] arrays;
  * `block_input_transform(x, layer)`: applied to every block's residual input, e.g.
    `lambda x, layer: jax.lax.stop_gradient(x)` for layer-causal finetuning;
  * `head_transform(z, layer)`: applied to the query heads' outputs z [B, T, H, hd] just before
    the output projection, e.g. to zero or patch one head (activation patching);
  * `logits_at`: compute the unembedding only where it is needed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from jaxicl.models import layers
from jaxicl.models.config import ModelConfig

Array = jax.Array
BlockInputTransform = Callable[[Array, Array], Array]  # (x [B, T, d], layer) -> x
HeadTransform = Callable[[Array, Array], Array]  # (z [B, T, H, hd], layer) -> z

TAP_NAMES = (
    "resid_pre",  # block input [d], before any block_input_transform
    "q",  # queries after QK-norm and RoPE [H, hd]
    "k",  # keys after QK-norm and RoPE [KV, hd]
    "v",  # values [KV, hd]
    "z",  # each query head's output [H, hd]: the output projection's input (after any head_transform)
    "attn_scores",  # scaled pre-softmax, pre-mask logits [H, S] over every key (cache first)
    "attn_out",  # attention output after the output projection, before any post-norm/residual
    "resid_mid",  # residual stream after the attention residual add (parallel residual: not the MLP's input)
    "mlp_out",  # MLP output before any post-norm/residual
    "resid_post",  # block output
)
EVERY_POSITION = "@all"  # suffix of a tap recorded at every position beside the probe (`taps_all`)


@flax.struct.dataclass
class KVCache:
    """Keys/values of already-processed tokens. k, v: [L, B, S, KV, hd]; positions, valid: [B, S].

    A batch dimension of 1 broadcasts over any query batch (one shared prefix for many queries).
    """

    k: Array
    v: Array
    positions: Array
    valid: Array

    @property
    def length(self) -> int:
        return self.k.shape[2]


@flax.struct.dataclass
class ForwardOutput:
    logits: Array | None  # [B, P, V] at logits_at (or [B, T, V] for every position)
    cache: KVCache  # keys/values of the cache plus this chunk
    taps: dict  # name -> [L, B, ...] (probe position) or [L, B, T, ...] (every position; also name@all)


def _broadcast_batch(x: Array, batch: int) -> Array:
    return jnp.broadcast_to(x, (batch,) + x.shape[1:]) if x.shape[0] != batch else x


def _take_rows(x: Array, index: Array | None) -> Array:
    """x: [B, T, ...] -> [B, ...] at per-row position index [B]; all positions if index is None."""
    if index is None:
        return x
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def default_positions(batch: int, length: int, cache: KVCache | None) -> Array:
    """Positions continue after the last valid cached position (0-based without a cache)."""
    start = jnp.zeros((batch,), jnp.int32)
    if cache is not None:
        last = jnp.max(jnp.where(cache.valid, cache.positions, -1), axis=1)
        start = _broadcast_batch(last + 1, batch)
    return start[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]


def embed(params: dict, config: ModelConfig, ids: Array, positions: Array) -> Array:
    x = params["embed"][ids] * jnp.asarray(config.embed_scale, params["embed"].dtype)
    if config.position_kind == "learned":
        x = x + params["pos_embed"][positions + config.position_offset]
    elif config.position_kind == "sinusoidal":
        x = x + layers.sinusoidal_positions(positions + config.position_offset, config.d_model).astype(x.dtype)
    return x


def unembed(params: dict, config: ModelConfig, x: Array) -> Array:
    """Final norm + unembedding (the readout U of the paper), with the family's soft-cap."""
    h = layers.norm(x, params["final_norm"], config)
    if config.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", h, params["embed"])
    else:
        logits = h @ params["unembed"]
    logits = logits.astype(jnp.float32)
    if config.final_logit_softcap:
        logits = jnp.tanh(logits / config.final_logit_softcap) * config.final_logit_softcap
    return logits


def _block(
    config: ModelConfig,
    p: dict,
    x: Array,
    *,
    cos_sin: tuple[Array, Array] | None,
    mask: Array,
    cache_kv: tuple[Array, Array] | None,
    taps: Sequence[str],
    tap_at: Array | None,
    taps_all: Sequence[str] = (),
    head_transform: Callable[[Array], Array] | None = None,
) -> tuple[Array, tuple[Array, Array], dict]:
    """One transformer block; returns the new residual, this chunk's (k, v) and the records."""
    b, t, _ = x.shape
    rec = {}
    h = layers.norm(x, p["attn_norm"], config)
    q = layers.linear(h, p["q"]).reshape(b, t, config.n_heads, config.head_dim)
    k = layers.linear(h, p["k"]).reshape(b, t, config.n_kv_heads, config.head_dim)
    v = layers.linear(h, p["v"]).reshape(b, t, config.n_kv_heads, config.head_dim)
    if config.qk_norm:
        q = layers.rms_norm(q, p["q_norm"]["scale"], config.norm_eps, config.norm_plus_one)
        k = layers.rms_norm(k, p["k_norm"]["scale"], config.norm_eps, config.norm_plus_one)
    if cos_sin is not None:
        q = layers.apply_rope(q, *cos_sin)
        k = layers.apply_rope(k, *cos_sin)
    k_all, v_all = k, v
    if cache_kv is not None:
        k_all = jnp.concatenate([_broadcast_batch(cache_kv[0], b), k], axis=1)
        v_all = jnp.concatenate([_broadcast_batch(cache_kv[1], b), v], axis=1)
    z, scores = layers.attention(q, k_all, v_all, mask, config)
    if head_transform is not None:
        z = head_transform(z)
    attn_out = layers.linear(z.reshape(b, t, -1), p["o"])
    rec.update(q=q, k=k, v=v, z=z, attn_out=attn_out)
    if "attn_scores" in taps or "attn_scores" in taps_all:
        rec["attn_scores"] = jnp.moveaxis(scores, 1, 2)  # [B, T, H, S]
    if config.post_norms:
        attn_out = layers.norm(attn_out, p["post_attn_norm"], config)
    mid = x + attn_out
    rec["resid_mid"] = mid
    mlp_in = x if config.parallel_residual else mid  # parallel: the MLP reads the block input too
    mlp_out = layers.mlp(layers.norm(mlp_in, p["mlp_norm"], config), p, config)
    rec["mlp_out"] = mlp_out
    if config.post_norms:
        mlp_out = layers.norm(mlp_out, p["post_mlp_norm"], config)
    x = mid + mlp_out
    rec["resid_post"] = x
    out = {name: _take_rows(rec[name], tap_at) for name in taps if name != "resid_pre"}
    out |= {name + EVERY_POSITION: rec[name] for name in taps_all if name != "resid_pre"}
    return x, (k, v), out


def forward(
    params: dict,
    config: ModelConfig,
    ids: Array,
    *,
    positions: Array | None = None,
    valid: Array | None = None,
    cache: KVCache | None = None,
    logits_at: Array | str | None = "all",
    taps: Sequence[str] = (),
    tap_at: Array | None = None,
    taps_all: Sequence[str] = (),
    block_input_transform: BlockInputTransform | None = None,
    head_transform: HeadTransform | None = None,
) -> ForwardOutput:
    """Run the model on token ids [B, T].

    positions: [B, T] absolute positions (default: continue after the cache).
    valid: [B, T] False on padding (padding keys are never attended to).
    logits_at: "all" for every position, None for no logits, or int [B, P] positions per row.
    taps: names from TAP_NAMES; tap_at: int [B] probe position per row, or None for all positions.
    taps_all: names also recorded at every position of the chunk, under name + EVERY_POSITION, in
    the same pass as the probe's (e.g. token-wise similarity beside the probe's records).
    block_input_transform(x, layer), head_transform(z, layer): see the module docstring; `layer`
    is a traced int32 scalar (the blocks run under one lax.scan), so select with jnp.where.
    """
    unknown = (set(taps) | set(taps_all)) - set(TAP_NAMES)
    if unknown:
        raise ValueError(f"unknown taps {sorted(unknown)}; known: {TAP_NAMES}")
    b, t = ids.shape
    if positions is None:
        positions = default_positions(b, t, cache)
    if valid is None:
        valid = jnp.ones((b, t), bool)
    key_pos, key_valid = _keys(positions, valid, cache)
    causal, local_mask = _attention_masks(config, positions, key_pos, key_valid)
    rope = _rope_tables(config, positions)
    x = embed(params, config, ids, positions)
    is_local = jnp.asarray(config.local_layers)
    layer_index = jnp.arange(config.n_layers, dtype=jnp.int32)
    cache_kv = (cache.k, cache.v) if cache is not None else None

    def step(x, xs):
        p, local, layer, kv = xs
        rec = {}
        if "resid_pre" in taps:
            rec["resid_pre"] = _take_rows(x, tap_at)
        if "resid_pre" in taps_all:
            rec["resid_pre" + EVERY_POSITION] = x
        if block_input_transform is not None:
            x = block_input_transform(x, layer)
        cos_sin = None
        if rope is not None:
            (gc, gs), (lc, ls) = rope
            cos_sin = (jnp.where(local, lc, gc), jnp.where(local, ls, gs))
        mask = jnp.where(local, local_mask, causal)
        heads = None if head_transform is None else (lambda z: head_transform(z, layer))
        out, new_kv, block_rec = _block(
            config, p, x, cos_sin=cos_sin, mask=mask, cache_kv=kv, taps=taps, tap_at=tap_at, taps_all=taps_all,
            head_transform=heads,
        )
        rec.update(block_rec)
        return out.astype(x.dtype), (new_kv, rec)  # mixed-precision params keep the carry's dtype

    x, ((k_new, v_new), recs) = jax.lax.scan(step, x, (params["blocks"], is_local, layer_index, cache_kv))

    new_cache = _extended_cache(cache, k_new, v_new, key_pos, key_valid)
    return ForwardOutput(logits=_logits(params, config, x, logits_at), cache=new_cache, taps=recs)


def _keys(positions: Array, valid: Array, cache: KVCache | None) -> tuple[Array, Array]:
    """(positions, valid) of every key a chunk attends to: the cache's, then its own [B, S]."""
    if cache is None:
        return positions, valid
    b = positions.shape[0]
    key_pos = jnp.concatenate([_broadcast_batch(cache.positions, b), positions], axis=1)
    key_valid = jnp.concatenate([_broadcast_batch(cache.valid, b), valid], axis=1)
    return key_pos, key_valid


def _attention_masks(config: ModelConfig, positions: Array, key_pos: Array, key_valid: Array) -> tuple[Array, Array]:
    """(causal, local) masks [B, T, S]: local adds the sliding window of local-attention layers."""
    causal = key_valid[:, None, :] & (key_pos[:, None, :] <= positions[:, :, None])
    local_mask = causal
    if config.sliding_window:
        local_mask = causal & (positions[:, :, None] - key_pos[:, None, :] < config.sliding_window)
    return causal, local_mask


def _rope_tables(config: ModelConfig, positions: Array):
    """((cos, sin) of global layers, (cos, sin) of local layers), or None without rotary positions."""
    if config.position_kind != "rope":
        return None
    dim = config.rope_dim
    global_cs = layers.rope_angles(positions, dim, config.rope_base, config.rope_scaling_factor)
    local_cs = layers.rope_angles(positions, dim, config.rope_local_base, config.rope_local_scaling_factor)
    return global_cs, local_cs


def _extended_cache(cache: KVCache | None, k_new: Array, v_new: Array, key_pos: Array, key_valid: Array) -> KVCache:
    """The cache after this chunk: the old keys/values (broadcast over the batch) then the new."""
    if cache is None:
        return KVCache(k=k_new, v=v_new, positions=key_pos, valid=key_valid)
    b = k_new.shape[1]
    return KVCache(
        k=jnp.concatenate([jnp.broadcast_to(cache.k, cache.k.shape[:1] + (b,) + cache.k.shape[2:]), k_new], axis=2),
        v=jnp.concatenate([jnp.broadcast_to(cache.v, cache.v.shape[:1] + (b,) + cache.v.shape[2:]), v_new], axis=2),
        positions=key_pos,
        valid=key_valid,
    )


def _logits(params: dict, config: ModelConfig, x: Array, logits_at: Array | str | None) -> Array | None:
    """Logits at every position ("all"), at [B, P] positions, or none."""
    if isinstance(logits_at, str):
        if logits_at != "all":
            raise ValueError(f"logits_at must be 'all', None or an index array, got {logits_at!r}")
        return unembed(params, config, x)
    if logits_at is not None:
        return unembed(params, config, jnp.take_along_axis(x, logits_at[..., None], axis=1))
    return None
