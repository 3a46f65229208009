"""Where SimAM_Δ lives: per layer, how large each method's change of the attention logits is beside
ICL's, and how the per-head cosines that SimAM_Δ averages are spread.

SimAM_Δ of a layer is the mean over examples and heads of cos(m_ICL − m_ZS, m_FT − m_ZS), the
attention logits of the probe over the query's tokens. A near-zero mean can be tiny updates, large
updates pointed elsewhere, or large agreeing and disagreeing heads that cancel; these numbers tell
which. Everything is over each example's valid tokens (its map length), in float64.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxicl.engine import metrics

MAPS = "attn_scores"
RATIO_FLOOR = 1e-4  # a layer where ICL's update is below this share of its largest has no ratio (NaN)


def _valid(m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    mask = np.arange(m.shape[-1])[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
    return np.where(mask, np.asarray(m, np.float64), 0.0)


def update_norms(m_ref: np.ndarray, m: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, L, H]: ‖m − m_ref‖ over each example's first lengths[n] tokens."""
    width = min(m.shape[-1], m_ref.shape[-1])
    return np.linalg.norm(_valid(m[..., :width], lengths) - _valid(m_ref[..., :width], lengths), axis=-1)


def layer_profile(zs, icl, finetuned: Mapping[str, object]) -> dict[str, list[float]]:
    """Per layer, from EvalResult-like zero-shot, ICL and finetuned runs (records["attn_scores"],
    map_lengths): ICL's update size, and per method its update size, the size ratio to ICL's (NaN
    where ICL's update is float rounding: RATIO_FLOOR),
    SimAM_Δ, the share of (example, head) cosines above zero and the mean |cosine|."""
    lengths = np.asarray(zs.map_lengths)
    m_zs, m_icl = zs.records[MAPS], icl.records[MAPS]
    icl_norm = update_norms(m_zs, m_icl, lengths).mean(axis=(0, 2))
    out = {"icl_update": icl_norm.tolist()}
    for method, ft in finetuned.items():
        norm = update_norms(m_zs, ft.records[MAPS], lengths).mean(axis=(0, 2))
        cos = metrics.simam_delta_per_head(m_zs, m_icl, ft.records[MAPS], lengths)  # [n, L, H]
        moved = icl_norm > RATIO_FLOOR * icl_norm.max()  # rotary models: ICL leaves layer 0's logits as they were
        ratio = np.where(moved, norm / np.where(moved, icl_norm, 1.0), np.nan)
        out |= {
            f"{method}_update": norm.tolist(),
            f"{method}_update_over_icl": ratio.tolist(),
            f"{method}_simam_delta": cos.mean(axis=(0, 2)).tolist(),
            f"{method}_share_positive": (cos > 0).mean(axis=(0, 2)).tolist(),
            f"{method}_mean_abs_cos": np.abs(cos).mean(axis=(0, 2)).tolist(),
        }
    return out
