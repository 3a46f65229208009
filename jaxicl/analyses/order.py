"""Order sensitivity (Shen et al., ICML 2024): how much do predictions move when the same
demonstrations come in another order, for ICL and for GD/LCGD finetuning on that order?

For P orders of a run's k_icl demonstrations (the first is the run's own order, the others seeded
permutations), each method's predicted class distribution (softmax over the classes' summed
log-probabilities) is computed per eval example; its sensitivity is the std across the P orders
(ddof=1), averaged over classes, then over examples. The report gives it per task and method, and
the ratio ICL / GD.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jaxicl.data.prompts import PromptSet
from jaxicl.errors import InputError, JaxiclError

ORDER_SEED = 20240722  # mixed with the run's (seed, perm)


def check_permutations(count: int) -> None:
    """0 turns the analysis off; a std across orders needs at least two."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0 or count == 1:
        raise InputError(f"order sensitivity needs P >= 2 permutations (0: off), got {count!r}")


def permutations(n: int, count: int, seed: int, perm: int) -> list[tuple[int, ...]]:
    """`count` distinct orders of n demonstrations: the identity first, then seeded permutations."""
    check_permutations(count)
    if count > math.factorial(n):
        raise InputError(f"{n} demonstrations have only {math.factorial(n)} orders; {count} were asked for")
    rng = np.random.default_rng([ORDER_SEED, seed, perm])
    orders = [tuple(range(n))]
    while len(orders) < count:
        order = tuple(int(i) for i in rng.permutation(n))
        if order not in orders:
            orders.append(order)
    return orders


def reorder(prompts: PromptSet, order: Sequence[int]) -> PromptSet:
    """The same run with its k_icl demonstrations in another order, in the ICL prefix and in the
    finetuning sequence alike (inputs, labels, queries and candidates unchanged)."""
    if sorted(order) != list(range(prompts.k_icl)):
        raise JaxiclError(f"an order must be a permutation of range({prompts.k_icl}), got {list(order)}")
    pick = lambda xs: tuple(xs[i] for i in order)  # noqa: E731
    demos = pick(prompts.demo_ids)
    return dataclasses.replace(
        prompts,
        demo_indices=pick(prompts.demo_indices),
        demo_labels=pick(prompts.demo_labels),
        demo_ids=demos,
        prefix_ids=tuple(prompts.zs_prefix_ids) + tuple(t for d in demos for t in d),
        ft_sequences=pick(prompts.ft_sequences),
        ft_label_starts=pick(prompts.ft_label_starts),
    )


def class_distribution(scores: np.ndarray) -> np.ndarray:
    """[n, C] summed log-probabilities → [n, C] predicted class distribution (softmax over classes)."""
    scores = np.asarray(scores, np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=1, keepdims=True)


def order_std(distributions: np.ndarray) -> np.ndarray:
    """[P, n, C] distributions under P orders → [n]: std across orders (ddof=1), mean over classes."""
    d = np.asarray(distributions, np.float64)
    if d.ndim != 3 or d.shape[0] < 2:
        raise JaxiclError(f"order_std needs [P >= 2, n, C] distributions, got shape {d.shape}")
    return d.std(axis=0, ddof=1).mean(axis=1)


def summarize(scores: dict[str, Sequence[np.ndarray]], gold: Sequence[int]) -> dict:
    """method → its P score arrays [n, C] → the order cell's numbers: per-example std, its mean,
    the accuracy under each order, and the ratio of ICL's mean std to each finetuning method's."""
    out = {}
    for method, per_order in scores.items():
        dists = np.stack([class_distribution(s) for s in per_order])
        std = order_std(dists)
        out[method] = {
            "mean_std": float(std.mean()),
            "per_example_std": [float(v) for v in std],
            "accuracy": [float(np.mean(np.argmax(s, axis=1) == np.asarray(gold))) for s in per_order],
        }
    ratios = {f"icl/{m}": (out["icl"]["mean_std"] / v["mean_std"] if v["mean_std"] > 0 else None)
              for m, v in out.items() if m != "icl"}  # fmt: skip
    return {"methods": out, "ratio": ratios}
