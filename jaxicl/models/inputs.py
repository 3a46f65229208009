"""Token ids entering the model: checked against the vocabulary and the context window, and
padded to a few lengths so a session compiles a handful of shapes."""

from __future__ import annotations

import numpy as np

from jaxicl.errors import InputError
from jaxicl.models.config import ModelConfig


def check_ids(config: ModelConfig, ids, what: str = "input") -> np.ndarray:
    """Token ids as int32, refusing ids outside the vocabulary and inputs past the context window."""
    arr = np.asarray(ids)
    if arr.size == 0:
        raise InputError(f"{what}: no token ids")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what}: token ids must be integers, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= config.vocab_size)]
    if bad.size:
        raise InputError(f"{what}: token id {int(bad[0])} is outside the vocabulary [0, {config.vocab_size})")
    if arr.shape[-1] > config.max_positions:
        raise InputError(
            f"{what}: {arr.shape[-1]} tokens exceed the model's context window of {config.max_positions}"
        )
    return arr.astype(np.int32)


def bucket(length: int, multiple: int = 64) -> int:
    """Pad lengths up to a multiple so a session compiles a handful of shapes, not one per prompt."""
    return -(-length // multiple) * multiple
