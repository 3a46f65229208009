"""The stable entry points: `load` a model, get next-token `logits` for token ids."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.errors import CheckpointError
from jaxicl.io import registry
from jaxicl.lm import LM
from jaxicl.models.config import ModelConfig
from jaxicl.models.inputs import bucket, check_ids  # noqa: F401  (also importable from here)
from jaxicl.models.transformer import forward


def load(name_or_path: str | os.PathLike = registry.DEFAULT_MODEL, dtype=jnp.float32) -> LM:
    """Load a registry name ("gemma3-270m", "smollm2-135m"), a .gguf file, an HF directory or
    "hf:org/name[@revision]"."""
    config, params, tokenizer = _reader(name_or_path, "load")()
    params = jax.tree.map(lambda x: _on_device(x, dtype), params)
    return LM(config=config, params=params, tokenizer=tokenizer, source=str(name_or_path))


def read_config(name_or_path: str | os.PathLike = registry.DEFAULT_MODEL) -> ModelConfig:
    """A model's config without its weights (a GGUF file's metadata, a directory's config.json):
    enough to check a command's arguments against the model before loading it."""
    return _reader(name_or_path, "config")()


def _reader(name_or_path: str | os.PathLike, what: str):
    """The function that reads the checkpoint's config ("config") or all of it ("load")."""
    path = registry.resolve(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        from jaxicl.io import gguf

        return functools.partial(gguf.read_config if what == "config" else gguf.load_gguf, path)
    if path.is_dir() and (path / "config.json").exists():
        from jaxicl.io import hf

        return functools.partial(hf.read_hf_config if what == "config" else hf.load_hf_dir, path)
    raise CheckpointError(f"{path}: not a .gguf file nor a directory with config.json")


def _on_device(x, dtype) -> jax.Array:
    """A loaded tensor on the default device in `dtype` (`jax.device_put` copies; `jnp.asarray`
    would compile a small program per shape)."""
    x = jax.device_put(x)
    return x if x.dtype == jnp.dtype(dtype) else x.astype(dtype)


@functools.partial(jax.jit, static_argnums=(1,))
def _all_logits(params: dict, config: ModelConfig, ids: jax.Array, valid: jax.Array) -> jax.Array:
    return forward(params, config, ids, valid=valid).logits


def logits(lm: LM, ids, add_bos: bool | None = None) -> np.ndarray:
    """Next-token logits [len(ids), vocab] (float32 numpy) at every position of `ids`.

    `add_bos=None` follows the family: if it expects a BOS (Gemma does) and `ids` does not start
    with one, a BOS is prepended and its own row dropped, so row i is always the prediction after
    ids[i]. Pass add_bos=False to run the ids exactly as given.
    """
    cfg = lm.config
    seq = [int(i) for i in np.asarray(ids).reshape(-1)]
    if add_bos is None:
        add_bos = cfg.add_bos and cfg.bos_token_id is not None and (not seq or seq[0] != cfg.bos_token_id)
    full = ([cfg.bos_token_id] if add_bos else []) + seq
    arr = check_ids(cfg, full)
    n = len(full)
    padded = min(bucket(n), max(cfg.max_positions, n))
    ids_pad = np.zeros((1, padded), np.int32)
    ids_pad[0, :n] = arr
    valid = np.arange(padded)[None] < n
    out = _all_logits(lm.params, cfg, *jax.device_put((ids_pad, valid)))
    return np.asarray(out[0, int(add_bos) : n], np.float32)
