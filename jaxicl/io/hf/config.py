"""Settings -> ModelConfig: one converter per family, refusing what the forward pass cannot do.

Settings a converter does not understand are refused with CheckpointError naming the setting and
the file, never guessed. Both RoPE formats are read: the older `rope_theta` / `rope_scaling` /
`rope_local_base_freq` keys and transformers 5's `rope_parameters`.
"""

from __future__ import annotations

import math
from typing import Callable

from jaxicl.errors import CheckpointError
from jaxicl.io.hf.layout import CONFIG_FILE
from jaxicl.io.hf.settings import Settings, family_settings
from jaxicl.models.config import ModelConfig

# Hugging Face's own activation names -> ours.
ACTIVATIONS = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}

XGLM_POSITION_OFFSET = 2  # fairseq: positions start at padding_idx + 1 with padding_idx = 1
XGLM_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; XGLM does not configure it
OPT_POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding: position p reads row p + 2
OPT_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; OPT does not configure it


def _first(token_id):
    """HF allows a list of eos ids; ours is the first."""
    return token_id[0] if isinstance(token_id, list) and token_id else token_id


def _activation(s: Settings, key: str) -> str:
    name = s[key]
    if name not in ACTIVATIONS:
        s.refuse(key, f"unknown activation; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _rope_factor(s: Settings, key: str, rope: dict, partial_ok: bool = False) -> float:
    """Position divisor of one RoPE parameter dict; only plain and linear RoPE are implemented.

    A partial_rotary_factor is refused unless the family's reference applies it (`partial_ok`).
    """
    kind = rope.get("rope_type", rope.get("type", "default"))
    if not partial_ok and rope.get("partial_rotary_factor", 1.0) != 1.0:
        s.refuse(key, "partial rotary embeddings are not implemented for this family")
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(rope["factor"])
    s.refuse(key, f"RoPE scaling type {kind!r} is not implemented (only 'default' and 'linear')")


def _gemma3_rope(s: Settings) -> tuple[float, float, float]:
    """(global base, local base, global linear factor) from either RoPE config format."""
    if s["rope_parameters"]:  # transformers 5: one dict per layer type
        key = "rope_parameters"
        full = s["rope_parameters"].get("full_attention") or {}
        local = s["rope_parameters"].get("sliding_attention") or {}
    else:  # older configs: rope_scaling applies to the global layers only
        key, full, local = "rope_scaling", s["rope_scaling"] or {}, {}
    if _rope_factor(s, key, local) != 1.0:
        s.refuse(key, "scaled RoPE on sliding-window layers is not implemented")
    base = float(full.get("rope_theta", s["rope_theta"]))
    local_base = float(local.get("rope_theta", s["rope_local_base_freq"]))
    return base, local_base, _rope_factor(s, key, full)


def _gemma3_local_layers(s: Settings) -> tuple[bool, ...]:
    """Per-layer sliding-window flags from layer_types, else from the sliding-window pattern."""
    n = s["num_hidden_layers"]
    types = s["layer_types"]
    if types is None:
        pattern = s.get("sliding_window_pattern", s.get("_sliding_window_pattern", 6))
        return tuple(bool((i + 1) % pattern) for i in range(n))
    return _layer_type_flags(s, types)


def _layer_type_flags(s: Settings, types: list) -> tuple[bool, ...]:
    """layer_types as per-layer sliding-window flags; any other layer type is refused."""
    n = s["num_hidden_layers"]
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown:
        s.refuse("layer_types", f"unknown layer types {sorted(unknown)}")
    if len(types) != n:
        s.refuse("layer_types", f"{len(types)} entries for num_hidden_layers={n}")
    return tuple(t == "sliding_attention" for t in types)


def _gemma3_config(s: Settings) -> ModelConfig:
    if s["use_bidirectional_attention"]:
        s.refuse("use_bidirectional_attention", "only causal attention is implemented")
    if s["attn_logit_softcapping"] is not None:
        # transformers' Gemma 3 attention never applies it (Gemma 2's does): applying it would
        # disagree with the reference, ignoring it would be a guess.
        s.refuse("attn_logit_softcapping", "Gemma 3 reference implementations do not apply it")
    base, local_base, factor = _gemma3_rope(s)
    d = s["hidden_size"]
    return ModelConfig(
        family="gemma3", vocab_size=s["vocab_size"], d_model=d, n_layers=s["num_hidden_layers"],
        n_heads=s["num_attention_heads"], n_kv_heads=s["num_key_value_heads"], head_dim=s["head_dim"],
        d_ff=s["intermediate_size"], max_positions=s["max_position_embeddings"],
        norm_kind="rms", norm_eps=s["rms_norm_eps"], norm_plus_one=True,
        position_kind="rope", rope_base=base, rope_local_base=local_base, rope_scaling_factor=factor,
        sliding_window=s["sliding_window"], layer_is_local=_gemma3_local_layers(s),
        qk_norm=True, post_norms=True, attn_bias=s["attention_bias"], mlp_bias=False,
        gated_mlp=True, activation=_activation(s, "hidden_activation"),
        embed_scale=d**0.5, query_scale=s["query_pre_attn_scalar"] ** -0.5,
        final_logit_softcap=s["final_logit_softcapping"],
        tie_embeddings=s["tie_word_embeddings"], bos_token_id=s["bos_token_id"],
        eos_token_id=_first(s["eos_token_id"]), pad_token_id=s["pad_token_id"], add_bos=True,
    )


def _rope_settings(s: Settings) -> tuple[str, dict]:
    """(key, dict) of the RoPE settings: transformers 5's rope_parameters, else the older rope_scaling."""
    key = "rope_parameters" if s["rope_parameters"] else "rope_scaling"
    return key, s[key] or {}


def _llama_like(s: Settings, family: str, **knobs) -> ModelConfig:
    """Llama's config and the families that differ from it only in knobs (Qwen2, Qwen3, Mistral)."""
    key, rope = _rope_settings(s)
    base, factor = float(rope.get("rope_theta", s["rope_theta"])), _rope_factor(s, key, rope)
    if any(knobs.get("layer_is_local", ())):  # sliding-window layers rotate like every other layer
        knobs |= dict(rope_local_base=base, rope_local_scaling_factor=factor)
    d, heads = s["hidden_size"], s["num_attention_heads"]
    return ModelConfig(
        family=family, vocab_size=s["vocab_size"], d_model=d, n_layers=s["num_hidden_layers"],
        n_heads=heads, n_kv_heads=s["num_key_value_heads"] or heads, head_dim=s["head_dim"] or d // heads,
        d_ff=s["intermediate_size"], max_positions=s["max_position_embeddings"],
        norm_kind="rms", norm_eps=s["rms_norm_eps"], position_kind="rope", rope_base=base,
        rope_scaling_factor=factor, gated_mlp=True, activation=_activation(s, "hidden_act"),
        tie_embeddings=s["tie_word_embeddings"], bos_token_id=s["bos_token_id"],
        eos_token_id=_first(s["eos_token_id"]), pad_token_id=s["pad_token_id"], add_bos=True, **knobs,
    )


def _llama_config(s: Settings) -> ModelConfig:
    return _llama_like(s, "llama", attn_bias=s["attention_bias"], mlp_bias=s["mlp_bias"])


def _qwen_sliding(s: Settings) -> dict:
    """Qwen2/Qwen3 sliding windows as transformers 5 derives them: none unless use_sliding_window;
    then on the layers layer_types marks, else on the layers from max_window_layers on."""
    window = s["sliding_window"] if s["use_sliding_window"] else None
    if window is None:
        return {}
    n = s["num_hidden_layers"]
    types = s["layer_types"] or [
        "sliding_attention" if i >= s["max_window_layers"] else "full_attention" for i in range(n)
    ]
    return dict(sliding_window=window, layer_is_local=_layer_type_flags(s, types))


def _qwen2_config(s: Settings) -> ModelConfig:
    """Qwen2 / Qwen2.5: Llama with q/k/v biases (o has none)."""
    return _llama_like(s, "qwen2", attn_bias=True, attn_out_bias=False, **_qwen_sliding(s))


def _qwen3_config(s: Settings) -> ModelConfig:
    """Qwen3: Llama with RMS QK-norms over head_dim before RoPE; head_dim is its own setting."""
    return _llama_like(s, "qwen3", qk_norm=True, attn_bias=s["attention_bias"], **_qwen_sliding(s))


def _mistral_config(s: Settings) -> ModelConfig:
    """Mistral: Llama with the same sliding window on every layer (sliding_window=None: full)."""
    window = s["sliding_window"]
    local = dict(sliding_window=window, layer_is_local=(True,) * s["num_hidden_layers"]) if window else {}
    return _llama_like(s, "mistral", **local)


def _gpt_neox_rotary_dim(s: Settings, key: str, rope: dict, head_dim: int) -> int | None:
    """RoPE dims per head: int(head_dim * rotary fraction), as transformers computes them; None: all."""
    source = key if "partial_rotary_factor" in rope else "rotary_pct"
    dims = int(head_dim * float(rope.get("partial_rotary_factor", s["rotary_pct"])))
    if dims == head_dim:
        return None
    if dims <= 0 or dims % 2:
        raise CheckpointError(
            f"{s.source}: unsupported setting {source}: it gives {dims} rotary dims of head_dim={head_dim};"
            " rotate-half needs an even, positive number"
        )
    return dims


def _gpt_neox_config(s: Settings) -> ModelConfig:
    """GPT-NeoX / Pythia: LayerNorm, biased fused QKV, partial RoPE, (by default) parallel residual."""
    key, rope = _rope_settings(s)
    d, heads = s["hidden_size"], s["num_attention_heads"]
    head_dim = _heads_divide(s, "hidden_size", "num_attention_heads")
    return ModelConfig(
        family="gpt_neox", vocab_size=s["vocab_size"], d_model=d, n_layers=s["num_hidden_layers"],
        n_heads=heads, n_kv_heads=heads, head_dim=head_dim, d_ff=s["intermediate_size"],
        max_positions=s["max_position_embeddings"], norm_kind="layer", norm_eps=s["layer_norm_eps"],
        position_kind="rope", rope_base=float(rope.get("rope_theta", s["rotary_emb_base"])),
        rope_scaling_factor=_rope_factor(s, key, rope, partial_ok=True),
        rotary_dim=_gpt_neox_rotary_dim(s, key, rope, head_dim), parallel_residual=s["use_parallel_residual"],
        attn_bias=s["attention_bias"], mlp_bias=True, gated_mlp=False, activation=_activation(s, "hidden_act"),
        tie_embeddings=s["tie_word_embeddings"], bos_token_id=s["bos_token_id"],
        eos_token_id=_first(s["eos_token_id"]), pad_token_id=s["pad_token_id"], add_bos=False,
    )


def _opt_refusals(s: Settings) -> None:
    """OPT variants whose computation differs from the pre-LN block (OPT-350m, old finetunes)."""
    if not s["do_layer_norm_before"]:
        s.refuse("do_layer_norm_before", "post-LayerNorm blocks (OPT-350m) are not implemented")
    if s["_remove_final_layer_norm"]:
        s.refuse("_remove_final_layer_norm", "OPT without its final LayerNorm is not implemented")
    if s["word_embed_proj_dim"] not in (None, s["hidden_size"]):
        s.refuse(
            "word_embed_proj_dim",
            f"projecting embeddings in and out of hidden_size={s['hidden_size']} (project_in/project_out,"
            " OPT-350m) is not implemented",
        )
    if not s["layer_norm_elementwise_affine"]:
        s.refuse("layer_norm_elementwise_affine", "LayerNorms without weights are not implemented")


def _opt_config(s: Settings) -> ModelConfig:
    """OPT: pre-LN, learned positions read at offset 2, plain ReLU MLP, tied embeddings by default."""
    _opt_refusals(s)
    heads = s["num_attention_heads"]
    return ModelConfig(
        family="opt", vocab_size=s["vocab_size"], d_model=s["hidden_size"], n_layers=s["num_hidden_layers"],
        n_heads=heads, n_kv_heads=heads, head_dim=_heads_divide(s, "hidden_size", "num_attention_heads"),
        d_ff=s["ffn_dim"], max_positions=s["max_position_embeddings"], norm_kind="layer",
        norm_eps=OPT_LAYER_NORM_EPS, position_kind="learned", position_offset=OPT_POSITION_OFFSET,
        attn_bias=s["enable_bias"], mlp_bias=s["enable_bias"], gated_mlp=False,
        activation=_activation(s, "activation_function"), tie_embeddings=s["tie_word_embeddings"],
        bos_token_id=s["bos_token_id"], eos_token_id=_first(s["eos_token_id"]), pad_token_id=s["pad_token_id"],
        add_bos=True,
    )


def _heads_divide(s: Settings, d_key: str, heads_key: str) -> int:
    """Head size of a family whose heads split d_model evenly."""
    if s[d_key] % s[heads_key]:
        s.refuse(heads_key, f"{d_key}={s[d_key]} is not a multiple of it")
    return s[d_key] // s[heads_key]


def _gpt2_config(s: Settings) -> ModelConfig:
    if s["scale_attn_by_inverse_layer_idx"]:
        s.refuse("scale_attn_by_inverse_layer_idx", "per-layer attention scaling is not implemented")
    if s["add_cross_attention"]:
        s.refuse("add_cross_attention", "cross-attention is not part of a decoder-only LM")
    d, heads = s["n_embd"], s["n_head"]
    return ModelConfig(
        family="gpt2", vocab_size=s["vocab_size"], d_model=d, n_layers=s["n_layer"], n_heads=heads,
        n_kv_heads=heads, head_dim=_heads_divide(s, "n_embd", "n_head"), d_ff=s["n_inner"] or 4 * d,
        max_positions=s["n_positions"], norm_kind="layer", norm_eps=s["layer_norm_epsilon"],
        position_kind="learned", attn_bias=True, mlp_bias=True, gated_mlp=False,
        activation=_activation(s, "activation_function"),
        query_scale=None if s["scale_attn_weights"] else 1.0, tie_embeddings=s["tie_word_embeddings"],
        bos_token_id=s["bos_token_id"], eos_token_id=_first(s["eos_token_id"]), pad_token_id=s["pad_token_id"],
        add_bos=False,
    )


def _xglm_config(s: Settings) -> ModelConfig:
    if s["add_cross_attention"]:
        s.refuse("add_cross_attention", "cross-attention is not part of a decoder-only LM")
    pad = s["pad_token_id"]
    if pad is not None and pad >= XGLM_POSITION_OFFSET:
        # The sinusoidal row at index pad_token_id is zeroed; below the offset no position uses it.
        s.refuse("pad_token_id", f"the zeroed sinusoidal row would fall on position {pad - XGLM_POSITION_OFFSET}")
    d = s["d_model"]
    return ModelConfig(
        family="xglm", vocab_size=s["vocab_size"], d_model=d, n_layers=s["num_layers"],
        n_heads=s["attention_heads"], n_kv_heads=s["attention_heads"],
        head_dim=_heads_divide(s, "d_model", "attention_heads"), d_ff=s["ffn_dim"],
        max_positions=s["max_position_embeddings"], norm_kind="layer", norm_eps=XGLM_LAYER_NORM_EPS,
        position_kind="sinusoidal", position_offset=XGLM_POSITION_OFFSET, attn_bias=True, mlp_bias=True,
        gated_mlp=False, activation=_activation(s, "activation_function"),
        embed_scale=math.sqrt(d) if s["scale_embedding"] else 1.0, tie_embeddings=s["tie_word_embeddings"],
        # fairseq starts every sequence with </s> (XGLM's tokenizer prepends eos), not with <s>.
        bos_token_id=_first(s["eos_token_id"]), eos_token_id=_first(s["eos_token_id"]), pad_token_id=pad,
        add_bos=True,
    )


CONVERTERS: dict[str, Callable[[Settings], ModelConfig]] = {
    "gemma3": _gemma3_config,
    "llama": _llama_config,
    "gpt2": _gpt2_config,
    "xglm": _xglm_config,
    "qwen2": _qwen2_config,
    "qwen3": _qwen3_config,
    "mistral": _mistral_config,
    "gpt_neox": _gpt_neox_config,
    "opt": _opt_config,
}


def convert_config(family: str, settings: Settings) -> ModelConfig:
    """The family's converter, with ModelConfig's own validation errors reported against the file."""
    try:
        return CONVERTERS[family](settings)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{settings.source}: config does not describe a valid {family} model: {e}") from e


def config_from_hf(raw: dict, source: str = CONFIG_FILE) -> ModelConfig:
    """ModelConfig of a parsed config.json (no weights needed: shape checks of full-size models)."""
    family, settings, _ = family_settings(raw, source)
    return convert_config(family, settings)
