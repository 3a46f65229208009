"""The per-layer anatomy of SimAM_Δ (jaxicl/analyses/map_updates.py) on hand-made maps."""

from __future__ import annotations

import types

import numpy as np
import pytest

from jaxicl.analyses.map_updates import (
    centered_simam_delta_per_head,
    layer_profile,
    shift_share,
    split_update,
    update_norms,
)


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


def test_a_uniform_shift_is_split_from_the_pattern_over_valid_tokens_only():
    ref = np.zeros((1, 1, 1, 4))
    m = np.array([[[[3.0, 1.0, 2.0, 99.0]]]])  # the last token is past the map length
    shift, centered = split_update(ref, m, np.array([3]))
    np.testing.assert_allclose(shift[0, 0, 0], 2.0)
    np.testing.assert_allclose(centered[0, 0, 0], [1.0, -1.0, 0.0, 0.0])
    np.testing.assert_allclose(shift_share(ref, m, np.array([3]))[0, 0, 0], 12.0 / 14.0)  # 3·2² / (12 + 2)


def test_opposite_shifts_around_the_same_pattern_hide_agreement_that_the_centered_cosine_shows():
    """ICL lowers the query's logits and moves the pattern; FT raises them with the same pattern:
    SimAM_Δ is negative, its centered form is 1, and the shifts disagree in sign."""
    zs = np.zeros((1, 1, 1, 3))
    pattern = np.array([1.0, -1.0, 0.0])
    icl, ft = (zs + (pattern + s)[None, None, None] for s in (-3.0, 3.0))
    np.testing.assert_allclose(centered_simam_delta_per_head(zs, icl, ft, np.array([3]))[0, 0, 0], 1.0)
    p = layer_profile(_run(zs, [3]), _run(icl, [3]), {"lcgd": _run(ft, [3])})
    assert p["lcgd_simam_delta"][0] < -0.8
    np.testing.assert_allclose(p["lcgd_simam_delta_centered"], [1.0])
    assert p["icl_shift_up"] == [0.0] and p["lcgd_shift_up"] == [1.0] and p["lcgd_shift_agreement"] == [0.0]
    np.testing.assert_allclose(p["lcgd_shift_share"], [27.0 / 29.0])
    np.testing.assert_allclose(p["icl_shift_share"], [27.0 / 29.0])


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


def test_the_anatomy_script_reads_a_run_directorys_cached_evaluations(tmp_path, capsys, monkeypatch):
    """experiments/simam_anatomy.py on hand-made cached evaluations: the CSV's rows per quantity and
    layer, the figure, and the centered SimAM_Δ of an update that only adds a shift to ICL's pattern."""
    import csv
    import importlib.util

    from jaxicl.runner.rundir import save_npz_atomic

    def save(path, maps):
        save_npz_atomic(path, {"scores": np.zeros((1, 2)), "predictions": np.zeros(1, int), "map_lengths": np.array([3]),
                               "prefix_len": np.array(0), "rec_attn_scores": maps})  # fmt: skip

    rng = np.random.default_rng(0)
    zs = rng.normal(size=(1, 2, 2, 3))
    icl = zs + rng.normal(size=zs.shape)
    group = tmp_path / "run" / "evals" / "sst2" / "trained" / "seed2-perm0"
    group.mkdir(parents=True)
    save(group.parent / "zs.npz", zs)
    save(group / "icl.npz", icl)
    save(group / "lcgd-ft.npz", icl + 5.0)  # ICL's update plus a uniform shift
    spec = importlib.util.spec_from_file_location("simam_anatomy", "experiments/simam_anatomy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr("sys.argv", ["simam_anatomy.py", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    script.main()
    with open(tmp_path / "out" / "simam_anatomy.csv") as f:
        rows = {(r["quantity"], r["layer"]): float(r["value"]) for r in csv.DictReader(f)}
    assert rows[("lcgd_simam_delta_centered", "0")] == pytest.approx(1.0) == rows[("lcgd_simam_delta_centered", "1")]
    assert rows[("lcgd_shift_up", "1")] == 1.0 and rows[("lcgd_update_over_icl", "1")] > 1.0
    assert (tmp_path / "out" / "simam_anatomy.png").stat().st_size > 1000
    summary = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert summary[2].startswith("| sst2 (1) | ICL | — | — | — |") and summary[3].startswith("| sst2 (1) | LCGD | ")
    assert summary[3].split(" | ")[3] == "1.000"  # centered SimAM_Δ
    assert "sst2 trained 2 0 |" in capsys.readouterr().out
