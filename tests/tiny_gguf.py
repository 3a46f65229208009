"""Write tiny GGUF files the way llama.cpp's converter would, from tiny random transformers models.

The conventions reproduced here are the ones `jaxicl.io.gguf` must undo: Hugging Face [out, in]
weights written as-is (GGUF then lists the shape reversed), the per-head row interleave of
attn_q / attn_k for the `llama` architecture (Mistral included; not for qwen2/qwen3, whose
converter writes HF's rows), +1 on every Gemma norm weight, and GPT-NeoX's fused query_key_value
rows reordered from per-head [heads, 3, head_dim] to q | k | v. The tokenizer is a
byte-level BPE trained here on a few sentences and written as `tokenizer.ggml.model = gpt2`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = 0, 1, 2
# transformers' byte-level builder adds "<|endoftext|>" (GPT-2's unk) when a vocabulary lacks it,
# which would give the tokenizer one id more than the embedding has rows; real GPT-2-style
# vocabularies carry it, so ours does too.
SPECIALS = ["<pad>", "<s>", "</s>", "<|endoftext|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sentence: the movie was fine. Label: positive",
    "Sentence: a dull, tedious film. Label: negative",
    "In-context learning and gradient descent, layer by layer.",
    "Numbers like 12345 and 2024 appear; so do tabs\tand newlines\n.",
    "Überraschung! Café, naïve, 日本語 and emoji 🙂 are bytes too.",
]


# --------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(vocab_size: int = 300, specials: list[str] = SPECIALS) -> RawTokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer) whose first ids are <pad>, <s>, </s>."""
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def tokenizer_metadata(tok: RawTokenizer, add_bos: bool) -> dict[str, Any]:
    """llama.cpp's tokenizer.ggml.* keys for a byte-level BPE."""
    tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    token_type = [3 if t in special else 1 for t in tokens]  # 3: CONTROL, 1: NORMAL
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": token_type,
        "tokenizer.ggml.bos_token_id": BOS,
        "tokenizer.ggml.eos_token_id": EOS,
        "tokenizer.ggml.padding_token_id": PAD,
        "tokenizer.ggml.add_bos_token": add_bos,
    }


# --------------------------------------------------------------------------------------------
# Tiny random models


def llama_model(vocab: int, *, tied: bool = True, biased: bool = False, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        attention_bias=biased, mlp_bias=biased, tie_word_embeddings=tied,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )
    return _build(transformers.LlamaForCausalLM, config, plus_one_norms=False, seed=seed)


def gemma3_model(vocab: int, *, layer_types: list[str] | None = None, seed: int = 0):
    """Seven layers by default: Gemma 3's own pattern (every 6th global) gives local, global, local
    at the end, and the window (4) is shorter than the test prompts."""
    n_layers = len(layer_types) if layer_types else 7
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        max_position_embeddings=128, rms_norm_eps=1e-6, sliding_window=4, layer_types=layer_types,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )
    return _build(transformers.Gemma3ForCausalLM, config, plus_one_norms=True, seed=seed)


def _rotary_config(cls, vocab: int, **extra):
    """The tiny shape shared by the Llama-like families (GQA, 2 layers)."""
    return cls(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, **extra,
    )


def qwen2_model(vocab: int, *, tied: bool = False, seed: int = 0):
    config = _rotary_config(
        transformers.Qwen2Config, vocab, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0},
    )
    return _build(transformers.Qwen2ForCausalLM, config, plus_one_norms=False, seed=seed)


def qwen3_model(vocab: int, *, seed: int = 0):
    """head_dim 32 != hidden_size / heads, as in the real Qwen3 sizes."""
    config = _rotary_config(
        transformers.Qwen3Config, vocab, head_dim=32, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0},
    )
    return _build(transformers.Qwen3ForCausalLM, config, plus_one_norms=False, seed=seed)


def mistral_model(vocab: int, *, window: int | None = 4, seed: int = 0):
    config = _rotary_config(
        transformers.MistralConfig, vocab, sliding_window=window, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return _build(transformers.MistralForCausalLM, config, plus_one_norms=False, seed=seed)


def gptneox_model(vocab: int, *, parallel: bool = True, seed: int = 0):
    """Pythia-like: rotary on a quarter of each head, untied embed_out, RoPE base 10000 (llama.cpp
    writes no freq_base for gptneox, so a file only carries the default)."""
    config = transformers.GPTNeoXConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, rotary_pct=0.25, rotary_emb_base=10000.0, use_parallel_residual=parallel,
        layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )
    return _build(transformers.GPTNeoXForCausalLM, config, plus_one_norms=False, seed=seed)


def _build(cls, config, *, plus_one_norms: bool, seed: int):
    """fp32 eager model with every parameter random, so any misplaced tensor changes the logits.

    Norm scales are drawn around their identity: 1 for plain RMSNorm, 0 under Gemma's 1 + w.
    """
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(0.3 * noise + (0.0 if plus_one_norms else 1.0))
            else:
                p.copy_(0.15 * noise)
    return model


# --------------------------------------------------------------------------------------------
# HF state dict → GGUF tensors (llama.cpp's names and layout)

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}
_LLAMA_NORMS = {"post_attention_layernorm": "ffn_norm"}
_GEMMA_NORMS = {
    "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def llamacpp_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row interleave for its RoPE: HF row (h, j, i) goes to file row (h, i, j)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


_GPTNEOX_NAMES = {
    "input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down",
}
_GPTNEOX_TOP = {
    "gpt_neox.embed_in.weight": "token_embd.weight", "gpt_neox.final_layer_norm.weight": "output_norm.weight",
    "gpt_neox.final_layer_norm.bias": "output_norm.bias", "embed_out.weight": "output.weight",
    "lm_head.weight": "output.weight",
}


def gptneox_qkv(value: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's re-format of query_key_value rows: per-head [heads, 3, hd] to q | k | v."""
    per_head = value.reshape(heads, 3, -1, *value.shape[1:])
    return np.concatenate([per_head[:, i].reshape(-1, *value.shape[1:]) for i in range(3)])


def _gptneox_tensors(model) -> dict[str, np.ndarray]:
    cfg = model.config
    out = {}
    for name, value in model.state_dict().items():
        value = value.detach().numpy().astype(np.float32)
        if name.startswith("gpt_neox.layers."):
            _, _, layer, rest = name.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            if module == "attention.query_key_value":
                value = gptneox_qkv(value, cfg.num_attention_heads)
            out[f"blk.{layer}.{_GPTNEOX_NAMES[module]}.{leaf}"] = value
        else:
            out[_GPTNEOX_TOP[name]] = value
    return out


def gguf_tensors(model, arch: str) -> dict[str, np.ndarray]:
    """The model's tensors under llama.cpp's names, in the layout and values its converter writes."""
    if arch == "gptneox":
        return _gptneox_tensors(model)
    cfg = model.config
    renames = _LAYER_NAMES | (_GEMMA_NORMS if arch == "gemma3" else _LLAMA_NORMS)
    out = {}
    for name, value in model.state_dict().items():
        value = value.detach().numpy().astype(np.float32)
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{renames[module]}.{leaf}"
        else:
            gguf_name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        if arch == "llama" and ".attn_q." in gguf_name:
            value = llamacpp_permute(value, cfg.num_attention_heads)
        if arch == "llama" and ".attn_k." in gguf_name:
            value = llamacpp_permute(value, cfg.num_key_value_heads)
        if arch == "gemma3" and "norm.weight" in gguf_name:
            value = value + 1.0
        out[gguf_name] = value
    return out


def _gptneox_metadata(cfg) -> dict[str, Any]:
    """What llama.cpp's GPTNeoXModel.set_gguf_parameters writes (no freq_base: the default 10000)."""
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    rope = cfg.rope_parameters
    return {
        "gptneox.context_length": cfg.max_position_embeddings,
        "gptneox.embedding_length": cfg.hidden_size,
        "gptneox.block_count": cfg.num_hidden_layers,
        "gptneox.feed_forward_length": cfg.intermediate_size,
        "gptneox.rope.dimension_count": int(rope["partial_rotary_factor"] * head_dim),
        "gptneox.attention.head_count": cfg.num_attention_heads,
        "gptneox.use_parallel_residual": cfg.use_parallel_residual,
        "gptneox.attention.layer_norm_epsilon": float(cfg.layer_norm_eps),
    }


def model_metadata(model, arch: str) -> dict[str, Any]:
    """The `{arch}.*` hyperparameter keys llama.cpp writes for this model."""
    cfg = model.config
    if arch == "gptneox":
        return _gptneox_metadata(cfg)
    meta = {
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.block_count": cfg.num_hidden_layers,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_attention_heads,
        f"{arch}.attention.head_count_kv": cfg.num_key_value_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
    }
    if arch == "llama":
        meta |= {
            "llama.rope.freq_base": float(cfg.rope_parameters["rope_theta"]),
            "llama.rope.dimension_count": cfg.hidden_size // cfg.num_attention_heads,
            "llama.vocab_size": cfg.vocab_size,
        }
    elif arch in ("qwen2", "qwen3"):  # the base converter's keys (key_length where config has head_dim)
        meta[f"{arch}.rope.freq_base"] = float(cfg.rope_parameters["rope_theta"])
        if getattr(cfg, "head_dim", None):
            meta |= {f"{arch}.attention.key_length": cfg.head_dim, f"{arch}.attention.value_length": cfg.head_dim}
    else:
        full = cfg.rope_parameters["full_attention"]
        meta |= {
            "gemma3.attention.key_length": cfg.head_dim,
            "gemma3.attention.value_length": cfg.head_dim,
            "gemma3.attention.sliding_window": cfg.sliding_window,
            "gemma3.rope.freq_base": float(full["rope_theta"]),
        }
        if full.get("rope_type") == "linear":
            meta |= {"gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": float(full["factor"])}
    return meta


# --------------------------------------------------------------------------------------------
# Writing


def _value_type(value: Any) -> gguf.GGUFValueType:
    if isinstance(value, bool):
        return gguf.GGUFValueType.BOOL
    if isinstance(value, int):
        return gguf.GGUFValueType.UINT32
    if isinstance(value, float):
        return gguf.GGUFValueType.FLOAT32
    if isinstance(value, str):
        return gguf.GGUFValueType.STRING
    if isinstance(value, (list, tuple)):
        return gguf.GGUFValueType.ARRAY
    raise TypeError(f"no GGUF type for {value!r}")


def _array_type(values: list) -> gguf.GGUFValueType:
    first = values[0]
    if isinstance(first, int) and not isinstance(first, bool):
        return gguf.GGUFValueType.INT32
    return _value_type(first)


def write_gguf(
    path: str | Path,
    arch: str,
    metadata: dict[str, Any],
    tensors: dict[str, np.ndarray],
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
) -> Path:
    """Write a GGUF file; 2-D tensors are stored as `qtype`, 1-D ones as F32 (as llama.cpp does)."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        vtype = _value_type(value)
        sub = _array_type(list(value)) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, list(value) if sub else value, vtype, sub_type=sub)
    for name, value in tensors.items():
        _add_tensor(writer, name, value, qtype if value.ndim == 2 else gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_tensor(writer: gguf.GGUFWriter, name: str, value: np.ndarray, qtype: gguf.GGMLQuantizationType) -> None:
    if value.dtype != np.float32 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, value)
        return
    data = gguf.quants.quantize(value, qtype)
    raw_dtype = None if data.dtype == np.float16 else qtype
    writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw_dtype)


def write_model(
    path: str | Path,
    model,
    arch: str,
    tok: RawTokenizer,
    *,
    add_bos: bool = True,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """A tiny model as llama.cpp would convert it, with the trained tokenizer."""
    meta = model_metadata(model, arch) | tokenizer_metadata(tok, add_bos) | (extra_metadata or {})
    return write_gguf(path, arch, meta, gguf_tensors(model, arch), qtype)
