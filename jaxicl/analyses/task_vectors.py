"""Task vectors (Hendel, Geva, Globerson 2023): ICL compresses the demonstrations into the residual
stream at the position that predicts the label, and patching that state into a zero-shot run
recovers the task. And, beyond the paper: does GD move the same state the same way?

Everything is read at the prediction position (the query's last token, `probe="last"`): a patch at
the label token (the run's default probe) could not change the label's score.

- θ_L: the mean over the run's ICL prompts of the residual entering block L (`resid_pre`).
- The layer sweep: θ_L replaces the residual entering block L in zero-shot forwards of the eval
  queries; the accuracy per layer (all L patches vmapped, `scoring.evaluate_patched`), and the
  accuracy at a layer chosen on other queries (`heldout_accuracy`).
- GD alignment: per layer, the cosine between the finetuned model's change of that residual
  (finetuned zero-shot minus zero-shot) and the task vector's (θ_L minus zero-shot), per query,
  then averaged over queries.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxicl.engine import patching
from jaxicl.engine.scoring import EvalOptions, EvalResult, evaluate_patched
from jaxicl.models.config import ModelConfig

RECORDS = ("resid_pre", "z")  # what both kinds of vector are made of, at the prediction position


def eval_options(batch_size: int | str = 16) -> EvalOptions:
    """The scoring of every evaluation the vector analyses read: the prediction position's records."""
    return EvalOptions(batch_size=batch_size, probe="last", records=RECORDS)


def task_vectors(icl: EvalResult) -> np.ndarray:
    """θ [L, d]: the mean over ICL prompts of the residual entering each block at the prediction position."""
    return np.asarray(icl.records["resid_pre"], np.float64).mean(axis=0).astype(np.float32)


def layer_sweep(params: dict, config: ModelConfig, prefix, queries, candidates, vectors: np.ndarray,
                gold: Sequence[int], add: bool, batch_size: int | str = 16, per_batch: int = 6) -> np.ndarray:
    """Correctness [L, n] of each query after `prefix` with vectors[L] put into the residual entering
    block L at the prediction position: replacing it (task vectors) or added to it (function
    vectors). The mean over queries is each layer's accuracy."""
    patches = patching.stack([patching.residual(config, layer, vectors[layer], add) for layer in range(config.n_layers)])
    options = EvalOptions(batch_size=batch_size, probe="last", records=())
    results = evaluate_patched(params, config, prefix, queries, candidates, patches, options, per_batch)
    return np.asarray([r.predictions == np.asarray(gold) for r in results])


def heldout_accuracy(correct: np.ndarray) -> float:
    """The accuracy at a layer chosen on other queries: the best layer (the first of the highest) on
    the even-numbered queries is scored on the odd-numbered ones and the other way round, weighted
    by their counts. The best layer's own accuracy is chosen on the queries it is measured on, so
    it overstates; this does not."""
    correct = np.asarray(correct, bool)
    folds = (np.arange(correct.shape[1]) % 2 == 0, np.arange(correct.shape[1]) % 2 == 1)
    total = 0.0
    for choose, score in (folds, folds[::-1]):
        layer = int(np.argmax(correct[:, choose].mean(axis=1)))
        total += correct[layer, score].sum()
    return float(total / correct.shape[1])


def mean_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over the leading (example) axis of the cosine between a and b along the last axis
    ([n, L, d] -> [L]); an example where either vector is zero has no direction and is left out
    (NaN where no example has one, e.g. GD's change of the embeddings it never updates)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    defined = (na > 0) & (nb > 0)
    cos = np.where(defined, np.sum(a * b, axis=-1) / np.where(defined, na * nb, 1.0), 0.0)
    count = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, cos.sum(axis=0) / count, np.nan)


def gd_alignment(zs: EvalResult, ft: EvalResult, theta: np.ndarray) -> np.ndarray:
    """[L]: cosine (mean over queries) between the finetuned model's change of the residual entering
    each block and the task vector's change of it, both against the zero-shot residual."""
    base = np.asarray(zs.records["resid_pre"], np.float64)
    return mean_cosine(np.asarray(ft.records["resid_pre"], np.float64) - base, theta[None] - base)
