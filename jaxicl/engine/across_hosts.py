"""Scoring across the hosts of a multi-host run: each host scores its contiguous share of the
queries (on its own devices, optionally split over a local `sharding.make_mesh()`), and every host
gets the full `EvalResult` in the original order.

Hosts never synchronise per batch, only once at the end, so uneven shares (n % hosts) cost no
lock-step padding. On one process this is exactly `scoring.evaluate`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxicl.engine import scoring
from jaxicl.engine.scoring import EvalOptions, EvalResult
from jaxicl.models.config import ModelConfig
from jaxicl.runtime.distributed import gather_to_host0, process_shard


def merge_results(parts: Sequence[EvalResult]) -> EvalResult:
    """One EvalResult from per-host results of consecutive query blocks, in the given order.

    Attention maps are zero-padded on the right to the widest part's width, which is the width a
    single `evaluate` of all the queries gives (the longest query's map)."""
    if not parts:
        raise ValueError("no results to merge")
    records = {}
    for name in parts[0].records:
        arrays = [p.records[name] for p in parts]
        width = max(a.shape[-1] for a in arrays)
        pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])])  # noqa: E731
        records[name] = np.concatenate([pad(a) for a in arrays])
    scores = np.concatenate([p.scores for p in parts])
    return EvalResult(
        scores=scores,
        predictions=np.argmax(scores, axis=1),
        records=records,
        map_lengths=np.concatenate([p.map_lengths for p in parts]),
        prefix_len=parts[0].prefix_len,
    )


def evaluate_across_hosts(
    params: dict,
    config: ModelConfig,
    prefix: Sequence[int],
    queries: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    options: EvalOptions | None = None,
    mesh: Mesh | None = None,
) -> EvalResult:
    """`scoring.evaluate` of this process's `process_shard` of the queries, gathered on every process.

    The result has the queries in their original order; on one process it is exactly what
    `evaluate` returns. Every process must call it with the same arguments (the same full query
    list): all of them check the whole input first, so a bad query raises everywhere instead of
    leaving the others waiting in the gather. mesh: over this process's devices only
    (`sharding.make_mesh()`), because the hosts' batches are not in lock-step."""
    options = options or scoring.EvalOptions()
    if jax.process_count() == 1:
        return scoring.evaluate(params, config, prefix, queries, candidates, options, mesh)
    scoring.check_inputs(config, prefix, queries, candidates, options, mesh)  # mesh: this host's only
    mine = process_shard(queries)
    local = scoring.evaluate(params, config, prefix, mine, candidates, options, mesh) if mine else None
    parts = gather_to_host0([local])
    return merge_results([p for p in parts if p is not None])
