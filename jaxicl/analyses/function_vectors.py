"""Function vectors (Todd et al. 2024): a few attention heads carry the task; found by their causal
indirect effect, the sum of their mean outputs added to a zero-shot run triggers it. And, beyond
the paper: does GD (or LCGD) move the heads that carry it?

At the prediction position (task_vectors.py says why):
- z̄_lh: the mean output of query head h of block l (before the output projection) over ICL prompts.
- CIE_lh: on ICL prompts whose demonstrations' labels are shuffled, z̄_lh replaces that head's
  output; the mean rise of the gold label's probability (the full-vocabulary probability of its
  tokens). The whole L x H grid runs as vmapped batches of patches (`cie_grid`); `cie_loop`, one
  head at a time, is the reference it is tested against and the benchmark's baseline.
- FV: the sum over the top heads by CIE of z̄_lh through their slice of the output projection
  (bias left out). On families with a norm after attention (Gemma 3's post-norms) this is the
  heads' contribution before that norm, as the output projection sees it.
- GD: per query head, the size of the finetuning's update to the key/value projections of its KV
  head (under GQA/MQA the query heads of a group share it) and the change of the head's output at
  the prediction position; each against CIE by Spearman correlation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxicl.engine import patching
from jaxicl.engine.scoring import EvalOptions, EvalResult, evaluate, evaluate_patched
from jaxicl.errors import InputError
from jaxicl.models.config import ModelConfig

TOP_HEADS = 10


def mean_head_outputs(icl: EvalResult) -> np.ndarray:
    """z̄ [L, H, hd]: each query head's mean output at the prediction position over ICL prompts."""
    return np.asarray(icl.records["z"], np.float64).mean(axis=0).astype(np.float32)


def gold_probability(result: EvalResult, gold: Sequence[int]) -> np.ndarray:
    """[n]: the probability of each query's gold label (exp of its summed log-probability)."""
    return np.exp(result.scores[np.arange(len(gold)), np.asarray(gold)])


def _head_patches(config: ModelConfig, mean_z: np.ndarray, heads: Sequence[tuple[int, int]]) -> patching.Patch:
    return patching.stack([patching.head_output(config, layer, h, mean_z[layer, h]) for layer, h in heads])


def all_heads(config: ModelConfig) -> list[tuple[int, int]]:
    return [(layer, h) for layer in range(config.n_layers) for h in range(config.n_heads)]


def cie_grid(params: dict, config: ModelConfig, corrupted_prefix, queries, candidates, gold: Sequence[int],
             mean_z: np.ndarray, batch_size: int | str = 16, per_batch: int = 8,
             corrupted: EvalResult | None = None) -> np.ndarray:
    """CIE [L, H] of every query head, `per_batch` heads vmapped at a time. corrupted: the unpatched
    scores of the same queries after `corrupted_prefix`, when the caller has them already."""
    options = EvalOptions(batch_size=batch_size, probe="last", records=())
    if corrupted is None:
        corrupted = evaluate(params, config, corrupted_prefix, queries, candidates, options)
    base = gold_probability(corrupted, gold)
    patches = _head_patches(config, mean_z, all_heads(config))
    results = evaluate_patched(params, config, corrupted_prefix, queries, candidates, patches, options, per_batch)
    effects = [float(np.mean(gold_probability(r, gold) - base)) for r in results]
    return np.asarray(effects).reshape(config.n_layers, config.n_heads)


def cie_loop(params: dict, config: ModelConfig, corrupted_prefix, queries, candidates, gold: Sequence[int],
             mean_z: np.ndarray, batch_size: int | str = 16) -> np.ndarray:
    """`cie_grid` one head at a time: a Python loop over the heads, each through the same compiled
    program and the same prefix cache (the reference, and the benchmark's baseline)."""
    return cie_grid(params, config, corrupted_prefix, queries, candidates, gold, mean_z, batch_size, per_batch=1)


def top_heads(cie: np.ndarray, count: int = TOP_HEADS) -> list[tuple[int, int]]:
    """The `count` heads of largest CIE, largest first (ties: the lower layer, then head, first)."""
    if not 1 <= count <= cie.size:
        raise InputError(f"top heads: count must be in 1..{cie.size}, got {count}")
    order = np.lexsort((np.arange(cie.size), -cie.ravel()))[:count]
    return [(int(i // cie.shape[1]), int(i % cie.shape[1])) for i in order]


def function_vector(params: dict, config: ModelConfig, mean_z: np.ndarray, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """FV [d]: Σ over `heads` of z̄_lh times rows h*hd..(h+1)*hd of block l's output projection."""
    hd = config.head_dim
    w = np.asarray(params["blocks"]["o"]["w"], np.float64)  # [L, H*hd, d]
    return sum(mean_z[layer, h].astype(np.float64) @ w[layer, h * hd : (h + 1) * hd] for layer, h in heads).astype(np.float32)


def kv_update_sizes(before: dict, after: dict, config: ModelConfig) -> np.ndarray:
    """[L, H]: per query head, the Frobenius norm of the update to its KV head's slices of the key
    and value projections (weights and biases)."""
    total = np.zeros((config.n_layers, config.n_kv_heads))
    for name in ("k", "v"):
        for leaf in ("w", "b"):
            if leaf not in before["blocks"][name]:
                continue
            delta = np.asarray(after["blocks"][name][leaf], np.float64) - np.asarray(before["blocks"][name][leaf], np.float64)
            delta = delta.reshape(config.n_layers, -1, config.n_kv_heads, config.head_dim)
            total += np.sum(delta**2, axis=(1, 3))
    return np.repeat(np.sqrt(total), config.n_heads // config.n_kv_heads, axis=1)


def head_output_change(zs: EvalResult, ft: EvalResult) -> np.ndarray:
    """[L, H]: the mean over queries of ‖z_ft − z_zs‖ at the prediction position, per query head."""
    delta = np.asarray(ft.records["z"], np.float64) - np.asarray(zs.records["z"], np.float64)
    return np.linalg.norm(delta, axis=-1).mean(axis=0)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) != len(rb):
        raise InputError(f"spearman: {len(ra)} values against {len(rb)}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra**2) * np.sum(rb**2))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")
