"""The per-layer anatomy of SimAM_Δ (jaxicl/analyses/map_updates.py) on hand-made maps."""

from __future__ import annotations

import types

import numpy as np

from jaxicl.analyses.map_updates import layer_profile, update_norms


def _run(maps: np.ndarray, lengths) -> types.SimpleNamespace:
    return types.SimpleNamespace(records={"attn_scores": maps}, map_lengths=np.asarray(lengths))


def test_update_norms_count_only_each_examples_valid_tokens():
    ref = np.zeros((2, 1, 1, 3))
    m = np.array([[[[3.0, 4.0, 100.0]]], [[[1.0, 100.0, 100.0]]]])
    np.testing.assert_allclose(update_norms(ref, m, [2, 1])[:, 0, 0], [5.0, 1.0])


def test_a_zero_mean_from_large_cancelling_heads_is_told_apart_from_small_updates():
    """Layer 1: two heads whose updates agree and disagree with ICL's exactly (SimAM_Δ 0, |cos| 1);
    layer 0: ICL does not move the maps (no ratio)."""
    zs = np.zeros((1, 2, 2, 2))
    icl = zs.copy()
    icl[0, 1] = [[1.0, 0.0], [0.0, 1.0]]
    ft = zs.copy()
    ft[0, 1] = [[2.0, 0.0], [0.0, -2.0]]
    ft[0, 0] = [[0.5, 0.0], [0.0, 0.0]]
    p = layer_profile(_run(zs, [2]), _run(icl, [2]), {"gd": _run(ft, [2])})
    assert p["icl_update"] == [0.0, 1.0]
    np.testing.assert_allclose(p["gd_update"], [0.25, 2.0])
    assert np.isnan(p["gd_update_over_icl"][0]) and p["gd_update_over_icl"][1] == 2.0
    np.testing.assert_allclose(p["gd_simam_delta"], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(p["gd_mean_abs_cos"], [0.0, 1.0])
    np.testing.assert_allclose(p["gd_share_positive"], [0.0, 0.5])


def test_under_rotary_positions_icl_leaves_layer_0s_query_logits_as_they_were_and_under_absolute_ones_it_does_not():
    """Why layer 0's SimAM_Δ is rounding noise on a rotary model: the probe's logits over the query's
    own tokens depend on their content and relative positions only, and at layer 0 the content is the
    embeddings, whatever came before. Learned absolute positions move them: the demonstrations shift
    every query token's position, which adds a change that no task content causes."""
    import jax.numpy as jnp

    from jaxicl.models.transformer import forward
    from tests.test_transforms import GEMMA, GPT2, LLAMA, random_params

    query, demos = [10, 11, 12, 13, 14], list(range(30, 50))

    def probe_logits(config, params, prefix):
        ids = jnp.asarray([prefix + query])
        out = forward(params, config, ids, logits_at=None, taps=("attn_scores",), tap_at=jnp.asarray([ids.shape[1] - 1]))
        scores = np.asarray(out.taps["attn_scores"])[:, 0]  # [L, H, S]
        return scores[..., len(prefix): len(prefix) + len(query)]

    for config, moves_layer_0 in ((LLAMA, False), (GEMMA, False), (GPT2, True)):
        params = random_params(config)
        zs, icl = probe_logits(config, params, [1]), probe_logits(config, params, [1] + demos)
        change = np.abs(icl - zs).max(axis=(1, 2))  # per layer
        assert (change[0] > 1e-2) == moves_layer_0, (config.family, change)
        assert change[1] > 1e-2, (config.family, change)  # deeper, the demonstrations' content moves them
