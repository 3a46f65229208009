"""Demonstrations as padded arrays: ids, valid, next-token targets and loss weights.

Lengths are padded up to a multiple of `FinetuneOptions.length_multiple`, so a run compiles a
handful of shapes instead of one per demonstration length.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.engine.finetune.objective import DemoBatch
from jaxicl.engine.finetune.options import FinetuneOptions
from jaxicl.errors import TrainingError
from jaxicl.models.config import ModelConfig
from jaxicl.models.inputs import bucket, check_ids

Ids = Sequence[int]


def demo_arrays(
    sequence: Ids, label_start: int | None, loss_tokens: str, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, valid, targets, weights), each [length], of one demonstration: targets[t] = ids[t+1];
    weights 1 on every target after BOS ("all") or on the label tokens only ("label")."""
    n = len(sequence)
    ids = np.zeros(length, np.int32)
    valid = np.zeros(length, bool)
    targets = np.zeros(length, np.int32)
    weights = np.zeros(length, np.float32)
    ids[:n] = sequence
    valid[:n] = True
    targets[: n - 1] = sequence[1:]
    first = 0 if loss_tokens == "all" else label_start - 1
    weights[first : n - 1] = 1.0
    return ids, valid, targets, weights


def demo_batch(
    sequence: Ids, *, label_start: int | None = None, loss_tokens: str = "all", length_multiple: int = 16
) -> DemoBatch:
    """One demonstration as a [1, T] batch, T its length rounded up to `length_multiple`."""
    return to_device_batch([demo_arrays(sequence, label_start, loss_tokens, bucket(len(sequence), length_multiple))])


def check_demos(config: ModelConfig, sequences: Sequence[Ids], label_starts, options) -> list[tuple[int, ...]]:
    if not len(sequences):
        raise TrainingError("no demonstrations to finetune on")
    seqs = []
    for i, seq in enumerate(sequences):
        check_ids(config, seq, what=f"demonstration {i}")
        if len(seq) < 2:
            raise TrainingError(f"demonstration {i} has {len(seq)} token(s); a loss needs at least 2")
        seqs.append(tuple(int(t) for t in seq))
    if options.loss_tokens == "label":
        if label_starts is None or len(label_starts) != len(seqs):
            raise TrainingError("loss_tokens='label' needs one label start per demonstration")
        for i, (seq, start) in enumerate(zip(seqs, label_starts)):
            if not 1 <= start < len(seq):
                raise TrainingError(f"demonstration {i}: label start {start} outside [1, {len(seq)})")
    return seqs


def padded_length(config: ModelConfig, n: int, options: FinetuneOptions) -> int:
    return min(bucket(n, options.length_multiple), max(config.max_positions, n))


def compute_copy(frozen: dict, options: FinetuneOptions) -> dict:
    """The never-stepped params in the compute dtype, cast once instead of at every step."""
    dtype = jnp.dtype(options.compute_dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)


def to_device_batch(arrays: Sequence[tuple[np.ndarray, ...]]) -> DemoBatch:
    """Stack per-demonstration arrays along a new leading axis ([B, T])."""
    return DemoBatch(*(jax.device_put(np.stack(a)) for a in zip(*arrays)))


def step_batch(sets, label_starts_sets, options: FinetuneOptions, i: int, length: int, active) -> DemoBatch:
    """Host arrays [S, 1, length] of step i of every set; an idle set repeats a busy one's
    demonstration (computed and discarded)."""
    busy = int(np.argmax(active))
    arrays = []
    for s in range(len(sets)):
        src = s if active[s] else busy
        ls = None if label_starts_sets is None else label_starts_sets[src][i]
        arrays.append(demo_arrays(sets[src][i], ls, options.loss_tokens, length))
    return DemoBatch(*(np.stack(a)[:, None] for a in zip(*arrays)))
