"""One finetuning run: one SGD step per demonstration, in the order ICL saw them.

A non-finite loss or gradient stops the run with `DivergenceError`; nothing is returned or saved.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from jaxicl.data.prompts import PromptSet
from jaxicl.engine import transforms as T
from jaxicl.engine.finetune.demos import Ids, check_demos, compute_copy, demo_arrays, padded_length, to_device_batch
from jaxicl.engine.finetune.options import FinetuneOptions, StepSpec, default_mask, optimizer
from jaxicl.engine.finetune.result import FinetuneResult, fetch_stats, first_divergence, make_result
from jaxicl.engine.finetune.step import train_step
from jaxicl.engine.scoring import EvalOptions, EvalResult, evaluate
from jaxicl.errors import DivergenceError
from jaxicl.models.config import ModelConfig
from jaxicl.runtime import stage_clock


def _name(step: int, demo_names: Sequence | None) -> str:
    return f"demonstration {step}" + (f" ({demo_names[step]})" if demo_names is not None else "")


def finetune(
    params: dict,
    config: ModelConfig,
    sequences: Sequence[Ids],
    options: FinetuneOptions,
    *,
    label_starts: Sequence[int] | None = None,
    mask: T.ParamMask | None = None,
    demo_names: Sequence | None = None,
) -> FinetuneResult:
    """Finetune on `sequences` ([BOS] + input + label ids), one step per demonstration, in order.

    mask: what is stepped (default: keys/values of every layer). demo_names: how errors name a
    demonstration (e.g. its dataset index). Raises TrainingError on a non-finite loss/gradient."""
    mask = mask or default_mask(config, options)
    seqs = check_demos(config, sequences, label_starts, options)
    spec = StepSpec.of(options)
    trainable, frozen = T.split_params(params, mask.paths)
    frozen_c = compute_copy(frozen, options)
    opt_state = optimizer(spec, options.lr).init(trainable)
    lr = np.float32(options.lr)  # a host scalar: jnp.float32 would compile a conversion
    steps = []
    start = time.perf_counter()
    with stage_clock.waiting():  # dispatching the steps and waiting for their stats and params
        for i, seq in enumerate(seqs):
            ls = None if label_starts is None else label_starts[i]
            batch = to_device_batch([demo_arrays(seq, ls, options.loss_tokens, padded_length(config, len(seq), options))])
            trainable, opt_state, stats = train_step(
                trainable, opt_state, frozen_c, batch, lr, True, config=config, spec=spec, mask=mask
            )
            steps.append(stats)
        stats = fetch_stats(steps)
        jax.block_until_ready(trainable)
    diverged = first_divergence(stats)
    if diverged:
        step, why = diverged
        raise DivergenceError(f"finetuning diverged at step {step} on {_name(step, demo_names)}: {why}")
    return make_result(T.merge_params(trainable, frozen), stats, time.perf_counter() - start)


def finetune_prompts(
    params: dict, config: ModelConfig, prompts: PromptSet, options: FinetuneOptions, *, mask: T.ParamMask | None = None
) -> FinetuneResult:
    """`finetune` on the demonstrations ICL saw (`prompts.ft_sequences`), in ICL order."""
    names = [f"dataset index {i}" for i in prompts.demo_indices]
    return finetune(
        params, config, prompts.ft_sequences, options,
        label_starts=prompts.ft_label_starts, mask=mask, demo_names=names,
    )  # fmt: skip


def evaluate_finetuned(
    params_ft: dict, config: ModelConfig, prompts: PromptSet, options: EvalOptions | None = None
) -> EvalResult:
    """Zero-shot evaluation of finetuned params ("ftzs"): the ICL evaluator with the zero-shot
    prefix and the same queries, candidates and probe records as the zs and ICL runs."""
    return evaluate(
        params_ft, config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids,
        options or EvalOptions(),
    )  # fmt: skip
