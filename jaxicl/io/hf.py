"""Hugging Face model directories → (ModelConfig, params, Tokenizer).

A directory holds `config.json`, safetensors weights (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`) and usually tokenizer files. Each family is a config mapping plus
a weight-name map onto the one forward pass. Settings a mapping does not understand are refused
with CheckpointError naming the setting and the file, never guessed.

Config keys a file omits take the defaults of the Hugging Face config classes (configs written by
older transformers versions leave out keys equal to them). Both RoPE formats are read: the older
`rope_theta` / `rope_scaling` / `rope_local_base_freq` keys and transformers 5's `rope_parameters`.

Tokenizer: loaded through `transformers.AutoTokenizer` when the directory has tokenizer files.
A directory without any still loads: its Tokenizer is a placeholder that raises CheckpointError
(naming the directory) the first time it is used, so weights-only directories fail only where text
must be tokenized. The BOS rule (`add_bos`, `bos_token_id`) is read from what the tokenizer itself
prepends and written into the returned ModelConfig as well, so config and tokenizer agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np

from jaxicl.errors import CheckpointError, ModelNotFoundError
from jaxicl.io.tokenizer import Tokenizer
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import check_param_shapes, param_shapes

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "sentencepiece.bpe.model", "spiece.model")

# model_type -> family; "gemma3" is the multimodal wrapper whose text_config holds the text model.
MODEL_TYPES = {
    "gemma3_text": "gemma3", "gemma3": "gemma3", "llama": "llama", "gpt2": "gpt2", "xglm": "xglm",
    "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "gpt_neox": "gpt_neox", "opt": "opt",
}

# Hugging Face's own activation names -> ours.
ACTIVATIONS = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}

# Defaults of the Hugging Face config classes for the keys the converters read.
HF_DEFAULTS = {
    "gemma3": dict(
        vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=131_072, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True, attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096,
        layer_types=None, final_logit_softcapping=None, attn_logit_softcapping=None,
        use_bidirectional_attention=False, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        rope_scaling=None, rope_parameters=None,
    ),
    "llama": dict(
        vocab_size=32_000, hidden_size=4096, intermediate_size=11_008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-6, pad_token_id=None, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_theta=10_000.0, rope_scaling=None, rope_parameters=None,
        attention_bias=False, mlp_bias=False,
    ),
    "gpt2": dict(
        vocab_size=50_257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, bos_token_id=50_256,
        eos_token_id=50_256, pad_token_id=None, tie_word_embeddings=True,
    ),
    "xglm": dict(
        vocab_size=256_008, max_position_embeddings=2048, d_model=1024, ffn_dim=4096, num_layers=24,
        attention_heads=16, activation_function="gelu", scale_embedding=True, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, add_cross_attention=False, tie_word_embeddings=True,
    ),
    "qwen2": dict(
        vocab_size=151_936, hidden_size=4096, intermediate_size=22_016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=None, hidden_act="silu",
        max_position_embeddings=32_768, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10_000.0,
        rope_scaling=None, rope_parameters=None, use_sliding_window=False, sliding_window=4096,
        max_window_layers=28, layer_types=None, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    ),
    "qwen3": dict(
        vocab_size=151_936, hidden_size=4096, intermediate_size=22_016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=128, hidden_act="silu",
        max_position_embeddings=32_768, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10_000.0,
        rope_scaling=None, rope_parameters=None, attention_bias=False, use_sliding_window=False,
        sliding_window=4096, max_window_layers=28, layer_types=None, pad_token_id=None, bos_token_id=None,
        eos_token_id=None,
    ),
    "mistral": dict(
        vocab_size=32_000, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=None, hidden_act="silu",
        max_position_embeddings=131_072, rms_norm_eps=1e-6, pad_token_id=None, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_theta=10_000.0, rope_scaling=None, rope_parameters=None,
        sliding_window=4096,
    ),
    "gpt_neox": dict(
        vocab_size=50_432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
        intermediate_size=24_576, hidden_act="gelu", max_position_embeddings=2048, layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False, use_parallel_residual=True,
        rope_parameters=None, rope_scaling=None, rotary_pct=0.25, rotary_emb_base=10_000.0, attention_bias=True,
    ),
    "opt": dict(
        vocab_size=50_272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, max_position_embeddings=2048,
        do_layer_norm_before=True, _remove_final_layer_norm=False, word_embed_proj_dim=None,
        num_attention_heads=12, activation_function="relu", pad_token_id=1, bos_token_id=2, eos_token_id=2,
        enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True,
    ),
}

XGLM_POSITION_OFFSET = 2  # fairseq: positions start at padding_idx + 1 with padding_idx = 1
XGLM_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; XGLM does not configure it
OPT_POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding: position p reads row p + 2
OPT_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; OPT does not configure it


# ---------------------------------------------------------------------------------------------
# config.json -> ModelConfig


@dataclasses.dataclass(frozen=True)
class Settings:
    """One config.json's settings over the family's Hugging Face defaults; knows its file for errors."""

    values: dict
    source: str

    def __getitem__(self, key: str):
        return self.values[key]

    def get(self, key: str, default=None):
        return self.values.get(key, default)

    def refuse(self, key: str, why: str) -> NoReturn:
        raise CheckpointError(f"{self.source}: unsupported setting {key}={self.values.get(key)!r}: {why}")


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


def family_settings(raw: dict, source: str) -> tuple[str, Settings, bool]:
    """(family, text-model settings over HF defaults, whether it is a multimodal wrapper)."""
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{source}: unsupported model_type {model_type!r}; supported: {sorted(MODEL_TYPES)}")
    if raw.get("quantization_config"):
        raise CheckpointError(f"{source}: unsupported setting quantization_config: quantized weights are not read")
    family, text, multimodal = MODEL_TYPES[model_type], raw, False
    if model_type == "gemma3":
        text, multimodal = raw.get("text_config") or {}, True
        inner = text.get("model_type", "gemma3_text")
        if inner != "gemma3_text":
            raise CheckpointError(f"{source}: unsupported text_config.model_type {inner!r} (expected 'gemma3_text')")
    return family, Settings({**HF_DEFAULTS[family], **text}, source), multimodal


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


# ---------------------------------------------------------------------------------------------
# Weight-name maps: our param path ("blocks/q/w") -> where the Hugging Face tensor is


@dataclasses.dataclass(frozen=True)
class Source:
    """An HF tensor ("{i}" = layer index) and how it becomes ours."""

    name: str
    transpose: bool = False  # torch nn.Linear stores [out, in]; our layout is [in, out]
    split: tuple[int, int] | None = None  # (index, count): a slice of a fused tensor's last axis
    split_heads: int | None = None  # the fused axis is [heads, count, head_dim] (GPT-NeoX), not [count, ...]

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the HF tensor must have to convert into a tensor of shape `ours`."""
        shape = list(ours)
        if self.split:
            shape[-1] *= self.split[1]
        return tuple(reversed(shape)) if self.transpose else tuple(shape)

    def convert(self, x: np.ndarray) -> np.ndarray:
        if self.transpose:
            x = x.T
        if self.split and self.split_heads:
            index, count = self.split
            lead = x.shape[:-1]
            x = x.reshape(*lead, self.split_heads, count, -1)[..., index, :].reshape(*lead, -1)
        elif self.split:
            index, count = self.split
            x = np.split(x, count, axis=-1)[index]
        return x


def _linear(ours: str, theirs: str, bias: bool, transpose: bool = True) -> dict[str, Source]:
    out = {f"{ours}/w": Source(f"{theirs}.weight", transpose=transpose)}
    if bias:
        out[f"{ours}/b"] = Source(f"{theirs}.bias")
    return out


def _norm(ours: str, theirs: str, bias: bool) -> dict[str, Source]:
    out = {f"{ours}/scale": Source(f"{theirs}.weight")}
    if bias:
        out[f"{ours}/bias"] = Source(f"{theirs}.bias")
    return out


def _llama_like_map(config: ModelConfig) -> dict[str, Source]:
    """Llama, Mistral, Qwen2/3 and Gemma 3 share names; Gemma 3 adds norms after attention and MLP."""
    block = "blocks/"
    m = {"embed": Source("embed_tokens.weight"), **_norm("final_norm", "norm", False)}
    m |= _norm(block + "attn_norm", "layers.{i}.input_layernorm", False)
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
        m |= _linear(block + ours, f"layers.{{i}}.self_attn.{theirs}", config.attn_bias)
    m |= _linear(block + "o", "layers.{i}.self_attn.o_proj", config.attn_bias and config.attn_out_bias)
    for ours in ("gate", "up", "down"):
        m |= _linear(block + ours, f"layers.{{i}}.mlp.{ours}_proj", config.mlp_bias)
    if config.post_norms:  # Gemma's post_attention_layernorm is a post-norm, not the MLP's pre-norm
        m |= _norm(block + "post_attn_norm", "layers.{i}.post_attention_layernorm", False)
        m |= _norm(block + "mlp_norm", "layers.{i}.pre_feedforward_layernorm", False)
        m |= _norm(block + "post_mlp_norm", "layers.{i}.post_feedforward_layernorm", False)
    else:
        m |= _norm(block + "mlp_norm", "layers.{i}.post_attention_layernorm", False)
    if config.qk_norm:
        m |= _norm(block + "q_norm", "layers.{i}.self_attn.q_norm", False)
        m |= _norm(block + "k_norm", "layers.{i}.self_attn.k_norm", False)
    return m


def _gpt2_map(config: ModelConfig) -> dict[str, Source]:
    """GPT-2's Conv1D weights are already [in, out]; c_attn holds q, k and v side by side."""
    m = {"embed": Source("wte.weight"), "pos_embed": Source("wpe.weight"), **_norm("final_norm", "ln_f", True)}
    m |= _norm("blocks/attn_norm", "h.{i}.ln_1", True)
    for index, ours in enumerate(("q", "k", "v")):
        m[f"blocks/{ours}/w"] = Source("h.{i}.attn.c_attn.weight", split=(index, 3))
        m[f"blocks/{ours}/b"] = Source("h.{i}.attn.c_attn.bias", split=(index, 3))
    m |= _linear("blocks/o", "h.{i}.attn.c_proj", True, transpose=False)
    m |= _norm("blocks/mlp_norm", "h.{i}.ln_2", True)
    m |= _linear("blocks/up", "h.{i}.mlp.c_fc", True, transpose=False)
    m |= _linear("blocks/down", "h.{i}.mlp.c_proj", True, transpose=False)
    return m


def _fairseq_map(final_norm: str) -> Callable[[ModelConfig], dict[str, Source]]:
    """XGLM and OPT (both from fairseq) share block names; the final norm's name differs."""

    def build(config: ModelConfig) -> dict[str, Source]:
        m = {"embed": Source("embed_tokens.weight"), **_norm("final_norm", final_norm, True)}
        if config.position_kind == "learned":  # OPT; XGLM's sinusoidal table is computed
            m["pos_embed"] = Source("embed_positions.weight")
        m |= _norm("blocks/attn_norm", "layers.{i}.self_attn_layer_norm", True)
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            m |= _linear(f"blocks/{ours}", f"layers.{{i}}.self_attn.{theirs}", config.attn_bias)
        m |= _norm("blocks/mlp_norm", "layers.{i}.final_layer_norm", True)
        m |= _linear("blocks/up", "layers.{i}.fc1", config.mlp_bias)
        m |= _linear("blocks/down", "layers.{i}.fc2", config.mlp_bias)
        return m

    return build


def _gpt_neox_map(config: ModelConfig) -> dict[str, Source]:
    """query_key_value's output rows are [heads, 3, head_dim] (per head q, k, v), not GPT-2's q | k | v."""
    m = {"embed": Source("embed_in.weight"), **_norm("final_norm", "final_layer_norm", True)}
    m |= _norm("blocks/attn_norm", "layers.{i}.input_layernorm", True)
    fused = "layers.{i}.attention.query_key_value"
    for index, ours in enumerate(("q", "k", "v")):
        m[f"blocks/{ours}/w"] = Source(f"{fused}.weight", transpose=True, split=(index, 3), split_heads=config.n_heads)
        if config.attn_bias:
            m[f"blocks/{ours}/b"] = Source(f"{fused}.bias", split=(index, 3), split_heads=config.n_heads)
    m |= _linear("blocks/o", "layers.{i}.attention.dense", config.attn_bias)
    m |= _norm("blocks/mlp_norm", "layers.{i}.post_attention_layernorm", True)
    m |= _linear("blocks/up", "layers.{i}.mlp.dense_h_to_4h", True)
    m |= _linear("blocks/down", "layers.{i}.mlp.dense_4h_to_h", True)
    return m


WEIGHT_MAPS: dict[str, Callable[[ModelConfig], dict[str, Source]]] = {
    "gemma3": _llama_like_map,
    "llama": _llama_like_map,
    "gpt2": _gpt2_map,
    "xglm": _fairseq_map("layer_norm"),
    "qwen2": _llama_like_map,
    "qwen3": _llama_like_map,
    "mistral": _llama_like_map,
    "gpt_neox": _gpt_neox_map,
    "opt": _fairseq_map("final_layer_norm"),
}
HEAD = "lm_head.weight"  # resolved against the head prefix, every other name against the body prefix
# Families whose checkpoints name the unembedding otherwise (Pythia: embed_out; transformers 5 saves lm_head).
HEAD_NAMES = {"gpt_neox": ("embed_out.weight", HEAD)}

# Body prefix (where the decoder's tensors live) -> head prefix (where lm_head lives).
PREFIXES = {
    "gpt2": {"transformer.": "", "": ""},
    "gpt_neox": {"gpt_neox.": "", "": ""},
    "opt": {"model.decoder.": "", "decoder.": "", "": ""},  # OPTForCausalLM, OPTModel, OPTDecoder
    "default": {
        "model.": "",  # XForCausalLM
        "": "",  # a bare XModel
        "model.language_model.": "",  # Gemma3ForConditionalGeneration, transformers 5
        "language_model.model.": "language_model.",  # Gemma3ForConditionalGeneration, transformers 4
    },
}

# Non-persistent buffers older checkpoints may carry; they hold no weights.
BUFFERS = re.compile(
    r"(\.rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|\.attention\.masked_bias"
    r"|embed_positions\.(weights|_float_tensor))$"
)


def weight_map(family: str, config: ModelConfig) -> dict[str, Source]:
    """Our param path -> HF source, covering exactly `param_shapes(config)`."""
    m = WEIGHT_MAPS[family](config)
    if not config.tie_embeddings:
        m["unembed"] = Source(HEAD, transpose=True)
    return m


# ---------------------------------------------------------------------------------------------
# Reading safetensors


class TensorStore(contextlib.ExitStack):
    """Tensor name -> float32 array over one file or a sharded index; files open on first use."""

    def __init__(self, root: Path):
        super().__init__()
        self._handles: dict[Path, object] = {}
        self.used: set[str] = set()
        index, single = root / INDEX_FILE, root / SINGLE_FILE
        if index.is_file():
            self.source = str(index)
            self.files = self._index_files(index)
        elif single.is_file():
            self.source = str(single)
            self.files = dict.fromkeys(self._open(single).keys(), single)
        else:
            found = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
            hint = f" (found {found}; only safetensors are read)" if found else ""
            raise CheckpointError(f"{root}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def _index_files(self, index: Path) -> dict[str, Path]:
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map")
        files = {name: index.parent / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index}: shard {shard.name} is missing")
        return files

    def _open(self, path: Path):
        if path not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[path] = self.enter_context(safe_open(str(path), framework="numpy"))
            except Exception as e:  # safetensors raises its own error type for corrupt headers
                raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        return self._handles[path]

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def file_of(self, name: str) -> str:
        return str(self.files[name])

    def get(self, name: str) -> np.ndarray:
        handle = self._open(self.files[name])
        try:
            x = handle.get_tensor(name)
        except Exception as e:  # e.g. a truncated file
            raise CheckpointError(f"{self.files[name]}: cannot read tensor {name} ({e})") from e
        self.used.add(name)
        return np.asarray(x, dtype=np.float32)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self.files[name]).get_slice(name).get_shape())


def _body_prefix(family: str, store: TensorStore, embed_name: str) -> tuple[str, str]:
    """(body prefix, head prefix): where this checkpoint keeps its decoder tensors."""
    prefixes = PREFIXES.get(family, PREFIXES["default"])
    for body, head in prefixes.items():
        if body + embed_name in store:
            return body, head
    tried = [body + embed_name for body in prefixes]
    raise CheckpointError(f"{store.source}: missing tensor for embed (looked for {tried})")


def _fetch(store: TensorStore, name: str, src: Source, shape: tuple[int, ...], path: str) -> np.ndarray:
    """One HF tensor, checked and converted into our orientation."""
    if name not in store:
        raise CheckpointError(f"{store.source}: missing tensor {name} (for {path})")
    expected = src.hf_shape(shape)
    got = store.shape(name)
    if got != expected:
        raise CheckpointError(f"{store.file_of(name)}: tensor {name} has shape {got}, expected {expected} (for {path})")
    return src.convert(store.get(name))


def _flat_shapes(tree: dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """param_shapes as {"blocks/q/w": shape}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat_shapes(value, f"{prefix}{key}/")
        else:
            out[prefix + key] = value
    return out


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def read_params(family: str, config: ModelConfig, store: TensorStore, multimodal: bool = False) -> dict:
    """Params in our layout, per-block tensors stacked over layers (filled in place, one copy)."""
    mapping = weight_map(family, config)
    body, head = _body_prefix(family, store, mapping["embed"].name)
    heads = [head + name for name in HEAD_NAMES.get(family, (HEAD,))]
    head_name = next((name for name in heads if name in store), heads[0])
    params: dict = {}
    for path, shape in _flat_shapes(param_shapes(config)).items():
        src = mapping[path]
        if path.startswith("blocks/"):
            value = np.empty(shape, np.float32)
            for i in range(config.n_layers):
                value[i] = _fetch(store, body + src.name.format(i=i), src, shape[1:], f"{path}[{i}]")
        else:
            name = head_name if src.name == HEAD else body + src.name
            value = _fetch(store, name, src, shape, path)
        _set(params, path, value)
    _refuse_unused(store, body, heads, config, multimodal)
    return params


def _refuse_unused(store: TensorStore, body: str, heads: list[str], config: ModelConfig, multimodal: bool) -> None:
    """A tensor we do not map is computation we would silently skip: refuse it."""

    def ignorable(name: str) -> bool:
        if BUFFERS.search(name):
            return True
        if name in heads:
            return config.tie_embeddings  # tied: lm_head repeats the embedding
        return multimodal and not name.startswith(body)  # vision tower, projector

    unused = sorted(n for n in store.files if n not in store.used and not ignorable(n))
    if unused:
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        raise CheckpointError(f"{store.source}: unexpected tensors {unused[:5]}{more}")


# ---------------------------------------------------------------------------------------------
# Tokenizer


class MissingTokenizer:
    """Backend of a directory without tokenizer files: any use raises, naming the directory."""

    def __init__(self, root: Path):
        self._root = root

    def _fail(self) -> NoReturn:
        raise CheckpointError(f"{self._root}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        self._fail()

    def __len__(self) -> int:
        self._fail()

    def __call__(self, *args, **kwargs):
        self._fail()


def _prepended_token(backend, source: Path) -> int | None:
    """The token the tokenizer puts before a text (its BOS rule), or None if it adds none."""
    probe = "Hello world"
    plain = list(backend.encode(probe, add_special_tokens=False))
    full = list(backend.encode(probe, add_special_tokens=True))
    if not plain:
        return None
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            prefix = full[:start]
            if len(prefix) > 1:
                raise CheckpointError(f"{source}: the tokenizer prepends {prefix}; expected at most one BOS token")
            return prefix[0] if prefix else None
    raise CheckpointError(f"{source}: cannot tell what the tokenizer prepends ({probe!r}: {plain} vs {full})")


def load_tokenizer(root: Path, config: ModelConfig) -> tuple[Tokenizer, ModelConfig]:
    """The directory's tokenizer, and the config with the tokenizer's BOS rule written in."""
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        return Tokenizer(MissingTokenizer(root), config.bos_token_id, config.eos_token_id, config.add_bos), config
    from transformers import AutoTokenizer

    try:
        backend = AutoTokenizer.from_pretrained(str(root))
    except Exception as e:  # transformers raises many types for unreadable tokenizer files
        raise CheckpointError(f"{root}: cannot load the tokenizer ({type(e).__name__}: {e})") from e
    bos = _prepended_token(backend, root)
    if bos is not None:
        config = config.replace(add_bos=True, bos_token_id=bos)
    else:
        config = config.replace(add_bos=False)
    eos = backend.eos_token_id if backend.eos_token_id is not None else config.eos_token_id
    return Tokenizer(backend, config.bos_token_id, eos, config.add_bos), config


# ---------------------------------------------------------------------------------------------
# Entry point


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _model_dir(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelNotFoundError(f"{root}: no such directory")
    if not (root / CONFIG_FILE).is_file():
        raise ModelNotFoundError(f"{root}: not a Hugging Face model directory (no {CONFIG_FILE})")
    return root


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, dict, Tokenizer]:
    """(config, params as float32 numpy arrays in our layout, tokenizer) of a Hugging Face directory.

    The tokenizer is a placeholder that raises CheckpointError on use when the directory has no
    tokenizer files (see the module docstring).
    """
    root = _model_dir(path)
    config_path = root / CONFIG_FILE
    raw = _read_json(config_path)
    family, settings, multimodal = family_settings(raw, str(config_path))
    config = convert_config(family, settings)
    with TensorStore(root) as store:
        params = read_params(family, config, store, multimodal)
        check_param_shapes(config, params, store.source)
    tokenizer, config = load_tokenizer(root, config)
    return config, params, tokenizer
