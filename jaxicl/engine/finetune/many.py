"""Several finetuning runs at once: the steps of many demonstration sets under `jax.vmap`.

Step i of every set runs at once, padded to the longest among them; a set with fewer
demonstrations idles (its step is computed and discarded). With `mesh=` the sets are split over
the mesh's "data" axis.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxicl.engine import transforms as T
from jaxicl.engine.finetune.demos import Ids, check_demos, compute_copy, padded_length, step_batch
from jaxicl.engine.finetune.options import FinetuneOptions, StepSpec, default_mask, optimizer
from jaxicl.engine.finetune.result import FinetuneResult, fetch_stats, first_divergence, make_result, stack_trees
from jaxicl.engine.finetune.step import train_run_many, train_step_many
from jaxicl.errors import DivergenceError, TrainingError
from jaxicl.models.config import ModelConfig
from jaxicl.runtime import sharding, stage_clock


def finetune_many(
    params: dict | Sequence[dict],
    config: ModelConfig,
    sequence_sets: Sequence[Sequence[Ids]],
    options: FinetuneOptions,
    *,
    label_starts_sets: Sequence[Sequence[int]] | None = None,
    mask: T.ParamMask | None = None,
    max_parallel: int | None = None,
    mesh: Mesh | None = None,
    lrs: Sequence[float] | None = None,
    scan: bool = False,
    on_divergence: str = "raise",
) -> list[FinetuneResult]:
    """`finetune` of several demonstration sets (e.g. a task's seeds), their steps run together
    under `jax.vmap` (`max_parallel` sets at a time, to bound memory).

    params: one tree every set starts from, or one tree per set (e.g. the untrained variants'
    re-initialisations, stacked and vmapped: same shapes required). lrs: one learning rate per
    set (a learning-rate sweep as one more batched axis); default `options.lr` for all.
    scan: pad every step to the run's longest bucket and run all steps as one `lax.scan`, so a
    run is one dispatch (accelerators: dispatch costs more than the padding); else one dispatch
    per step, each padded to its own bucket (a 2-core CPU: padding costs more).

    Step i of every set runs at once, each padded to the longest bucket among them; a set with
    fewer demonstrations idles (its step is computed and discarded). Results equal one-by-one
    runs up to float rounding of the padded/batched kernels (tests/test_finetune.py).

    mesh: split the sets over its "data" axis (the shared params placed by `sharding.shard_params`);
    the number of sets is padded up to a multiple of that axis's size with sets that always idle,
    so a `max_parallel` that is such a multiple wastes nothing.

    on_divergence: "raise" (DivergenceError naming the first diverged set) or "mark" (every set's
    result is returned; a diverged one says why in `diverged`: a learning-rate sweep goes on)."""
    if on_divergence not in ("raise", "mark"):
        raise TrainingError(f"on_divergence must be 'raise' or 'mark', got {on_divergence!r}")
    mask = mask or default_mask(config, options)
    n_sets = len(sequence_sets)
    starts = list(params) if is_per_set(params) else None
    rates = [options.lr] * n_sets if lrs is None else [dataclasses.replace(options, lr=r).lr for r in lrs]
    for what, got in (("params trees", starts), ("learning rates", rates), ("label start lists", label_starts_sets)):
        if got is not None and len(got) != n_sets:
            raise TrainingError(f"{len(got)} {what} for {n_sets} demonstration sets")
    chunk = max_parallel or n_sets
    if chunk < n_sets:
        out = []
        for lo in range(0, n_sets, chunk):
            part = slice(lo, lo + chunk)
            out += finetune_many(
                params if starts is None else starts[part], config, sequence_sets[part], options,
                label_starts_sets=None if label_starts_sets is None else label_starts_sets[part],
                mask=mask, mesh=mesh, lrs=rates[part], scan=scan, on_divergence=on_divergence,
            )  # fmt: skip
        return out
    sets = [
        check_demos(config, seqs, None if label_starts_sets is None else label_starts_sets[s], options)
        for s, seqs in enumerate(sequence_sets)
    ]
    if mesh is not None:
        sharding.check_mesh(mesh)
    idle = -n_sets % sharding.axis_size(mesh, sharding.DATA) if mesh is not None else 0
    sets += [[]] * idle  # idle sets: never active
    rates += [rates[0]] * idle
    placed = _place(params if starts is None else starts + starts[:1] * idle, len(sets), rates, options, mask, mesh)
    active = np.array([[i < len(seqs) for seqs in sets] for i in range(max(map(len, sets)))])  # [n_steps, S]
    batches = _step_batches(config, sets, label_starts_sets, options, active, scan)
    statics = dict(config=config, spec=StepSpec.of(options), mask=mask, frozen_per_set=starts is not None)
    start = time.perf_counter()
    trainable, stats = _run_steps(placed, batches, active, statics, mesh, scan)
    per_set = [{k: v[: len(sets[s]), s] for k, v in stats.items()} for s in range(n_sets)]  # its active steps
    why = _divergences(per_set, on_divergence)
    seconds = time.perf_counter() - start
    trained = _unstack(trainable)
    frozens = placed.frozens
    return [make_result(T.merge_params(trained[s], frozens[s]), per_set[s], seconds, why[s]) for s in range(n_sets)]


@dataclasses.dataclass(frozen=True)
class _Placed:
    """The sets' stacked trainable params and optimizer state, the frozen params in the compute
    dtype (shared, or stacked per set), each set's frozen params (to merge back) and the rates."""

    trainable: dict
    opt_state: object
    frozen_compute: dict
    frozens: list
    lr: jax.Array


def _place(params: dict | list[dict], n_sets: int, rates, options, mask: T.ParamMask, mesh: Mesh | None) -> _Placed:
    """Split the params into stepped and frozen parts, stack the stepped parts over the sets and
    place everything on the devices (over the mesh's "data" axis when one is given)."""
    spec = StepSpec.of(options)
    per_set = is_per_set(params)
    if not per_set:
        one, frozen = T.split_params(params, mask.paths)
        frozens = [frozen] * n_sets
        trainable = _broadcast_sets(one, n_sets)
        frozen_c = compute_copy(frozen, options)
    else:
        parts = [T.split_params(p, mask.paths) for p in params]
        _check_same_shapes([p for p, _ in parts], [f for _, f in parts])
        frozens = [f for _, f in parts]
        trainable = stack_trees([p for p, _ in parts])
        frozen_c = compute_copy(stack_trees(frozens), options)
        one = parts[0][0]
    opt_state = _broadcast_sets(optimizer(spec, options.lr).init(one), n_sets)
    lr = jax.device_put(np.asarray(rates, np.float32))
    if mesh is not None:
        frozen_c = sharding.shard_params(frozen_c, mesh, sets_axis=per_set)
        trainable, opt_state = sharding.shard_params((trainable, opt_state), mesh, sets_axis=True)
        lr = sharding.shard_batch(lr, mesh)
    return _Placed(trainable, opt_state, frozen_c, frozens, lr)


def _step_batches(config: ModelConfig, sets, label_starts_sets, options, active: np.ndarray, scan: bool) -> list:
    """Host batches [S, 1, T] of every step; each padded to its longest set, or all to the run's
    longest step when the run is one scan."""
    n_steps = len(active)
    lengths = [
        max(padded_length(config, len(seqs[i]), options) for seqs in sets if i < len(seqs)) for i in range(n_steps)
    ]
    if scan:
        lengths = [max(lengths)] * n_steps
    return [step_batch(sets, label_starts_sets, options, i, lengths[i], active[i]) for i in range(n_steps)]


def _run_steps(placed: _Placed, batches: list, active: np.ndarray, statics: dict, mesh, scan: bool):
    """(trained params [S, ...], stats [n_steps, S, ...]): every step dispatched without waiting,
    as one scan or one dispatch per step, and the stats fetched once."""
    trainable, opt_state, frozen_c, lr = placed.trainable, placed.opt_state, placed.frozen_compute, placed.lr
    with stage_clock.waiting():  # dispatching the steps and waiting for their stats and params
        if scan:
            batch = jax.tree.map(lambda *xs: np.stack(xs), *batches)  # [n_steps, S, 1, T]
            batch, on = jax.device_put((batch, active))
            if mesh is not None:
                batch, on = sharding.shard_batch((batch, on), mesh, axis=1)
            trainable, opt_state, stacked = train_run_many(trainable, opt_state, frozen_c, batch, lr, on, **statics)
            stats = fetch_stats(stacked)
        else:
            steps = []
            for i in range(len(batches)):
                batch, on = jax.device_put((batches[i], active[i]))
                if mesh is not None:
                    batch, on = sharding.shard_batch((batch, on), mesh)
                trainable, opt_state, step_stats = train_step_many(
                    trainable, opt_state, frozen_c, batch, lr, on, **statics
                )
                steps.append(step_stats)
            stats = fetch_stats(steps)
        jax.block_until_ready(trainable)
    return trainable, stats


def _divergences(per_set: list[dict], on_divergence: str) -> list[str | None]:
    """Why each set diverged (None: it did not); raises on the first one under "raise"."""
    why: list[str | None] = [None] * len(per_set)
    for s, set_stats in enumerate(per_set):
        diverged = first_divergence(set_stats)
        if diverged:
            step, reason = diverged
            why[s] = f"finetuning diverged in set {s} at step {step} on demonstration {step}: {reason}"
            if on_divergence == "raise":
                raise DivergenceError(why[s])
    return why


@jax.jit
def _unstack(tree) -> tuple:
    """The sets of a stacked tree ([S, ...] leaves) as S trees: one program, not one eager slice
    per set and leaf."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return tuple(jax.tree.map(lambda x, s=s: x[s], tree) for s in range(n))


def is_per_set(params) -> bool:
    """A sequence of param trees (one per set) rather than one tree (a dict)."""
    return not isinstance(params, dict)


def _check_same_shapes(*groups: Sequence[dict]) -> None:
    """Per-set starting params must stack: the same tree structure and shapes in every set."""
    for trees in groups:
        first = jax.tree.map(np.shape, trees[0])
        for s, tree in enumerate(trees[1:], 1):
            if jax.tree.map(np.shape, tree) != first:
                raise TrainingError(f"the params of set {s} differ in structure or shapes from those of set 0")


@functools.partial(jax.jit, static_argnums=1)
def _broadcast_sets(tree, n: int):
    """`n` stacked copies of every leaf ([n, ...]): one program, not one eager op per leaf."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)
