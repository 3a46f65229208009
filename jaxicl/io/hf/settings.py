"""config.json -> Settings: the supported model types and their Hugging Face config defaults.

Config keys a file omits take the defaults of the Hugging Face config classes (configs written by
older transformers versions leave out keys equal to them).
"""

from __future__ import annotations

import dataclasses
from typing import NoReturn

from jaxicl.errors import CheckpointError

# model_type -> family; "gemma3" is the multimodal wrapper whose text_config holds the text model.
MODEL_TYPES = {
    "gemma3_text": "gemma3", "gemma3": "gemma3", "llama": "llama", "gpt2": "gpt2", "xglm": "xglm",
    "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "gpt_neox": "gpt_neox", "opt": "opt",
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
