"""Resumable finetuning: a run's result saved with orbax under a hash of everything it depends on.

An interrupted experiment resumes without retraining: `finetune_cached` restores a saved run, and
`finetune_many_cached` trains together only the sets that have none.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import jax
import numpy as np

from jaxicl.engine import batch_size
from jaxicl.engine import transforms as T
from jaxicl.engine.finetune.demos import Ids
from jaxicl.engine.finetune.many import finetune_many, is_per_set
from jaxicl.engine.finetune.options import FinetuneOptions, default_mask
from jaxicl.engine.finetune.result import FinetuneResult
from jaxicl.engine.finetune.single import finetune
from jaxicl.errors import TrainingError
from jaxicl.io import checkpoint
from jaxicl.models.config import ModelConfig
from jaxicl.runtime import distributed


def run_key(
    config: ModelConfig,
    sequences: Sequence[Ids],
    options: FinetuneOptions,
    mask: T.ParamMask,
    base: str,
    label_starts: Sequence[int] | None = None,
) -> str:
    """Hash of everything a finetuning result depends on; `base` identifies the starting params."""
    return checkpoint.fingerprint(
        {
            "model": config.fingerprint_fields(),
            # `stepped` only chooses the default mask, which is hashed itself (and saved keys stay valid)
            "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "stepped"},
            "mask": [list(e) for e in mask.entries],
            "sequences": [list(map(int, s)) for s in sequences],
            "label_starts": None if label_starts is None else list(map(int, label_starts)),
            "base": base,
        }
    )


def finetune_cached(
    directory,
    params: dict,
    config: ModelConfig,
    sequences: Sequence[Ids],
    options: FinetuneOptions,
    *,
    label_starts: Sequence[int] | None = None,
    mask: T.ParamMask | None = None,
    base: str | None = None,
    demo_names: Sequence | None = None,
) -> tuple[FinetuneResult, bool]:
    """(result, resumed): the saved result of this exact run if `directory` holds one, else
    finetune and save (only the stepped tensors and the records; the rest is `params`).

    base: identity of the starting params (e.g. "gemma3-270m/trained"); default: a sha256 of
    every tensor (about a second per GB). A diverged run raises and writes nothing.

    Several processes (jax.distributed): the checkpoint is process 0's. If it has one, its tensors
    and records are broadcast, so every process goes on from the same params; if not, every process
    finetunes (same data, same deterministic steps: simpler than one trainer plus a broadcast, and
    each needs the params for its share of the evaluation) and process 0 alone saves."""
    mask = mask or default_mask(config, options)
    base = base if base is not None else checkpoint.array_fingerprint(params)
    key = run_key(config, sequences, options, mask, base, label_starts)
    stepped, rest = T.split_params(params, mask.paths)
    expect = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stepped)}
    found = distributed.on_host0(checkpoint.restore, directory, key, expect=expect)
    if found is not None:
        tree, meta = found
        saved = jax.device_put(tree["params"])
        records = {k: np.asarray(v) for k, v in tree["records"].items()}
        return FinetuneResult(params=T.merge_params(saved, rest), seconds=meta["seconds"], **records), True
    result = finetune(
        params, config, sequences, options, label_starts=label_starts, mask=mask, demo_names=demo_names
    )
    _save(directory, key, result, mask)
    return result, False


def _save(directory, key: str, result: FinetuneResult, mask: T.ParamMask) -> None:
    """What finetune_cached keeps of a result (the stepped tensors and the records), process 0 only."""
    tree = {"params": T.split_params(result.params, mask.paths)[0], "records": result.records()}
    if distributed.is_writer():
        checkpoint.save(directory, tree, key, meta={"seconds": result.seconds, "steps": len(result.losses)})


def finetune_many_cached(
    directories: Sequence,
    params: dict | Sequence[dict],
    config: ModelConfig,
    sequence_sets: Sequence[Sequence[Ids]],
    options: FinetuneOptions,
    *,
    bases: Sequence[str],
    label_starts_sets: Sequence[Sequence[int]] | None = None,
    mask: T.ParamMask | None = None,
    max_parallel: int | None = None,
    lrs: Sequence[float] | None = None,
    scan: bool = False,
) -> list[bool]:
    """Finetune together (`finetune_many`) the sets whose directory holds no saved result of that
    exact run, and save each as `finetune_cached` would, so that a later `finetune_cached` of the
    same run (same `base`, same params, `options` with that set's rate) restores it. Returns, per
    set, whether it was computed here.

    params, lrs: as in `finetune_many` (one tree or one per set; one rate per set, part of each
    set's key). Out of device memory, the runs are retried half as many at a time (warning with
    the size), down to one; a diverged set raises (naming the set) before anything of this batch
    is saved."""
    mask = mask or default_mask(config, options)
    starts = label_starts_sets or [None] * len(sequence_sets)
    rates = lrs if lrs is not None else [options.lr] * len(sequence_sets)
    set_options = [dataclasses.replace(options, lr=r) for r in rates]
    keys = [
        run_key(config, seqs, opts, mask, base, ls)
        for seqs, ls, base, opts in zip(sequence_sets, starts, bases, set_options, strict=True)
    ]
    have = distributed.on_host0(lambda: [checkpoint.has(d, k) for d, k in zip(directories, keys, strict=True)])
    todo = [i for i, found in enumerate(have) if not found]
    if todo:
        pick = lambda items: None if items is None else [items[i] for i in todo]  # noqa: E731
        chunk = min(max_parallel or len(todo), len(todo))
        while True:
            try:
                results = finetune_many(
                    params if not is_per_set(params) else pick(params), config, pick(sequence_sets), options,
                    mask=mask, max_parallel=chunk, label_starts_sets=pick(label_starts_sets),
                    lrs=pick(rates), scan=scan,
                )  # fmt: skip
                break
            except jax.errors.JaxRuntimeError as e:
                if not batch_size.is_out_of_memory(e):
                    raise
                smaller = batch_size.halved(chunk)
                longest = max(len(seq) for i in todo for seq in sequence_sets[i])
                if smaller is None:
                    raise TrainingError(
                        f"out of device memory finetuning one run at a time ({len(todo)} runs of up to "
                        f"{max(len(sequence_sets[i]) for i in todo)} demonstrations, the longest {longest} tokens)"
                    ) from e
                warnings.warn(f"out of device memory finetuning {chunk} runs at once; retrying {smaller} at a time")
                chunk = smaller
        for i, result in zip(todo, results):
            _save(directories[i], keys[i], result, mask)
    return [not found for found in have]
