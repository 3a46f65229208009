"""How many query rows to score at once: sized to the device, and halved when it runs out of memory.

A CPU gains nothing from large batches (its caches favour small ones), so "auto" keeps 16 there.
An accelerator needs hundreds of rows to fill its matrix units: "auto" takes the largest power of
two up to MAX_ROWS whose estimated working set fits in a quarter of the device's free memory. The
estimate is deliberately rough; a batch that still does not fit is halved and retried
(`is_out_of_memory`), down to the smallest size allowed.
"""

from __future__ import annotations

import jax

from jaxicl.models.config import ModelConfig

CPU_ROWS = 16
MIN_ROWS = 16
MAX_ROWS = 512
BYTES_PER_VALUE = 4  # float32 activations


def row_bytes(config: ModelConfig, length: int, prefix_len: int, scored_positions: int) -> int:
    """A rough upper bound on one query row's working set in a scoring forward pass: the live
    layer's activations and attention logits over prefix + query, the MLP's hidden units, and the
    unembedding logits at the scored positions (layers run one at a time, so one layer counts)."""
    heads = config.n_heads
    attention = heads * length * (prefix_len + length)
    activations = length * (8 * config.d_model + 3 * config.d_ff + 2 * heads * config.head_dim)
    logits = 2 * scored_positions * config.vocab_size
    records = config.n_layers * (3 * config.d_model + heads * length)
    return BYTES_PER_VALUE * (2 * attention + activations + logits + records)


def auto_rows(config: ModelConfig, length: int, prefix_len: int, scored_positions: int, multiple: int = 1,
              device: jax.Device | None = None, models: int = 1) -> int:
    """Rows per batch for "auto": CPU_ROWS on a CPU; on an accelerator the largest power of two in
    [MIN_ROWS, MAX_ROWS] whose rows fit a quarter of the free memory, rounded up to `multiple`
    (the mesh's data axis). models: that many models score each row at once (`evaluate_many`)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        rows = CPU_ROWS
    else:
        stats = device.memory_stats() or {}
        free = stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)
        fit = free // 4 // max(1, models * row_bytes(config, length, prefix_len, scored_positions))
        rows = MIN_ROWS
        while rows * 2 <= min(fit, MAX_ROWS):
            rows *= 2
    return -(-rows // multiple) * multiple


def is_out_of_memory(error: BaseException) -> bool:
    """XLA's resource-exhausted error, which every backend raises for a failed device allocation."""
    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def halved(rows: int, multiple: int = 1) -> int | None:
    """The next smaller batch after an out-of-memory error (a multiple of `multiple`), or None."""
    smaller = (rows // 2) // multiple * multiple
    return smaller if smaller >= max(1, multiple) and smaller < rows else None
