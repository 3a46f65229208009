"""Similarity metrics between ICL and finetuning (docs/method.md#metrics), their baselines and aggregation.

Everything is numpy in float64, whatever dtype the records come in, so aggregation over thousands
of examples adds no rounding of its own. Large record arrays are processed in chunks of examples,
so memory stays flat in n.

Conventions (each follows the section of docs/method.md named in brackets):
- cos is torch's current `F.cosine_similarity` (eps 1e-8, checked against torch 2.x):
  x·y / (max(‖x‖₂, eps) · max(‖y‖₂, eps)). Older torch docs (1.9/1.10) give
  x·y / max(‖x‖₂‖y‖₂, eps); they differ only if ‖x‖₂‖y‖₂ < eps or a norm < eps. A zero vector (e.g.
  an update that is exactly 0) gives 0, not NaN [notation].
- SimAOU_norm first divides every h by max(‖h‖₂, 1e-12) (`F.normalize`, as the authors'
  `analyze_sim(normalize=True)`); it is Dai's "SimAOU" and the authors' JSON key `SimAOU`
  [simaou]. SimAOU is the same without normalization [simaou].
- Random SimAOU: cos(ICL update, r), one r per example and layer, r drawn in C order as
  `np.random.default_rng(seed).random((n, L, d))` (U[0,1), the authors' baseline, not zero-mean),
  or a fresh `np.random.default_rng(seed).standard_normal((n, L, d))` for the zero-mean variant;
  the ICL update is computed in normalized mode by default, as the authors did [random-baselines].
- Attention maps are the probe's pre-softmax logits over the query tokens; each example's map is
  its first `lengths[n]` entries and whatever follows is ignored (masked to 0): icl.py's right
  zero-padding, any padding value, and the authors' left zero-padding (read as part of the map)
  all leave every cosine unchanged [attention-map-similarity].
- Aggregation: SimAOU means over examples per layer; SimAM-type metrics mean over heads, then
  examples, then layers, all with equal weights; scalars are the mean of the per-layer list
  [aggregation]. (For full [n, L, H] arrays this equals the flat mean of the per-head
  cosines; it differs from one cosine over concatenated heads or from token-length weighting.)
- α = SimAM_Δ between LCGD and GD: cos(m_LCGD − m_ZS, m_GD − m_ZS), aggregated like SimAM_Δ
  [alpha].
- Rec2FTP = 100·N_both/N_FT>ZS; NaN when N_FT>ZS = 0 (no example that FT fixed), reported as
  `None` by `all_metrics` so the JSON stays strict; never a silent 0 [rec2ftp].
- Bad input (shape mismatches across settings, map lengths that differ or exceed the map width,
  NaN/inf in the values used) raises `InputError` naming the arrays, never a wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Iterator, Literal

import numpy as np

from jaxicl.errors import InputError
from jaxicl.models.transformer import EVERY_POSITION

COS_EPS = 1e-8  # F.cosine_similarity default
NORM_EPS = 1e-12  # F.normalize default (the authors' normalize_hidden)
CHUNK = 128  # examples per chunk: bounds float64 temporaries for [2000, 24, 2048] records

PER_LAYER_KEYS = (
    "simaou_norm",
    "simaou",
    "simam",
    "simam_delta",
    "zsl_simam",
    "random_simaou",
    "random_simaou_gauss",
)
# Table 1 / Table 2's metrics, kept per example in each cell for the report's hierarchical bootstrap
TABLE_METRICS = ("simaou_norm", "simaou", "simam", "simam_delta")  # Tables 1-2; required in every cell
PER_EXAMPLE_METRICS = ("simaou_norm", "simaou", "simam", "simam_delta", "tokenwise_simaou")
TOKENWISE_KEY = "tokenwise_simaou"  # in a cell only when its records were asked for (attn_out@all)


# ----------------------------------------------------------------------------------- primitives


def cosine(x: np.ndarray, y: np.ndarray, eps: float = COS_EPS) -> np.ndarray:
    """Cosine along the last axis with torch's current F.cosine_similarity semantics, in float64.

    Each norm is clamped separately, so a zero vector gives 0 instead of NaN."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    dot = np.sum(x * y, axis=-1)
    nx = np.sqrt(np.sum(x * x, axis=-1))
    ny = np.sqrt(np.sum(y * y, axis=-1))
    return dot / (np.maximum(nx, eps) * np.maximum(ny, eps))


def l2_normalize(h: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """h / max(‖h‖₂, eps) along the last axis (F.normalize), the authors' SimAOU_norm step."""
    h = np.asarray(h, np.float64)
    return h / np.maximum(np.sqrt(np.sum(h * h, axis=-1, keepdims=True)), eps)


def _head_mean(scores: np.ndarray) -> np.ndarray:
    """[n, L] as is, [n, L, H] averaged over heads: the first level of every reduction."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 3:
        scores = scores.mean(axis=2)
    if scores.ndim != 2:
        raise InputError(f"per-example scores must be [n, L] or [n, L, H], got shape {scores.shape}")
    return scores


def per_layer_mean(scores: np.ndarray) -> list[float]:
    """[n, L] → mean over examples; [n, L, H] → mean over heads, then examples. One float per layer.

    Equal weights at every level, in the authors' order (heads → examples), so the result does
    not depend on how many tokens a map has."""
    return [float(v) for v in _head_mean(scores).mean(axis=0)]


def per_example_mean(scores: np.ndarray) -> list[float]:
    """[n, L] or [n, L, H] → one float per example: heads, then layers, with equal weights, so the
    mean of these equals the layer mean of `per_layer_mean` (what a bootstrap over examples needs)."""
    return [float(v) for v in _head_mean(scores).mean(axis=1)]


def layer_mean(per_layer: Sequence[float]) -> float:
    """The scalar of a metric: the plain mean of its per-layer values (docs/experiments.md#the-grid-jaxicl-run)."""
    if len(per_layer) == 0:
        raise InputError("no layers to average")
    return float(np.mean(np.asarray(per_layer, np.float64)))


def json_float(x: float) -> float | None:
    """A float for strict JSON: NaN/inf (an undefined metric) become None."""
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------- validation


def _chunks(n: int, divide: int = 1) -> Iterator[slice]:
    """Example slices of CHUNK // divide (records with a token axis take Q times the memory)."""
    size = max(1, int(CHUNK) // divide)  # read at call time, so tests can shrink it
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _numeric(name: str, x: Any) -> np.ndarray:
    """An array of real numbers (any float/int dtype, or ml_dtypes' bfloat16); else InputError."""
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: complex values are not supported")
    plain_void = arr.dtype.kind == "V" and arr.dtype.names is None  # bfloat16 & co.
    if not (np.issubdtype(arr.dtype, np.number) or plain_void):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"{name}: not a numeric array (dtype {arr.dtype})") from e
    return arr


def _same_shape(arrays: Mapping[str, np.ndarray], ndim: int, what: str, upto: int | None = None) -> tuple[int, ...]:
    """All arrays have `ndim` dims and one shape (first `upto` dims only, if given), with at least
    one example; else InputError naming every array and its shape."""
    for name, a in arrays.items():
        if a.ndim != ndim:
            raise InputError(f"{name}: expected {what} with {ndim} dims, got shape {a.shape}")
    if len({a.shape[:upto] for a in arrays.values()}) > 1:
        listed = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
        raise InputError(f"shape mismatch between settings ({what}): {listed}")
    shape = next(iter(arrays.values())).shape
    if 0 in shape[:upto]:
        raise InputError(f"{', '.join(arrays)}: empty dimension in shape {shape} (need n, L, ... >= 1)")
    return shape


def _check_finite(name: str, x: np.ndarray, lengths: np.ndarray | None = None) -> None:
    """Refuse NaN/inf in the entries a metric uses (for maps: only the first lengths[n] tokens)."""
    for s in _chunks(x.shape[0]):
        block = np.asarray(x[s], np.float64)
        bad = ~np.isfinite(block)
        if lengths is not None:
            bad &= _token_mask(lengths[s], block.shape[-1])[:, None, None, :]
        if bad.any():
            local = tuple(int(i) for i in np.argwhere(bad)[0])
            where = (local[0] + s.start,) + local[1:]
            raise InputError(f"{name}: non-finite value {block[local]} at index {where}")


def _token_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    return np.arange(width)[None, :] < np.asarray(lengths)[:, None]


def _check_lengths(lengths: Any, n: int, width: int, name: str = "lengths") -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{name}: expected shape ({n},) (one length per example), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InputError(f"{name}: map lengths must be integers, got dtype {arr.dtype}")
    if np.any(arr < 1):
        i = int(np.argmax(arr < 1))
        raise InputError(f"{name}: example {i} has map length {int(arr[i])} (< 1)")
    if np.any(arr > width):
        i = int(np.argmax(arr > width))
        raise InputError(f"{name}: example {i} has map length {int(arr[i])} > map width {width}")
    return arr.astype(np.int64)


def _hiddens(named: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {name: _numeric(name, x) for name, x in named.items()}
    _same_shape(arrays, 3, "hidden states [n, L, d]")
    for name, a in arrays.items():
        _check_finite(name, a)
    return arrays


def _maps(named: Mapping[str, Any], lengths: Any, lengths_name: str = "lengths",
          what: str = "attention maps [n, L, H, Q]") -> tuple[dict, np.ndarray]:  # fmt: skip
    """Validated maps (or any [n, L, X, Q] records with a ragged last axis) cut to the longest
    valid length (widths may differ by padding only)."""
    arrays = {name: _numeric(name, x) for name, x in named.items()}
    _same_shape(arrays, 4, f"{what}; Q may differ by padding", upto=3)
    first = next(iter(arrays.values()))
    width = min(a.shape[-1] for a in arrays.values())
    lengths = _check_lengths(lengths, first.shape[0], width, lengths_name)
    width = int(lengths.max())
    arrays = {name: a[..., :width] for name, a in arrays.items()}
    for name, a in arrays.items():
        _check_finite(name, a, lengths)
    return arrays, lengths


def _masked(m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """float64 copy of a map chunk with everything past each example's length set to 0."""
    mask = _token_mask(lengths, m.shape[-1])[:, None, None, :]
    return np.where(mask, np.asarray(m, np.float64), 0.0)


# ----------------------------------------------------------------------------------- SimAOU


def simaou_per_example(h_zs: Any, h_icl: Any, h_ft: Any, normalize: bool) -> np.ndarray:
    """[n, L] cos(h_icl − h_zs, h_ft − h_zs), after l2-normalizing each h if `normalize`."""
    a = _hiddens({"h_zs": h_zs, "h_icl": h_icl, "h_ft": h_ft})
    return _simaou_checked(a["h_zs"], a["h_icl"], a["h_ft"], normalize)


def _simaou_checked(h_zs: np.ndarray, h_icl: np.ndarray, h_ft: np.ndarray, normalize: bool) -> np.ndarray:
    out = np.empty(h_zs.shape[:2], np.float64)
    prep = l2_normalize if normalize else (lambda h: np.asarray(h, np.float64))
    for s in _chunks(h_zs.shape[0]):
        zs = prep(h_zs[s])
        out[s] = cosine(prep(h_icl[s]) - zs, prep(h_ft[s]) - zs)
    return out


def simaou(h_zs: Any, h_icl: Any, h_ft: Any, normalize: bool) -> list[float]:
    """Per-layer SimAOU (normalize=False) or SimAOU_norm = Dai's SimAOU (normalize=True).

    Inputs are attention outputs at the probe, [n, L, d] each. normalize has no default because
    the two variants differ in kind: the normalized one scores ~1/4 for updates orthogonal to h
    (docs/method.md#simaou)."""
    return per_layer_mean(simaou_per_example(h_zs, h_icl, h_ft, normalize))


def random_simaou_per_example(
    h_zs: Any,
    h_icl: Any,
    *,
    seed: int,
    dist: Literal["uniform", "gauss"] = "uniform",
    normalize: bool = True,
) -> np.ndarray:
    """[n, L] cos(ICL update, r): the chance level of SimAOU for an update direction r.

    r has the records' shape and is drawn in C order from np.random.default_rng(seed): `.random`
    (U[0,1), the authors' baseline) or `.standard_normal` (zero-mean, so its chance level is 0).
    Chunked draws equal one full-size draw, so results do not depend on CHUNK."""
    a = _hiddens({"h_zs": h_zs, "h_icl": h_icl})
    return _random_checked(a["h_zs"], a["h_icl"], seed=seed, dist=dist, normalize=normalize)


def _random_checked(h_zs: np.ndarray, h_icl: np.ndarray, *, seed: int, dist: str, normalize: bool) -> np.ndarray:
    if dist not in ("uniform", "gauss"):
        raise InputError(f"dist must be 'uniform' or 'gauss', got {dist!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    draw = rng.random if dist == "uniform" else rng.standard_normal
    prep = l2_normalize if normalize else (lambda h: np.asarray(h, np.float64))
    out = np.empty(h_zs.shape[:2], np.float64)
    for s in _chunks(h_zs.shape[0]):
        update = prep(h_icl[s]) - prep(h_zs[s])
        out[s] = cosine(update, draw(update.shape))
    return out


def random_simaou(
    h_zs: Any,
    h_icl: Any,
    *,
    seed: int,
    dist: Literal["uniform", "gauss"] = "uniform",
    normalize: bool = True,
) -> list[float]:
    """Per-layer random SimAOU (see random_simaou_per_example); normalized mode by default, as the
    authors computed it."""
    return per_layer_mean(random_simaou_per_example(h_zs, h_icl, seed=seed, dist=dist, normalize=normalize))


# ----------------------------------------------------------------------------------- token-wise


def tokenwise_simaou_per_example(h_zs: Any, h_icl: Any, h_ft: Any, lengths: Any) -> np.ndarray:
    """[n, L] IA2's measure: cos(h_icl − h_zs, h_ft − h_zs) of the attention output at every query
    token (records [n, L, d, Q], icl.py's NAME@all, token axis last), averaged over each example's
    first lengths[n] tokens: the query's tokens up to and including the probe."""
    named = {"h_zs": h_zs, "h_icl": h_icl, "h_ft": h_ft}
    arrays, lengths = _maps(named, lengths, what="token records [n, L, d, Q]")
    return _tokenwise_checked(*arrays.values(), lengths)


def _tokenwise_checked(h_zs: np.ndarray, h_icl: np.ndarray, h_ft: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    out = np.empty(h_zs.shape[:2], np.float64)
    for s in _chunks(h_zs.shape[0], divide=h_zs.shape[-1]):  # float64 temporaries of [chunk, L, d, Q]
        zs = np.asarray(h_zs[s], np.float64)
        per_token = cosine(np.swapaxes(np.asarray(h_icl[s], np.float64) - zs, -1, -2),
                           np.swapaxes(np.asarray(h_ft[s], np.float64) - zs, -1, -2))  # [n, L, Q]  # fmt: skip
        mask = _token_mask(lengths[s], per_token.shape[-1])[:, None, :]
        out[s] = np.where(mask, per_token, 0.0).sum(-1) / lengths[s][:, None]
    return out


def tokenwise_simaou(h_zs: Any, h_icl: Any, h_ft: Any, lengths: Any) -> list[float]:
    """Per-layer token-wise SimAOU: the mean over examples of `tokenwise_simaou_per_example`."""
    return per_layer_mean(tokenwise_simaou_per_example(h_zs, h_icl, h_ft, lengths))


# ----------------------------------------------------------------------------------- SimAM


def simam_per_head(m_a: Any, m_b: Any, lengths: Any) -> np.ndarray:
    """[n, L, H] cos(m_a, m_b) of attention maps over each example's first lengths[n] tokens."""
    maps, lengths = _maps({"m_a": m_a, "m_b": m_b}, lengths)
    return _pair_cos(maps["m_a"], maps["m_b"], None, lengths)


def simam_delta_per_head(m_ref: Any, m_a: Any, m_b: Any, lengths: Any) -> np.ndarray:
    """[n, L, H] cos(m_a − m_ref, m_b − m_ref): the map updates, not the maps, are compared."""
    maps, lengths = _maps({"m_ref": m_ref, "m_a": m_a, "m_b": m_b}, lengths)
    return _pair_cos(maps["m_a"], maps["m_b"], maps["m_ref"], lengths)


def _pair_cos(m_a: np.ndarray, m_b: np.ndarray, m_ref: np.ndarray | None, lengths: np.ndarray) -> np.ndarray:
    out = np.empty(m_a.shape[:3], np.float64)
    for s in _chunks(m_a.shape[0]):
        a, b = _masked(m_a[s], lengths[s]), _masked(m_b[s], lengths[s])
        if m_ref is not None:
            ref = _masked(m_ref[s], lengths[s])
            a, b = a - ref, b - ref
        out[s] = cosine(a, b)
    return out


def simam(m_a: Any, m_b: Any, lengths: Any) -> list[float]:
    """Per-layer SimAM: mean over heads, then examples, of cos(m_a, m_b).

    SimAM (Dai "after finetuning") = simam(m_icl, m_ft, lengths); zero-shot SimAM (Dai "before
    finetuning") = simam(m_icl, m_zs, lengths)."""
    return per_layer_mean(simam_per_head(m_a, m_b, lengths))


def simam_delta(m_zs: Any, m_icl: Any, m_ft: Any, lengths: Any) -> list[float]:
    """Per-layer SimAM_Δ = cos(m_icl − m_zs, m_ft − m_zs), heads → examples.

    The raw SimAM is dominated by the shared zero-shot map; the update is what ICL and FT add."""
    return per_layer_mean(simam_delta_per_head(m_zs, m_icl, m_ft, lengths))


def alpha(m_zs: Any, m_lcgd: Any, m_gd: Any, lengths: Any) -> list[float]:
    """Per-layer α = SimAM_Δ between the LCGD and GD updates: cos(m_lcgd − m_zs, m_gd − m_zs)."""
    return per_layer_mean(simam_delta_per_head(m_zs, m_lcgd, m_gd, lengths))


# ----------------------------------------------------------------------------------- Rec2FTP


def _labels(named: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {name: np.asarray(x) for name, x in named.items()}
    for name, a in arrays.items():
        if a.ndim != 1:
            raise InputError(f"{name}: expected one label per example, got shape {a.shape}")
    _same_shape(arrays, 1, "labels [n]")
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise InputError(f"{name}: non-finite label")
    return arrays


def rec2ftp_counts(zs_pred: Any, icl_pred: Any, ft_pred: Any, gold: Any) -> tuple[int, int]:
    """(N_both, N_FT>ZS): examples FT gets right and ZS wrong, and those of them ICL also gets right."""
    a = _labels({"zs_pred": zs_pred, "icl_pred": icl_pred, "ft_pred": ft_pred, "gold": gold})
    fixed = (a["ft_pred"] == a["gold"]) & (a["zs_pred"] != a["gold"])
    both = fixed & (a["icl_pred"] == a["gold"])
    return int(both.sum()), int(fixed.sum())


def rec2ftp(zs_pred: Any, icl_pred: Any, ft_pred: Any, gold: Any) -> float:
    """Rec2FTP = 100·N_both/N_FT>ZS (Dai §4.3): how much of what FT fixes ICL fixes too.

    NaN when N_FT>ZS = 0: the recall is undefined, and 0 or 100 would both be invented."""
    both, fixed = rec2ftp_counts(zs_pred, icl_pred, ft_pred, gold)
    return 100.0 * both / fixed if fixed else math.nan


# ----------------------------------------------------------------------------------- everything


def _field(obj: Any, key: str, setting: str) -> Any:
    if isinstance(obj, Mapping):
        if key not in obj:
            raise InputError(f"{setting}: no {key!r} (keys: {sorted(obj)})")
        return obj[key]
    if not hasattr(obj, key):
        raise InputError(f"{setting}: {type(obj).__name__} has no attribute {key!r}")
    return getattr(obj, key)


def _has_record(obj: Any, key: str) -> bool:
    records = obj.get("records") if isinstance(obj, Mapping) else getattr(obj, "records", None)
    return records is not None and key in records


def _record(obj: Any, key: str, setting: str) -> Any:
    records = _field(obj, "records", setting)
    if key not in records:
        raise InputError(f"{setting}.records has no {key!r} (has: {sorted(records)})")
    return records[key]


def _common_lengths(results: Mapping[str, Any]) -> tuple[np.ndarray, str]:
    """The map lengths, which must be identical across settings (same queries, same probe)."""
    named = {s: np.asarray(_field(r, "map_lengths", s)) for s, r in results.items()}
    (first_name, first), *rest = named.items()
    for name, arr in rest:
        if arr.shape != first.shape:
            raise InputError(f"map_lengths shape mismatch: {first_name}.map_lengths {first.shape}, "
                             f"{name}.map_lengths {arr.shape}")
        if not np.array_equal(arr, first):
            i = int(np.argmax(arr != first))
            raise InputError(f"map_lengths differ between settings: example {i} has "
                             f"{first_name} {first[i]} vs {name} {arr[i]}")
    return first, f"{first_name}.map_lengths"


def all_metrics(
    zs: Any,
    icl: Any,
    ft: Any,
    *,
    gold: Sequence[int] | np.ndarray,
    seed: int,
    hidden_key: str = "attn_out",
    map_key: str = "attn_scores",
) -> dict:
    """Every per-example metric of one cell, as the results schema's "per_layer" and "scalar".

    zs, icl, ft: EvalResult-like (attributes or dict keys `records`, `map_lengths`,
    `predictions`) for the zero-shot, ICL and finetuned-zero-shot runs on the same eval queries.
    gold: the eval labels. seed: for the random baselines. Returns plain Python floats; an
    undefined Rec2FTP is None (NaN is not JSON). "counts" carries Rec2FTP's numerator and
    denominator and n, so an undefined or noisy value can be read correctly."""
    results = {"zs": zs, "icl": icl, "ft": ft}
    h = _hiddens({f"{s}.records[{hidden_key!r}]": _record(r, hidden_key, s) for s, r in results.items()})
    h_zs, h_icl, h_ft = h.values()
    lengths, lengths_name = _common_lengths(results)
    maps, lengths = _maps(
        {f"{s}.records[{map_key!r}]": _record(r, map_key, s) for s, r in results.items()}, lengths, lengths_name
    )
    m_zs, m_icl, m_ft = maps.values()
    labels = _labels({**{f"{s}.predictions": _field(r, "predictions", s) for s, r in results.items()}, "gold": gold})
    preds = list(labels.values())
    n_h, n_m, n_p = h_zs.shape[0], m_zs.shape[0], preds[0].shape[0]
    if not n_h == n_m == n_p:
        raise InputError(f"number of examples differs: {hidden_key} {n_h}, {map_key} {n_m}, predictions/gold {n_p}")
    if h_zs.shape[1] != m_zs.shape[1]:
        raise InputError(f"number of layers differs: {hidden_key} {h_zs.shape[1]}, {map_key} {m_zs.shape[1]}")

    scores = {  # [n, L] or [n, L, H] per example
        "simaou_norm": _simaou_checked(h_zs, h_icl, h_ft, True),
        "simaou": _simaou_checked(h_zs, h_icl, h_ft, False),
        "simam": _pair_cos(m_icl, m_ft, None, lengths),
        "simam_delta": _pair_cos(m_icl, m_ft, m_zs, lengths),
        "zsl_simam": _pair_cos(m_icl, m_zs, None, lengths),
        "random_simaou": _random_checked(h_zs, h_icl, seed=seed, dist="uniform", normalize=True),
        "random_simaou_gauss": _random_checked(h_zs, h_icl, seed=seed, dist="gauss", normalize=True),
    }
    token_key = hidden_key + EVERY_POSITION
    if all(_has_record(r, token_key) for r in results.values()):  # asked for: IA2's token-wise SimAOU
        tokens = {f"{s}.records[{token_key!r}]": _record(r, token_key, s) for s, r in results.items()}
        arrays, token_lengths = _maps(tokens, lengths, lengths_name, what="token records [n, L, d, Q]")
        scores[TOKENWISE_KEY] = _tokenwise_checked(*arrays.values(), token_lengths)
    per_layer = {key: per_layer_mean(v) for key, v in scores.items()}
    both, fixed = rec2ftp_counts(*preds)
    scalar = {key: layer_mean(values) for key, values in per_layer.items()}
    scalar["rec2ftp"] = json_float(100.0 * both / fixed) if fixed else None
    return {
        "per_layer": per_layer,
        "scalar": scalar,
        "per_example": {key: per_example_mean(scores[key]) for key in PER_EXAMPLE_METRICS if key in scores},
        "counts": {"n": int(n_h), "rec2ftp_both": both, "rec2ftp_ft_gt_zs": fixed},
    }


def alpha_metrics(zs: Any, lcgd: Any, gd: Any, *, map_key: str = "attn_scores") -> dict:
    """α of one task/seed from the zero-shot, LCGD-finetuned and GD-finetuned runs (docs/method.md#alpha)."""
    results = {"zs": zs, "lcgd": lcgd, "gd": gd}
    lengths, lengths_name = _common_lengths(results)
    maps, lengths = _maps(
        {f"{s}.records[{map_key!r}]": _record(r, map_key, s) for s, r in results.items()}, lengths, lengths_name
    )
    m_zs, m_lcgd, m_gd = maps.values()
    per_layer = per_layer_mean(_pair_cos(m_lcgd, m_gd, m_zs, lengths))
    return {"per_layer": {"alpha": per_layer}, "scalar": {"alpha": layer_mean(per_layer)}}
