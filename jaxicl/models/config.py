"""One frozen config for every decoder-only family: a family is a set of knobs, not a class.

Params pytree layout (all float arrays; per-block tensors are stacked over layers on axis 0,
linear weights are stored as [in, out] so a projection is `x @ w`):

    embed        [vocab, d_model]          token embedding (also the unembedding when tied)
    pos_embed    [max_positions + position_offset, d_model]
                                           only for position_kind == "learned" (GPT-2, OPT)
    unembed      [d_model, vocab]          only when tie_embeddings is False
    final_norm   {"scale": [d], "bias": [d] (LayerNorm only)}
    blocks:
      attn_norm   {"scale": [L, d], "bias"?}
      q  {"w": [L, d, H*hd], "b"?: [L, H*hd]}     k, v {"w": [L, d, KV*hd], "b"?}
      o  {"w": [L, H*hd, d], "b"?: [L, d]}        o's bias only with attn_bias and attn_out_bias
      q_norm, k_norm {"scale": [L, hd]}           only with qk_norm (Gemma 3, Qwen3)
      post_attn_norm {"scale": [L, d]}            only with post_norms (Gemma 3)
      mlp_norm    {"scale": [L, d], "bias"?}
      gate {"w": [L, d, F]}                       only with gated_mlp
      up   {"w": [L, d, F], "b"?}   down {"w": [L, F, d], "b"?}
      post_mlp_norm {"scale": [L, d]}             only with post_norms

Biases ("b", "bias") are present exactly when the config says the family has them.
RMSNorm scales are stored in the family's own convention (Gemma: the forward uses 1 + scale).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

NormKind = Literal["rms", "layer"]
PositionKind = Literal["rope", "learned", "sinusoidal"]
Activation = Literal["gelu_tanh", "gelu", "silu", "relu"]
# Knobs added after finetuning run keys were first written (jaxicl.engine.finetune.run_key): left out of
# `fingerprint_fields` while at their defaults, so runs of configs that do not use them keep their keys.
LATER_KNOBS = ("rope_local_scaling_factor", "rotary_dim", "parallel_residual", "attn_out_bias")
FAMILIES = ("gemma3", "llama", "gpt2", "xglm", "qwen2", "qwen3", "mistral", "gpt_neox", "opt")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the forward pass needs to know about an architecture; hashable, so jit-static."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_positions: int
    norm_kind: NormKind = "rms"
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: RMSNorm multiplies by (1 + scale)
    position_kind: PositionKind = "rope"
    rope_base: float = 10000.0
    rope_local_base: float = 10000.0  # used by sliding-window layers (Gemma 3; Mistral, Qwen2: rope_base)
    rope_scaling_factor: float = 1.0  # linear scaling of global-layer positions
    rope_local_scaling_factor: float = 1.0  # the same for sliding-window layers (Mistral, Qwen2)
    rotary_dim: int | None = None  # RoPE on the first rotary_dim dims of each head (GPT-NeoX); None: all
    position_offset: int = 0  # position p reads row p + offset (XGLM sinusoidal, OPT learned: 2)
    sliding_window: int | None = None
    layer_is_local: tuple[bool, ...] = ()  # per layer: sliding-window attention
    qk_norm: bool = False
    post_norms: bool = False  # Gemma: norms after attention and after MLP, before residual add
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)), the MLP reads x
    attn_bias: bool = False  # q/k/v/o biases
    attn_out_bias: bool = True  # with attn_bias: whether o has one too (Qwen2: q/k/v only)
    mlp_bias: bool = False
    gated_mlp: bool = True
    activation: Activation = "silu"
    embed_scale: float = 1.0  # Gemma, XGLM: sqrt(d_model)
    query_scale: float | None = None  # None: head_dim ** -0.5
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos: bool = True  # whether prompts of this family start with BOS

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; known: {FAMILIES}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.layer_is_local and len(self.layer_is_local) != self.n_layers:
            raise ValueError(
                f"layer_is_local has {len(self.layer_is_local)} entries for {self.n_layers} layers"
            )
        if any(self.layer_is_local) and not self.sliding_window:
            raise ValueError("local (sliding-window) layers need a sliding_window size")
        if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")

    @property
    def scale(self) -> float:
        """Multiplier on q·k logits."""
        return self.query_scale if self.query_scale is not None else self.head_dim**-0.5

    @property
    def rope_dim(self) -> int:
        """How many leading dims of each head RoPE rotates."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def local_layers(self) -> tuple[bool, ...]:
        return self.layer_is_local or (False,) * self.n_layers

    def fingerprint_fields(self) -> dict:
        """The fields as a dict for run keys; LATER_KNOBS only where they differ from their default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        fields = dataclasses.asdict(self)
        return {k: v for k, v in fields.items() if k not in LATER_KNOBS or v != defaults[k]}

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
