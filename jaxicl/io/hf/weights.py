"""Weights: where each of our params lives in a Hugging Face checkpoint, and reading it from safetensors.

A weight map takes our param path ("blocks/q/w") to the Hugging Face tensor it comes from; the
tensors are read from one `model.safetensors` or the shards `model.safetensors.index.json` lists.
A checkpoint tensor no map covers is refused, never skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Callable

import numpy as np

from jaxicl.errors import CheckpointError
from jaxicl.io.hf.layout import INDEX_FILE, SINGLE_FILE, read_json
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import param_shapes

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
        weight_map = read_json(index).get("weight_map")
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
