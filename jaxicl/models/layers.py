"""Pure layer functions over plain arrays. No parameters are created here; they are passed in."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxicl.models.config import ModelConfig

Array = jax.Array


def rms_norm(x: Array, scale: Array, eps: float, plus_one: bool) -> Array:
    """RMSNorm computed in float32 (as every reference does), returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    w = scale.astype(jnp.float32)
    return (y * (1.0 + w if plus_one else w)).astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def norm(x: Array, p: dict, config: ModelConfig) -> Array:
    """The family's normalisation with params {"scale"[, "bias"]}."""
    if config.norm_kind == "layer":
        return layer_norm(x, p["scale"], p["bias"], config.norm_eps)
    return rms_norm(x, p["scale"], config.norm_eps, config.norm_plus_one)


def linear(x: Array, p: dict) -> Array:
    y = x @ p["w"]
    return y + p["b"] if "b" in p else y


def activation(name: str, x: Array) -> Array:
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "silu":
        return jax.nn.silu(x)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


def mlp(x: Array, p: dict, config: ModelConfig) -> Array:
    """Gated (GeGLU/SwiGLU: down(act(gate x) * up x)) or plain (down(act(up x))) MLP."""
    if config.gated_mlp:
        h = activation(config.activation, linear(x, p["gate"])) * linear(x, p["up"])
    else:
        h = activation(config.activation, linear(x, p["up"]))
    return linear(h, p["down"])


def rope_angles(positions: Array, head_dim: int, base: float, scaling: float = 1.0) -> tuple[Array, Array]:
    """cos, sin of shape [..., head_dim] for rotate-half RoPE (the Hugging Face layout)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = (positions.astype(jnp.float32) / scaling)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, T, heads, hd]; cos/sin: [B, T, rot] with rot <= hd.

    Partial rotary (GPT-NeoX): rotate-half acts on the first rot dims only and the rest pass
    through unchanged, as transformers' apply_rotary_pos_emb does.
    """
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def sinusoidal_positions(positions: Array, dim: int) -> Array:
    """fairseq's sinusoidal table (sin half then cos half), evaluated at integer positions."""
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -step)
    angles = positions.astype(jnp.float32)[..., None] * freqs
    table = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        table = jnp.concatenate([table, jnp.zeros(table.shape[:-1] + (1,), table.dtype)], axis=-1)
    return table


def attention(q: Array, k: Array, v: Array, mask: Array, config: ModelConfig) -> tuple[Array, Array]:
    """Grouped-query attention.

    q: [B, T, H, hd]; k, v: [B, S, KV, hd]; mask: [B, T, S] (True = may attend).
    Returns the per-head output [B, T, H, hd] and the scaled pre-softmax, pre-mask logits
    [B, H, T, S] (what the paper records as the attention "map").
    """
    b, t, h, hd = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) * config.scale
    scores = scores.reshape(b, h, t, k.shape[1])
    if config.attn_logit_softcap:
        scores = jnp.tanh(scores / config.attn_logit_softcap) * config.attn_logit_softcap
    masked = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(masked, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.reshape(b, kv, h // kv, t, -1), v)
    return out.reshape(b, t, h, hd), scores
