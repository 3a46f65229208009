"""GGUF checkpoints (llama.cpp's format) → (ModelConfig, float32 numpy params, Tokenizer).

What a GGUF stores differs from the params layout in a few llama.cpp conventions, each undone here:
  * shapes are listed fastest-axis first, so a linear weight reads back as [out, in] and is
    transposed to our [in, out];
  * Gemma norm weights are stored as 1 + w; we keep the (1 + w) convention, so subtract 1;
  * for the `llama` architecture the rows of attn_q / attn_k are permuted per head for
    llama.cpp's interleaved RoPE; we un-permute to the rotate-half (Hugging Face) layout. `qwen2`,
    `qwen3` and `gptneox` use llama.cpp's NEOX (rotate-half) RoPE, so their rows are as in HF;
  * `gptneox` fuses q, k and v into attn_qkv, whose rows llama.cpp's converter reorders from
    transformers' per-head [heads, 3, head_dim] to q | k | v; we take the three row blocks.

Architectures: `llama` (Llama, and Mistral, which llama.cpp converts to `llama`: a file that states
`llama.attention.sliding_window` loads as Mistral with that window on every layer, one that does
not as full attention, as llama.cpp runs it), `gemma3`, `qwen2`, `qwen3`, `gptneox` (exact GELU, as
the Hugging Face model; llama.cpp itself uses the tanh approximation).

Every tensor is dequantized with `gguf.quants.dequantize` into preallocated float32 arrays, a
chunk of rows at a time, so peak memory stays near the size of the float32 params. Anything the
file says that this reader does not understand (an architecture, a RoPE scaling type, a tensor)
is refused with a CheckpointError rather than guessed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Iterator

import gguf
import numpy as np

from jaxicl.errors import CheckpointError, ModelNotFoundError
from jaxicl.io.tokenizer import Tokenizer, check_vocabulary_round_trip
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import check_param_shapes, param_shapes

_ROWS_PER_CHUNK = 16384  # rows dequantized at once: bounds the temporaries of big tensors

_INT_TYPES = {
    gguf.GGUFValueType.UINT8, gguf.GGUFValueType.INT8, gguf.GGUFValueType.UINT16,
    gguf.GGUFValueType.INT16, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.INT32,
    gguf.GGUFValueType.UINT64, gguf.GGUFValueType.INT64,
}
_FLOAT_TYPES = {gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64}
_REQUIRED = object()


# --------------------------------------------------------------------------------------------
# Reading the file


class _PlainArrayReader(gguf.GGUFReader):
    """GGUFReader that slices a plain ndarray view of its memmap instead of the memmap itself.

    Metadata parsing makes one small slice per token string (~800k for Gemma's vocabulary), and
    every memmap slice pays numpy's memmap subclass hooks: this cuts Gemma's header parse from
    ~9 s to ~3 s. Same bytes, same semantics; `_open` falls back to the stock reader if this
    private hook ever changes.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: str | None = None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self._plain = self.data.view(np.ndarray)
        count = int(count)
        dtype = np.dtype(dtype)
        arr = plain[offset : offset + dtype.itemsize * count].view(dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


def _open(path: str) -> gguf.GGUFReader:
    """A reader over `path`; a truncated or malformed file becomes a CheckpointError."""
    try:
        return _PlainArrayReader(path)
    except Exception:
        pass
    try:
        return gguf.GGUFReader(path)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


class _Metadata:
    """Typed access to a file's key/value metadata; a value is decoded only when asked for."""

    def __init__(self, reader: gguf.GGUFReader, source: str):
        self.fields = reader.fields
        self.source = source

    def _field(self, key: str, default: Any) -> Any:
        if key not in self.fields:
            if default is _REQUIRED:
                raise CheckpointError(f"{self.source}: required metadata key {key!r} is missing")
            return None
        return self.fields[key]

    def _bad(self, key: str, want: str) -> CheckpointError:
        types = [t.name for t in self.fields[key].types]
        return CheckpointError(f"{self.source}: metadata key {key!r} has type {types}, expected {want}")

    def get_int(self, key: str, default: Any = _REQUIRED) -> int | None:
        field = self._field(key, default)
        if field is None:
            return default
        if len(field.types) != 1 or field.types[0] not in _INT_TYPES:
            raise self._bad(key, "an integer")
        return int(field.contents())

    def get_float(self, key: str, default: Any = _REQUIRED) -> float | None:
        field = self._field(key, default)
        if field is None:
            return default
        if len(field.types) != 1 or field.types[0] not in _INT_TYPES | _FLOAT_TYPES:
            raise self._bad(key, "a number")
        return float(field.contents())

    def get_str(self, key: str, default: Any = _REQUIRED) -> str | None:
        field = self._field(key, default)
        if field is None:
            return default
        if field.types != [gguf.GGUFValueType.STRING]:
            raise self._bad(key, "a string")
        try:
            return field.contents()
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.source}: metadata key {key!r} is not valid UTF-8") from e

    def get_bool(self, key: str, default: Any = _REQUIRED) -> bool | None:
        field = self._field(key, default)
        if field is None:
            return default
        if field.types != [gguf.GGUFValueType.BOOL]:
            raise self._bad(key, "a bool")
        return bool(field.contents())

    def bool_list(self, key: str) -> list[bool]:
        field = self._field(key, _REQUIRED)
        if field.types != [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL]:
            raise self._bad(key, "an array of bools")
        return [bool(x) for x in field.contents()]

    def is_array(self, key: str) -> bool:
        return key in self.fields and self.fields[key].types[:1] == [gguf.GGUFValueType.ARRAY]


def _numpy_shape(tensor: Any) -> tuple[int, ...]:
    """A GGUF tensor's logical shape in numpy (slowest-axis-first) order."""
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))


# --------------------------------------------------------------------------------------------
# Metadata → ModelConfig


def _rope_scaling(meta: _Metadata, arch: str) -> float:
    """Linear RoPE scaling factor; other scaling types change the math, so they are refused."""
    kind = meta.get_str(f"{arch}.rope.scaling.type", None)
    if kind in (None, "none"):
        return 1.0
    if kind != "linear":
        raise CheckpointError(f"{meta.source}: unsupported RoPE scaling type {kind!r} (only linear)")
    return meta.get_float(f"{arch}.rope.scaling.factor", 1.0)


def _special_ids(meta: _Metadata) -> dict:
    return dict(
        bos_token_id=meta.get_int("tokenizer.ggml.bos_token_id", None),
        eos_token_id=meta.get_int("tokenizer.ggml.eos_token_id", None),
        pad_token_id=meta.get_int("tokenizer.ggml.padding_token_id", None),
    )


def _add_bos(meta: _Metadata) -> bool:
    """The file's own flag; absent, llama.cpp's default (BOS for sentencepiece vocabularies)."""
    flag = meta.get_bool("tokenizer.ggml.add_bos_token", None)
    if flag is not None:
        return flag
    return meta.get_str("tokenizer.ggml.model", None) == "llama"


def _rotary_dim(meta: _Metadata, arch: str, head_dim: int) -> int | None:
    """rope.dimension_count as our rotary_dim; a partial count only where llama.cpp rotates halves."""
    rope_dims = meta.get_int(f"{arch}.rope.dimension_count", head_dim)
    if rope_dims == head_dim:
        return None
    if arch not in _NEOX_ROPE:
        raise CheckpointError(
            f"{meta.source}: {arch}.rope.dimension_count={rope_dims} with key_length={head_dim};"
            f" partial RoPE is only read for {sorted(_NEOX_ROPE)}"
        )
    return rope_dims


def _attention_biases(tensors: dict) -> dict:
    """Bias knobs from the tensors present: q/k/v biases (separate or fused), and whether o has one."""
    qkv = "blk.0.attn_q.bias" in tensors or "blk.0.attn_qkv.bias" in tensors
    return dict(attn_bias=qkv, attn_out_bias=not qkv or "blk.0.attn_output.bias" in tensors)


def _norm_eps(meta: _Metadata, arch: str, norm_kind: str) -> float:
    key = "layer_norm_rms_epsilon" if norm_kind == "rms" else "layer_norm_epsilon"
    return meta.get_float(f"{arch}.attention.{key}")


def _shared_config(meta: _Metadata, arch: str, tensors: dict, norm_kind: str = "rms") -> dict:
    """Knobs every rotary decoder states the same way (llama.cpp's `{arch}.*` keys)."""
    for key in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"):
        if meta.is_array(f"{arch}.{key}"):
            raise CheckpointError(f"{meta.source}: per-layer {arch}.{key} is not supported")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{meta.source}: missing tensor token_embd.weight")
    vocab = _numpy_shape(tensors["token_embd.weight"])[0]
    stated_vocab = meta.get_int(f"{arch}.vocab_size", None)
    if stated_vocab is not None and stated_vocab != vocab:
        raise CheckpointError(
            f"{meta.source}: {arch}.vocab_size={stated_vocab} but tensor token_embd.weight has {vocab} rows"
        )
    n_heads = meta.get_int(f"{arch}.attention.head_count")
    head_dim = meta.get_int(f"{arch}.attention.key_length", None) or meta.get_int(f"{arch}.embedding_length") // n_heads
    value_dim = meta.get_int(f"{arch}.attention.value_length", head_dim)
    if value_dim != head_dim:
        raise CheckpointError(
            f"{meta.source}: key_length={head_dim}, value_length={value_dim}; only equal values are supported"
        )
    return dict(
        vocab_size=vocab,
        d_model=meta.get_int(f"{arch}.embedding_length"),
        n_layers=meta.get_int(f"{arch}.block_count"),
        n_heads=n_heads,
        n_kv_heads=meta.get_int(f"{arch}.attention.head_count_kv", n_heads),
        head_dim=head_dim,
        d_ff=meta.get_int(f"{arch}.feed_forward_length"),
        max_positions=meta.get_int(f"{arch}.context_length"),
        norm_kind=norm_kind,
        norm_eps=_norm_eps(meta, arch, norm_kind),
        position_kind="rope",
        rope_base=meta.get_float(f"{arch}.rope.freq_base", 10000.0),
        rope_scaling_factor=_rope_scaling(meta, arch),
        rotary_dim=_rotary_dim(meta, arch, head_dim),
        mlp_bias="blk.0.ffn_up.bias" in tensors,
        gated_mlp=True,
        tie_embeddings="output.weight" not in tensors,
        add_bos=_add_bos(meta),
        **_attention_biases(tensors),
        **_special_ids(meta),
    )


def _llama_config(meta: _Metadata, tensors: dict) -> dict:
    """Llama; Mistral too (llama.cpp writes it as `llama`), with its window when the file states one."""
    knobs = _shared_config(meta, "llama", tensors) | dict(family="llama", activation="silu")
    window = meta.get_int("llama.attention.sliding_window", None)
    if window:
        knobs |= dict(
            family="mistral", sliding_window=window, layer_is_local=(True,) * knobs["n_layers"],
            rope_local_base=knobs["rope_base"], rope_local_scaling_factor=knobs["rope_scaling_factor"],
        )
    return knobs


def _no_sliding_window(meta: _Metadata, arch: str) -> None:
    """Qwen's windows depend on max_window_layers, which GGUF does not carry: refuse, never guess."""
    key = f"{arch}.attention.sliding_window"
    if meta.get_int(key, None):
        raise CheckpointError(
            f"{meta.source}: {key} is not supported for {arch} (the file does not state which layers it applies to)"
        )


def _qwen2_config(meta: _Metadata, tensors: dict) -> dict:
    """Qwen2 / Qwen2.5: the biases (q/k/v, no o) are read from the tensors present."""
    _no_sliding_window(meta, "qwen2")
    return _shared_config(meta, "qwen2", tensors) | dict(family="qwen2", activation="silu")


def _qwen3_config(meta: _Metadata, tensors: dict) -> dict:
    _no_sliding_window(meta, "qwen3")
    return _shared_config(meta, "qwen3", tensors) | dict(family="qwen3", activation="silu", qk_norm=True)


def _gptneox_config(meta: _Metadata, tensors: dict) -> dict:
    """GPT-NeoX / Pythia: LayerNorm with biases, fused biased QKV, partial RoPE, plain GELU MLP."""
    arch = "gptneox"
    return _shared_config(meta, arch, tensors, norm_kind="layer") | dict(
        family="gpt_neox",
        parallel_residual=meta.get_bool(f"{arch}.use_parallel_residual", True),
        gated_mlp=False,
        activation="gelu",
    )


def _gemma3_local_layers(meta: _Metadata, n_layers: int) -> tuple[bool, ...]:
    """Which layers use sliding-window attention: the file's pattern key, else every 6th global."""
    key = "gemma3.attention.sliding_window_pattern"
    if meta.is_array(key):
        pattern = meta.bool_list(key)
        if len(pattern) != n_layers:
            raise CheckpointError(f"{meta.source}: {key} has {len(pattern)} entries for {n_layers} layers")
        return tuple(pattern)
    period = meta.get_int(key, 6)
    return tuple(period == 0 or (i + 1) % period != 0 for i in range(n_layers))


def _gemma3_config(meta: _Metadata, tensors: dict) -> dict:
    knobs = _shared_config(meta, "gemma3", tensors)
    n_layers, head_dim = knobs["n_layers"], knobs["head_dim"]
    # llama.cpp scales queries by (d_model / heads) ** -0.5 for the 62-layer (27B) model only,
    # which is what its query_pre_attn_scalar says; every other size uses head_dim ** -0.5.
    query_scale = (knobs["d_model"] // knobs["n_heads"]) ** -0.5 if n_layers == 62 else head_dim**-0.5
    return knobs | dict(
        family="gemma3",
        norm_plus_one=True,
        qk_norm=True,
        post_norms=True,
        activation="gelu_tanh",
        embed_scale=math.sqrt(knobs["d_model"]),
        query_scale=query_scale,
        rope_local_base=meta.get_float("gemma3.rope.freq_base_swa", 10000.0),
        sliding_window=meta.get_int("gemma3.attention.sliding_window"),
        layer_is_local=_gemma3_local_layers(meta, n_layers),
        attn_logit_softcap=meta.get_float("gemma3.attn_logit_softcapping", None),
        final_logit_softcap=meta.get_float("gemma3.final_logit_softcapping", None),
    )


_CONFIG_BUILDERS: dict[str, Callable[[_Metadata, dict], dict]] = {
    "llama": _llama_config,
    "gemma3": _gemma3_config,
    "qwen2": _qwen2_config,
    "qwen3": _qwen3_config,
    "gptneox": _gptneox_config,
}
# GGUF architecture -> the families it loads as (llama.cpp converts Mistral to `llama`).
GGUF_FAMILIES = {
    "llama": ("llama", "mistral"), "gemma3": ("gemma3",), "qwen2": ("qwen2",), "qwen3": ("qwen3",),
    "gptneox": ("gpt_neox",),
}
_NEOX_ROPE = {"qwen2", "qwen3", "gptneox"}  # llama.cpp's rotate-half RoPE: rows as in HF, partial dims allowed
_PERMUTED_QK = {"llama"}  # llama.cpp interleaved these q/k rows for its RoPE


def _config(meta: _Metadata, tensors: dict) -> ModelConfig:
    arch = meta.get_str("general.architecture")
    if arch not in _CONFIG_BUILDERS:
        raise CheckpointError(
            f"{meta.source}: unsupported GGUF architecture {arch!r}; supported: {sorted(_CONFIG_BUILDERS)}"
        )
    knobs = _CONFIG_BUILDERS[arch](meta, tensors)
    try:
        return ModelConfig(**knobs)
    except ValueError as e:  # ModelConfig's own consistency checks
        raise CheckpointError(f"{meta.source}: inconsistent {arch} metadata: {e}") from e


# --------------------------------------------------------------------------------------------
# Tensors → params

# params leaf path (inside blocks, or at the top) → GGUF tensor name (per block: after "blk.{i}.")
_BLOCK_TENSORS = {
    ("attn_norm", "scale"): "attn_norm.weight", ("attn_norm", "bias"): "attn_norm.bias",
    ("q", "w"): "attn_q.weight", ("q", "b"): "attn_q.bias",
    ("k", "w"): "attn_k.weight", ("k", "b"): "attn_k.bias",
    ("v", "w"): "attn_v.weight", ("v", "b"): "attn_v.bias",
    ("o", "w"): "attn_output.weight", ("o", "b"): "attn_output.bias",
    ("q_norm", "scale"): "attn_q_norm.weight",
    ("k_norm", "scale"): "attn_k_norm.weight",
    ("post_attn_norm", "scale"): "post_attention_norm.weight",
    ("mlp_norm", "scale"): "ffn_norm.weight", ("mlp_norm", "bias"): "ffn_norm.bias",
    ("gate", "w"): "ffn_gate.weight", ("gate", "b"): "ffn_gate.bias",
    ("up", "w"): "ffn_up.weight", ("up", "b"): "ffn_up.bias",
    ("down", "w"): "ffn_down.weight", ("down", "b"): "ffn_down.bias",
    ("post_mlp_norm", "scale"): "post_ffw_norm.weight",
}
_TOP_TENSORS = {
    ("embed",): "token_embd.weight",
    ("unembed",): "output.weight",
    ("final_norm", "scale"): "output_norm.weight",
    ("final_norm", "bias"): "output_norm.bias",
}
_FUSED_QKV = {"q": 0, "k": 1, "v": 2}  # row block of attn_qkv (q | k | v) in the fusing architectures
_FUSED_ARCHS = {"gptneox"}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """Which GGUF tensor fills (one layer of) one params leaf, and how."""

    name: str  # per block: the name after "blk.{i}."
    transpose: bool  # [out, in] in the file → [in, out] in params
    minus_one: bool  # Gemma norms are stored as 1 + w
    unpermute_heads: int | None  # llama q/k: heads whose rows llama.cpp interleaved
    split: int | None = None  # index of this leaf's row block in a fused q | k | v tensor


def _rule(config: ModelConfig, leaf: tuple[str, ...], arch: str, source: str) -> _Rule:
    """The rule of a params leaf (its full path: "blocks", ... for per-layer tensors)."""
    stacked = leaf[0] == "blocks"
    path, table = (leaf[1:], _BLOCK_TENSORS) if stacked else (leaf, _TOP_TENSORS)
    if path not in table:
        raise CheckpointError(f"{source}: no GGUF tensor is known for params leaf {'/'.join(leaf)}")
    name, split = table[path], None
    if arch in _FUSED_ARCHS and path[0] in _FUSED_QKV:
        name, split = f"attn_qkv.{'weight' if path[1] == 'w' else 'bias'}", _FUSED_QKV[path[0]]
    heads = None
    if arch in _PERMUTED_QK and path[0] in ("q", "k"):
        heads = config.n_heads if path[0] == "q" else config.n_kv_heads
    return _Rule(
        name=name,
        transpose=path[-1] == "w" or path == ("unembed",),
        minus_one=config.norm_plus_one and path[-1] == "scale",
        unpermute_heads=heads,
        split=split,
    )


def _unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave: file row (h, i, j) is HF row (h, j, i)."""
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _dequantize(tensor: Any, data: np.ndarray, source: str) -> np.ndarray:
    try:
        return np.asarray(gguf.quants.dequantize(data, tensor.tensor_type), dtype=np.float32)
    except (NotImplementedError, ValueError) as e:
        raise CheckpointError(
            f"{source}: cannot dequantize tensor {tensor.name} of type {tensor.tensor_type.name}: {e}"
        ) from e


def _dequantized_rows(
    tensor: Any, source: str, start: int = 0, stop: int | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """(row slice, float32 rows) of rows [start, stop) of a tensor in its numpy shape, a bounded
    chunk at a time; slices count from `start`."""
    data = tensor.data
    if data.ndim == 1:  # a vector (stored whole)
        yield slice(None), _dequantize(tensor, data, source)[start:stop]
        return
    stop = data.shape[0] if stop is None else stop
    for lo in range(start, stop, _ROWS_PER_CHUNK):
        hi = min(lo + _ROWS_PER_CHUNK, stop)
        yield slice(lo - start, hi - start), _dequantize(tensor, data[lo:hi], source)


def _read_into(tensor: Any, dest: np.ndarray, rule: _Rule, source: str) -> None:
    """Dequantize `tensor` and write it, converted by `rule`, into `dest` (params layout)."""
    rows = dest.shape[-1] if rule.transpose else dest.shape[0]
    span = (0, None) if rule.split is None else (rule.split * rows, (rule.split + 1) * rows)
    chunks: Iterator[tuple[slice, np.ndarray]] = _dequantized_rows(tensor, source, *span)
    if rule.unpermute_heads:
        full = np.concatenate([c for _, c in chunks])
        chunks = iter([(slice(None), _unpermute(full, rule.unpermute_heads))])
    for rows, chunk in chunks:
        if rule.minus_one:
            chunk = chunk - 1.0
        if rule.transpose:
            dest[:, rows] = chunk.T
        else:
            dest[rows] = chunk


def _leaves(shapes: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], tuple[int, ...]]]:
    for key, value in shapes.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


Plan = list[tuple[tuple[str, ...], tuple[int, ...], _Rule, list[tuple[str, int | None]]]]


def _plan(config: ModelConfig, arch: str, source: str) -> Plan:
    """Every params leaf with its full shape, its rule and the GGUF tensors (name, layer) that fill it."""
    plan = []
    for path, shape in _leaves(param_shapes(config)):
        rule = _rule(config, path, arch, source)
        stacked = path[0] == "blocks"
        names = [(f"blk.{i}.{rule.name}", i) for i in range(config.n_layers)] if stacked else [(rule.name, None)]
        plan.append((path, shape, rule, names))
    return plan


def _check_tensor(tensors: dict, name: str, want: tuple[int, ...], source: str) -> None:
    """Refuse, by GGUF name, a tensor that is missing or not of the shape the config implies."""
    if name not in tensors:
        raise CheckpointError(f"{source}: missing tensor {name} (expected shape {want})")
    got = _numpy_shape(tensors[name])
    if got != want:
        raise CheckpointError(f"{source}: tensor {name} has shape {got}, expected {want}")


def _file_shape(leaf_shape: tuple[int, ...], rule: _Rule) -> tuple[int, ...]:
    """The numpy shape a GGUF tensor must have to fill a (per-layer) params leaf of this shape."""
    shape = tuple(reversed(leaf_shape)) if rule.transpose else leaf_shape
    if rule.split is not None:  # one of the three row blocks of a fused tensor
        shape = (3 * shape[0],) + shape[1:]
    return shape


def _params(config: ModelConfig, tensors: dict, arch: str, source: str) -> dict:
    """All params as float32 numpy arrays; every GGUF tensor is checked before any is read."""
    plan = _plan(config, arch, source)
    used = set()
    for path, shape, rule, names in plan:
        per_layer = shape[1:] if path[0] == "blocks" else shape
        for name, _ in names:
            _check_tensor(tensors, name, _file_shape(per_layer, rule), source)
            used.add(name)
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise CheckpointError(f"{source}: tensors this reader does not understand: {unknown[:8]}")
    params: dict = {}
    for path, shape, rule, names in plan:
        out = np.empty(shape, np.float32)
        for name, layer in names:
            _read_into(tensors[name], out if layer is None else out[layer], rule, source)
        _set(params, path, out)
    return params


# --------------------------------------------------------------------------------------------
# Tokenizer


def _hf_tokenizer(path: str) -> Any:
    """A transformers fast tokenizer built from the file's own vocabulary and special tokens."""
    try:
        from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer
    except ImportError:  # older transformers: the public (slower) route
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
    from transformers import PreTrainedTokenizerFast

    architecture, vocabulary, tokenizer_config = get_gguf_tokenizer(path)
    backend, _ = convert_gguf_tokenizer(architecture, vocabulary)
    special = {k: v for k, v in tokenizer_config.items() if k.endswith("_token") and v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def _tokenizer(path: str, config: ModelConfig) -> Tokenizer:
    try:
        backend = _hf_tokenizer(path)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot build a tokenizer from its vocabulary ({type(e).__name__}: {e})") from e
    if len(backend) > config.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {len(backend)} tokens but the embedding only {config.vocab_size} rows"
        )
    check_vocabulary_round_trip(backend, path)
    return Tokenizer(backend=backend, bos_id=config.bos_token_id, eos_id=config.eos_token_id, add_bos=config.add_bos)


# --------------------------------------------------------------------------------------------


def load_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict, Tokenizer]:
    """Read a GGUF checkpoint: its config, its params (float32 numpy, layout of
    `jaxicl.models.config`) and a tokenizer built from its own vocabulary."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"no GGUF file at {path!r}")
    config, params = _read_model(path)
    check_param_shapes(config, params, path)
    return config, params, _tokenizer(path, config)


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The config of a GGUF checkpoint from its metadata alone (no tensor is read)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"no GGUF file at {path!r}")
    reader = _open(path)
    return _config(_Metadata(reader, path), {t.name: t for t in reader.tensors})


def _read_model(path: str) -> tuple[ModelConfig, dict]:
    """Config and params; the reader (~300 MB of parsed metadata for Gemma) dies on return,
    before the tokenizer is built."""
    reader = _open(path)
    meta = _Metadata(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    config = _config(meta, tensors)
    return config, _params(config, tensors, meta.get_str("general.architecture"), path)
