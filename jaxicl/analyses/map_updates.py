"""Where SimAM_Δ lives: per layer, how large each method's change of the attention logits is beside
ICL's, and how the per-head cosines that SimAM_Δ averages are spread.

SimAM_Δ of a layer is the mean over examples and heads of cos(m_ICL − m_ZS, m_FT − m_ZS), the
attention logits of the probe over the query's tokens. A near-zero mean can be tiny updates, large
updates pointed elsewhere, or large agreeing and disagreeing heads that cancel; these numbers tell
which. Everything is over each example's valid tokens (its map length), in float64.

Each head's update splits into a uniform shift (its mean over the query's tokens: every token's
logit raised or lowered alike) and a centered rest (which of the query's tokens gain or lose
against each other). The shift moves attention between the query and the rest of the row (the
sink, the demonstrations) and says nothing about which query token is read; the centered rest is
the attention pattern over the query. SimAM_Δ mixes the two; `centered_simam_delta_per_head`
compares the patterns alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from jaxicl.engine import metrics

MAPS = "attn_scores"
RATIO_FLOOR = 1e-4  # a layer where ICL's update is below this share of its largest has no ratio (NaN)


def _valid(m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    mask = np.arange(m.shape[-1])[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
    return np.where(mask, np.asarray(m, np.float64), 0.0)


def _update(m_ref: np.ndarray, m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    width = min(m.shape[-1], m_ref.shape[-1])
    return _valid(m[..., :width], lengths) - _valid(m_ref[..., :width], lengths)


def update_norms(m_ref: np.ndarray, m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, L, H]: ‖m − m_ref‖ over each example's first lengths[n] tokens."""
    return np.linalg.norm(_update(m_ref, m, lengths), axis=-1)


def split_update(m_ref: np.ndarray, m: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift [n, L, H], centered [n, L, H, T]): m − m_ref's mean over each example's valid tokens,
    and the update minus it (zero past the valid tokens)."""
    lengths = np.asarray(lengths)
    delta = _update(m_ref, m, lengths)
    shift = delta.sum(axis=-1) / np.maximum(lengths, 1)[:, None, None]
    return shift, _valid(delta - shift[..., None], lengths)


def _shift_share(shift: np.ndarray, centered: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    energy_shift = np.asarray(lengths)[:, None, None] * shift**2
    total = energy_shift + (centered**2).sum(axis=-1)  # ‖Δ‖²: the shift is orthogonal to the centered rest
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, energy_shift / total, np.nan)


def shift_share(m_ref: np.ndarray, m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, L, H]: the share of ‖m − m_ref‖² that the uniform shift carries (T·shift² / ‖Δ‖²; NaN
    where the update is zero)."""
    return _shift_share(*split_update(m_ref, m, lengths), lengths)


def centered_simam_delta_per_head(m_ref: np.ndarray, m_a: np.ndarray, m_b: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, L, H] cos of the centered updates: SimAM_Δ with each head's uniform shift taken out."""
    return metrics.cosine(split_update(m_ref, m_a, lengths)[1], split_update(m_ref, m_b, lengths)[1])


def _layers(x: np.ndarray) -> list[float]:
    """[n, L, H] → per layer, the mean over examples and heads (NaN entries left out)."""
    with warnings.catch_warnings():  # rotary layer 0: ICL's update is zero, its shift share NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=(0, 2)).tolist()


def layer_profile(zs, icl, finetuned: Mapping[str, object]) -> dict[str, list[float]]:
    """Per layer, from EvalResult-like zero-shot, ICL and finetuned runs (records["attn_scores"],
    map_lengths): ICL's update size, and per method its update size, the size ratio to ICL's (NaN
    where ICL's update is float rounding: RATIO_FLOOR),
    SimAM_Δ, the share of (example, head) cosines above zero and the mean |cosine|; and the
    uniform shift's anatomy: SimAM_Δ of the centered updates, the shift's share of the update's
    energy, the share of heads whose shift is upward, and the share whose shift has ICL's sign."""
    lengths = np.asarray(zs.map_lengths)
    m_zs, m_icl = zs.records[MAPS], icl.records[MAPS]
    icl_norm = update_norms(m_zs, m_icl, lengths).mean(axis=(0, 2))
    icl_shift, icl_centered = split_update(m_zs, m_icl, lengths)
    out = {"icl_update": icl_norm.tolist(), "icl_shift_share": _layers(_shift_share(icl_shift, icl_centered, lengths)),
           "icl_shift_up": _layers(icl_shift > 0)}  # fmt: skip
    for method, ft in finetuned.items():
        norm = update_norms(m_zs, ft.records[MAPS], lengths).mean(axis=(0, 2))
        cos = metrics.simam_delta_per_head(m_zs, m_icl, ft.records[MAPS], lengths)  # [n, L, H]
        moved = icl_norm > RATIO_FLOOR * icl_norm.max()  # rotary models: ICL leaves layer 0's logits as they were
        ratio = np.where(moved, norm / np.where(moved, icl_norm, 1.0), np.nan)
        shift, centered = split_update(m_zs, ft.records[MAPS], lengths)
        out |= {
            f"{method}_update": norm.tolist(),
            f"{method}_update_over_icl": ratio.tolist(),
            f"{method}_simam_delta": _layers(cos),
            f"{method}_share_positive": _layers(cos > 0),
            f"{method}_mean_abs_cos": _layers(np.abs(cos)),
            f"{method}_simam_delta_centered": _layers(metrics.cosine(icl_centered, centered)),
            f"{method}_shift_share": _layers(_shift_share(shift, centered, lengths)),
            f"{method}_shift_up": _layers(shift > 0),
            f"{method}_shift_agreement": _layers(np.sign(shift) == np.sign(icl_shift)),
        }
    return out
