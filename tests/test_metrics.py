"""Metrics (docs/method.md#metrics): hand-computed cases, the paper's analytic SimAOU_norm example,
invariances, padding, aggregation order, seeded baselines, Rec2FTP and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxicl.engine import metrics as M
from jaxicl.engine.scoring import EvalResult
from jaxicl.errors import InputError

SQ2 = math.sqrt(2.0)


def h(*vectors) -> np.ndarray:
    """One example, one layer per vector: [1, L, d]."""
    return np.asarray([vectors], np.float64)


# ----------------------------------------------------------------------------------- cosine


def test_cosine_hand_values():
    assert M.cosine([3.0, 4.0], [4.0, 3.0]) == pytest.approx(24 / 25)
    assert M.cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / SQ2)
    assert M.cosine([1.0, 2.0], [-2.0, 1.0]) == pytest.approx(0.0)
    assert M.cosine([1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]) == pytest.approx(-1.0)


def test_cosine_zero_vector_is_zero_not_nan():
    assert M.cosine([0.0, 0.0], [1.0, 2.0]) == 0.0
    assert M.cosine([0.0, 0.0], [0.0, 0.0]) == 0.0


def test_cosine_clamps_each_norm_like_current_torch():
    # current torch: x·y / (max(|x|, eps) max(|y|, eps)) = 1e-10 / (1e-5 * 1e-5) = 1;
    # torch <= 1.x documented x·y / max(|x||y|, eps) = 1e-10 / 1e-8 = 0.01
    assert M.cosine([1e-5, 0.0], [1e-5, 0.0]) == pytest.approx(1.0)
    # a norm below eps is clamped: 1e-9 / (1e-8 * 1) = 0.1
    assert M.cosine([1e-9, 0.0], [1.0, 0.0]) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------- SimAOU


def test_simaou_unnormalized_hand_case():
    # layer 0: updates (3,4) and (4,3) -> 24/25; layer 1: (1,0) and (0,2) -> 0
    zs = h([1.0, 1.0], [5.0, 5.0])
    icl = h([4.0, 5.0], [6.0, 5.0])
    ft = h([5.0, 4.0], [5.0, 7.0])
    assert M.simaou(zs, icl, ft, normalize=False) == pytest.approx([24 / 25, 0.0])


def test_simaou_norm_hand_case():
    # zs (1,0), icl (0,2) -> normalized update (-1, 1); ft (3,3) -> (1/√2 - 1, 1/√2):
    # cos = 1/√(4 - 2√2) = cos(π/8). Unnormalized: (-1,2)·(2,3) / (√5 √13) = 4/√65.
    zs, icl, ft = h([1.0, 0.0]), h([0.0, 2.0]), h([3.0, 3.0])
    assert M.simaou(zs, icl, ft, normalize=True) == pytest.approx([math.cos(math.pi / 8)])
    assert M.simaou(zs, icl, ft, normalize=False) == pytest.approx([4 / math.sqrt(65)])
    # normalized mode ignores the length of h_ft; unnormalized does not
    assert M.simaou(zs, icl, 10 * ft, normalize=True) == pytest.approx([math.cos(math.pi / 8)])
    assert M.simaou(zs, icl, 10 * ft, normalize=False)[0] != pytest.approx(4 / math.sqrt(65))


def test_paper_analytic_example_simaou_norm_quarter_vs_zero():
    # docs/method.md#simaou: r, r' ⟂ z, r ⟂ r', ‖r‖² = ‖r'‖² = 3‖z‖²; h_zs = z, h_icl = z + r, h_ft = z + r'
    z = np.array([2.0, 0.0, 0.0, 0.0])
    r = np.array([0.0, 2 * math.sqrt(3), 0.0, 0.0])
    r2 = np.array([0.0, 0.0, math.sqrt(6), math.sqrt(6)])
    assert r @ r == pytest.approx(3 * (z @ z)) and r2 @ r2 == pytest.approx(3 * (z @ z))
    assert r @ z == 0 and r2 @ z == 0 and r @ r2 == 0
    zs, icl, ft = h(z), h(z + r), h(z + r2)
    assert M.simaou(zs, icl, ft, normalize=True) == pytest.approx([0.25])
    assert M.simaou(zs, icl, ft, normalize=False) == pytest.approx([0.0], abs=1e-12)


def test_paper_analytic_example_holds_in_high_dimension():
    rng = np.random.default_rng(0)
    d = 64
    z = rng.standard_normal(d)
    basis, _ = np.linalg.qr(np.stack([z, rng.standard_normal(d), rng.standard_normal(d)], 1))
    r = basis[:, 1] * math.sqrt(3) * np.linalg.norm(z)
    r2 = basis[:, 2] * math.sqrt(3) * np.linalg.norm(z)
    got = M.simaou(h(z), h(z + r), h(z + r2), normalize=True)
    assert got == pytest.approx([0.25])


@pytest.mark.parametrize("normalize", [False, True])
def test_simaou_identical_and_negated_updates(normalize):
    rng = np.random.default_rng(1)
    zs = rng.standard_normal((3, 2, 8))
    u = 0.1 * rng.standard_normal((3, 2, 8))
    assert M.simaou(zs, zs + u, zs + u, normalize=normalize) == pytest.approx([1.0, 1.0])
    if not normalize:  # negation is exact only for the raw updates
        assert M.simaou(zs, zs + u, zs - u, normalize=False) == pytest.approx([-1.0, -1.0])


def test_simaou_scaling_an_update_does_not_change_it():
    rng = np.random.default_rng(2)
    zs, u, v = (rng.standard_normal((4, 3, 16)) for _ in range(3))
    base = M.simaou(zs, zs + u, zs + v, normalize=False)
    assert M.simaou(zs, zs + 7.5 * u, zs + 0.01 * v, normalize=False) == pytest.approx(base)
    # and it is symmetric in ICL and FT
    assert M.simaou(zs, zs + v, zs + u, normalize=False) == pytest.approx(base)


def test_simaou_averages_examples_per_layer():
    # example 0: layer cosines (1, 0); example 1: (-1, 1) -> per layer (0, 0.5)
    zs = np.zeros((2, 2, 2))
    icl = np.array([[[1.0, 0], [1, 0]], [[1, 0], [0, 1]]])
    ft = np.array([[[2.0, 0], [0, 1]], [[-1, 0], [0, 3]]])
    per_layer = M.simaou(zs, icl, ft, normalize=False)
    assert per_layer == pytest.approx([0.0, 0.5])
    assert M.layer_mean(per_layer) == pytest.approx(0.25)


def test_simaou_low_precision_inputs_match_float64():
    rng = np.random.default_rng(3)
    zs, icl, ft = (rng.standard_normal((5, 2, 32)) for _ in range(3))
    ref = M.simaou(zs, icl, ft, normalize=True)
    low = M.simaou(*(a.astype(np.float32) for a in (zs, icl, ft)), normalize=True)
    assert low == pytest.approx(ref, abs=1e-6)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    zs, icl, ft = (rng.standard_normal((7, 3, 10)) for _ in range(3))
    m = rng.standard_normal((3, 7, 3, 2, 6))
    lengths = np.array([6, 1, 3, 4, 6, 2, 5])
    big = (M.simaou(zs, icl, ft, normalize=True), M.random_simaou(zs, icl, seed=5), M.simam_delta(*m, lengths))
    monkeypatch.setattr(M, "CHUNK", 2)
    small = (M.simaou(zs, icl, ft, normalize=True), M.random_simaou(zs, icl, seed=5), M.simam_delta(*m, lengths))
    for a, b in zip(big, small):
        assert a == pytest.approx(b, abs=1e-15)


# ----------------------------------------------------------------------------------- random SimAOU


def test_random_simaou_matches_its_definition():
    rng = np.random.default_rng(6)
    zs, icl = rng.standard_normal((4, 2, 5)), rng.standard_normal((4, 2, 5))
    update = M.l2_normalize(icl) - M.l2_normalize(zs)
    r_u = np.random.default_rng(11).random((4, 2, 5))
    r_g = np.random.default_rng(11).standard_normal((4, 2, 5))
    assert M.random_simaou(zs, icl, seed=11) == pytest.approx(list(M.cosine(update, r_u).mean(0)))
    assert M.random_simaou(zs, icl, seed=11, dist="gauss") == pytest.approx(list(M.cosine(update, r_g).mean(0)))
    raw = M.random_simaou(zs, icl, seed=11, normalize=False)
    assert raw == pytest.approx(list(M.cosine(icl - zs, r_u).mean(0)))


def test_random_simaou_is_deterministic_per_seed():
    rng = np.random.default_rng(7)
    zs, icl = rng.standard_normal((6, 3, 12)), rng.standard_normal((6, 3, 12))
    for dist in ("uniform", "gauss"):
        a = M.random_simaou(zs, icl, seed=3, dist=dist)
        assert a == M.random_simaou(zs, icl, seed=3, dist=dist)
        assert a != M.random_simaou(zs, icl, seed=4, dist=dist)


def test_gaussian_baseline_is_near_zero_uniform_is_not_neutral():
    rng = np.random.default_rng(8)
    n, L, d = 300, 2, 256
    zs = rng.standard_normal((n, L, d))
    icl = zs + rng.standard_normal((n, L, d))
    gauss = M.random_simaou(zs, icl, seed=0, dist="gauss")
    assert max(abs(v) for v in gauss) < 0.02  # std of the mean ≈ 1/√(d n) ≈ 0.004
    # an all-positive update: U[0,1) directions have mean 0.5, so cos ≈ 0.5/√(1/3) ≈ 0.87
    icl_pos = zs + 0.5
    uni = M.random_simaou(zs, icl_pos, seed=0, normalize=False)
    assert uni == pytest.approx([math.sqrt(3) / 2] * L, abs=0.02)
    assert max(abs(v) for v in M.random_simaou(zs, icl_pos, seed=0, dist="gauss", normalize=False)) < 0.02


# ----------------------------------------------------------------------------------- SimAM


def hand_maps():
    """n=2, L=1, H=2; example 0 has 2 tokens, example 1 has 3 (zero-padded on the right).

    Per-head cosines: ex0 (1/√2, 1), ex1 (0, -1) -> head means (1/√2+1)/2, -1/2 -> layer (1/√2)/4."""
    a = np.zeros((2, 1, 2, 3))
    b = np.zeros((2, 1, 2, 3))
    a[0, 0, 0, :2], b[0, 0, 0, :2] = [1, 0], [1, 1]
    a[0, 0, 1, :2], b[0, 0, 1, :2] = [1, 2], [2, 4]
    a[1, 0, 0], b[1, 0, 0] = [1, 0, 0], [0, 1, 0]
    a[1, 0, 1], b[1, 0, 1] = [1, 1, 1], [-1, -1, -1]
    return a, b, np.array([2, 3])


def test_simam_hand_case():
    a, b, lengths = hand_maps()
    per_head = M.simam_per_head(a, b, lengths)
    assert per_head[:, 0] == pytest.approx(np.array([[1 / SQ2, 1.0], [0.0, -1.0]]))
    assert M.simam(a, b, lengths) == pytest.approx([1 / SQ2 / 4])


def test_simam_zero_padding_and_padding_content_do_not_matter():
    a, b, lengths = hand_maps()
    want = M.simam(a, b, lengths)
    # more zero columns on the right
    pad = [(0, 0)] * 3 + [(0, 5)]
    assert M.simam(np.pad(a, pad), np.pad(b, pad), lengths) == pytest.approx(want)
    # garbage (even NaN) past each example's length is ignored
    a2, b2 = a.copy(), b.copy()
    a2[0, ..., 2], b2[0, ..., 2] = np.nan, 123.0
    assert M.simam(a2, b2, lengths) == pytest.approx(want)
    # the authors' left zero-padding, read as full-length maps, gives the same cosines
    left_a = np.concatenate([np.zeros((2, 1, 2, 4)), a], -1)
    left_b = np.concatenate([np.zeros((2, 1, 2, 4)), b], -1)
    left_a[0], left_b[0] = np.roll(left_a[0], 1, -1), np.roll(left_b[0], 1, -1)  # right-align ex 0
    assert M.simam(left_a, left_b, np.array([7, 7])) == pytest.approx(want)


def test_simam_delta_zero_padding_is_inert():
    rng = np.random.default_rng(9)
    zs, icl, ft = (rng.standard_normal((3, 2, 4, 5)) for _ in range(3))
    lengths = np.array([5, 2, 3])
    for m in (zs, icl, ft):
        for i, n in enumerate(lengths):
            m[i, ..., n:] = 0.0
    want = M.simam_delta(zs, icl, ft, lengths)
    pad = [(0, 0)] * 3 + [(0, 3)]
    assert M.simam_delta(*(np.pad(m, pad) for m in (zs, icl, ft)), lengths) == pytest.approx(want)
    # the same maps cut to their lengths, one example at a time
    for i, n in enumerate(lengths):
        one = [m[i : i + 1, ..., :n] for m in (zs, icl, ft)]
        assert M.simam_delta_per_head(*one, [n]) == pytest.approx(M.simam_delta_per_head(zs, icl, ft, lengths)[i : i + 1])


def test_simam_delta_and_alpha_hand_case():
    # one example, one layer, one head: zs (1,1,1), icl (2,1,1) -> (1,0,0); ft (1,1,3) -> (0,0,2)
    zs = np.array([1.0, 1, 1]).reshape(1, 1, 1, 3)
    icl = np.array([2.0, 1, 1]).reshape(1, 1, 1, 3)
    ft = np.array([2.0, 2, 1]).reshape(1, 1, 1, 3)  # update (1,1,0) -> cos 1/√2
    assert M.simam_delta(zs, icl, ft, [3]) == pytest.approx([1 / SQ2])
    assert M.simam_delta(zs, icl, icl, [3]) == pytest.approx([1.0])
    assert M.simam_delta(zs, icl, 2 * zs - icl, [3]) == pytest.approx([-1.0])  # negated update
    assert M.simam_delta(zs, icl, zs + 5 * (icl - zs), [3]) == pytest.approx([1.0])  # scaled update
    # the raw SimAM of the same maps is dominated by the shared zero-shot map
    assert M.simam(icl, ft, [3])[0] == pytest.approx(7 / (math.sqrt(6) * 3))
    assert M.alpha(zs, icl, ft, [3]) == pytest.approx([1 / SQ2])


def test_aggregation_is_heads_then_examples_then_layers():
    # L=2, H=2, two examples of different lengths
    a = np.zeros((2, 2, 2, 4))
    b = np.zeros((2, 2, 2, 4))
    lengths = np.array([1, 4])
    a[0, :, :, 0], b[0, :, :, 0] = 1.0, 1.0  # ex 0: every head cos 1
    a[1, 0, 0], b[1, 0, 0] = [1, 0, 0, 0], [0, 1, 0, 0]  # ex 1, layer 0: heads 0, 1
    a[1, 0, 1], b[1, 0, 1] = [10, 10, 0, 0], [10, 10, 0, 0]
    a[1, 1, 0], b[1, 1, 0] = [1, 1, 0, 0], [1, -1, 0, 0]  # ex 1, layer 1: heads 0, 0
    a[1, 1, 1], b[1, 1, 1] = [1, 0, 0, 0], [0, 0, 0, 1]
    per_head = M.simam_per_head(a, b, lengths)
    assert per_head == pytest.approx(np.array([[[1, 1], [1, 1]], [[0, 1], [0, 0]]], float))
    per_layer = M.simam(a, b, lengths)
    assert per_layer == pytest.approx([(1 + 0.5) / 2, (1 + 0) / 2])  # heads -> examples
    assert M.layer_mean(per_layer) == pytest.approx(0.625)
    # not one cosine per example over all heads concatenated (ex 1, layer 0 would be 200/201)
    concat = M.cosine(a.reshape(2, 2, -1), b.reshape(2, 2, -1)).mean(0)
    assert list(concat) != pytest.approx(per_layer)
    # not weighted by map length (a token-count-weighted mean over examples)
    weighted = (per_head.mean(2) * lengths[:, None]).sum(0) / lengths.sum()
    assert list(weighted) != pytest.approx(per_layer)
    # with equal counts at every level the nested means equal the flat mean of per-head cosines
    assert M.layer_mean(per_layer) == pytest.approx(per_head.mean())


# ----------------------------------------------------------------------------------- Rec2FTP

GOLD = [0, 1, 1, 0, 1, 0]
ZS = [1, 1, 0, 1, 0, 0]  # wrong on 0, 2, 3, 4
FT = [0, 1, 1, 1, 1, 1]  # right on 0, 1, 2, 4  -> FT>ZS = {0, 2, 4}
ICL = [0, 0, 1, 1, 0, 0]  # right on 0, 2, 5   -> both = {0, 2}


def test_rec2ftp_hand_table():
    assert M.rec2ftp_counts(ZS, ICL, FT, GOLD) == (2, 3)
    assert M.rec2ftp(ZS, ICL, FT, GOLD) == pytest.approx(200 / 3)
    assert M.rec2ftp(ZS, FT, FT, GOLD) == pytest.approx(100.0)
    assert M.rec2ftp(ZS, ZS, FT, GOLD) == pytest.approx(0.0)


def test_rec2ftp_undefined_is_nan_not_zero():
    assert math.isnan(M.rec2ftp(GOLD, ICL, GOLD, GOLD))  # ZS already right everywhere
    assert M.rec2ftp_counts(GOLD, ICL, GOLD, GOLD) == (0, 0)
    assert M.json_float(M.rec2ftp(GOLD, ICL, GOLD, GOLD)) is None
    assert M.json_float(0.5) == 0.5


# ----------------------------------------------------------------------------------- all_metrics


def fake_results(n=5, L=3, H=2, d=8, q=6, seed=0, kind="dataclass"):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, q + 1, n)
    lengths[0] = q
    gold = rng.integers(0, 2, n)
    out = []
    for _ in range(3):
        maps = rng.standard_normal((n, L, H, q)).astype(np.float32)
        pad = np.arange(q)[None, None, None, :] >= lengths[:, None, None, None]
        maps = np.where(pad, 0.0, maps).astype(np.float32)  # zero padding as icl.py writes it
        rec = {"attn_out": rng.standard_normal((n, L, d)).astype(np.float32), "attn_scores": maps,
               "resid_post": rng.standard_normal((n, L, d)).astype(np.float32)}
        preds = rng.integers(0, 2, n)
        if kind == "dataclass":
            out.append(EvalResult(scores=np.zeros((n, 2)), predictions=preds, records=rec,
                                  map_lengths=lengths.copy(), prefix_len=0))
        else:
            out.append({"records": rec, "map_lengths": lengths.copy(), "predictions": preds})
    return out, gold


def test_all_metrics_schema_and_values():
    (zs, icl, ft), gold = fake_results()
    got = M.all_metrics(zs, icl, ft, gold=gold, seed=2)
    assert set(got["per_layer"]) == set(M.PER_LAYER_KEYS)
    assert set(got["scalar"]) == set(M.PER_LAYER_KEYS) | {"rec2ftp"}
    for key, values in got["per_layer"].items():
        assert len(values) == 3 and all(type(v) is float for v in values)
        assert got["scalar"][key] == pytest.approx(np.mean(values))
    hz, hi, hf = (r.records["attn_out"] for r in (zs, icl, ft))
    mz, mi, mf = (r.records["attn_scores"] for r in (zs, icl, ft))
    L = zs.map_lengths
    pl = got["per_layer"]
    assert pl["simaou_norm"] == pytest.approx(M.simaou(hz, hi, hf, normalize=True))
    assert pl["simaou"] == pytest.approx(M.simaou(hz, hi, hf, normalize=False))
    assert pl["simam"] == pytest.approx(M.simam(mi, mf, L))
    assert pl["zsl_simam"] == pytest.approx(M.simam(mi, mz, L))
    assert pl["simam_delta"] == pytest.approx(M.simam_delta(mz, mi, mf, L))
    assert pl["random_simaou"] == pytest.approx(M.random_simaou(hz, hi, seed=2))
    assert pl["random_simaou_gauss"] == pytest.approx(M.random_simaou(hz, hi, seed=2, dist="gauss"))
    both, fixed = M.rec2ftp_counts(zs.predictions, icl.predictions, ft.predictions, gold)
    assert got["counts"] == {"n": 5, "rec2ftp_both": both, "rec2ftp_ft_gt_zs": fixed}
    # per example (for the bootstrap): their mean is the scalar, and each is that example's own value
    assert set(got["per_example"]) == set(M.PER_EXAMPLE_METRICS) - {M.TOKENWISE_KEY}  # not asked for
    for key, values in got["per_example"].items():
        assert len(values) == 5 and np.mean(values) == pytest.approx(got["scalar"][key], abs=1e-12)
    first = fake_results()[0]
    alone = [{"records": {k: v[2:3] for k, v in r.records.items()}, "map_lengths": r.map_lengths[2:3],
              "predictions": r.predictions[2:3]} for r in first]  # fmt: skip
    by_itself = M.all_metrics(*alone, gold=gold[2:3], seed=2)
    for key in got["per_example"]:
        assert got["per_example"][key][2] == pytest.approx(by_itself["scalar"][key], abs=1e-12)
    json.dumps(got, allow_nan=False)


def test_tokenwise_simaou_by_hand():
    # one example, one layer, d = 2, three token slots of which two are the query's
    zs = np.zeros((1, 1, 2, 3))
    icl = np.array([[[[1.0, 1.0, np.nan], [0.0, 0.0, np.nan]]]])  # token 0: (1, 0); token 1: (1, 0)
    ft = np.array([[[[2.0, 0.0, 5.0], [0.0, 3.0, 5.0]]]])  # token 0: (2, 0) -> cos 1; token 1: (0, 3) -> cos 0
    assert M.tokenwise_simaou_per_example(zs, icl, ft, [2]).tolist() == [[0.5]]
    assert M.tokenwise_simaou(zs, icl, ft, [1]) == [1.0]  # only the first token counts
    with pytest.raises(InputError, match="h_icl: non-finite value"):
        M.tokenwise_simaou(zs, icl, ft, [3])  # the NaN slot is now a query token
    with pytest.raises(InputError, match=r"token records \[n, L, d, Q\]"):
        M.tokenwise_simaou(zs[0], icl[0], ft[0], [2])


def test_all_metrics_adds_tokenwise_simaou_when_its_records_are_there():
    (zs, icl, ft), gold = fake_results(kind="dict")
    rng = np.random.default_rng(5)
    q = zs["records"]["attn_scores"].shape[-1]
    for r in (zs, icl, ft):
        r["records"]["attn_out@all"] = rng.standard_normal((5, 3, 8, q)).astype(np.float32)
    got = M.all_metrics(zs, icl, ft, gold=gold, seed=0)
    want = M.tokenwise_simaou(*(r["records"]["attn_out@all"] for r in (zs, icl, ft)), zs["map_lengths"])
    assert got["per_layer"][M.TOKENWISE_KEY] == pytest.approx(want)
    assert np.mean(got["per_example"][M.TOKENWISE_KEY]) == pytest.approx(got["scalar"][M.TOKENWISE_KEY])


def test_all_metrics_accepts_dicts_and_is_deterministic():
    (zs, icl, ft), gold = fake_results(kind="dict")
    a = M.all_metrics(zs, icl, ft, gold=list(gold), seed=1)
    assert a == M.all_metrics(zs, icl, ft, gold=gold, seed=1)
    b = M.all_metrics(zs, icl, ft, gold=gold, seed=9)
    assert a["per_layer"]["simam"] == b["per_layer"]["simam"]
    assert a["per_layer"]["random_simaou"] != b["per_layer"]["random_simaou"]


def test_all_metrics_rec2ftp_undefined_is_json_null():
    (zs, icl, ft), gold = fake_results(kind="dict")
    zs["predictions"] = gold.copy()  # ZS right everywhere: no example for FT to fix
    got = M.all_metrics(zs, icl, ft, gold=gold, seed=0)
    assert got["scalar"]["rec2ftp"] is None and got["counts"]["rec2ftp_ft_gt_zs"] == 0
    assert '"rec2ftp": null' in json.dumps(got, allow_nan=False)


def test_all_metrics_uses_only_valid_map_entries():
    (zs, icl, ft), gold = fake_results(kind="dict")
    want = M.all_metrics(zs, icl, ft, gold=gold, seed=0)
    for r in (zs, icl, ft):  # wider padding with junk past each length
        m = np.pad(r["records"]["attn_scores"], [(0, 0)] * 3 + [(0, 2)], constant_values=9.0)
        m = np.where(np.arange(m.shape[-1]) >= r["map_lengths"][:, None, None, None], 9.0, m)
        r["records"]["attn_scores"] = m
    assert M.all_metrics(zs, icl, ft, gold=gold, seed=0) == want


def test_alpha_metrics():
    (zs, lcgd, gd), _ = fake_results(kind="dict")
    got = M.alpha_metrics(zs, lcgd, gd)
    mz, ml, mg = (r["records"]["attn_scores"] for r in (zs, lcgd, gd))
    assert got["per_layer"]["alpha"] == pytest.approx(M.alpha(mz, ml, mg, zs["map_lengths"]))
    assert got["scalar"]["alpha"] == pytest.approx(np.mean(got["per_layer"]["alpha"]))


# ----------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "shapes, word",
    [(((2, 3, 4), (3, 3, 4), (2, 3, 4)), "h_icl"), (((2, 3, 4), (2, 2, 4), (2, 3, 4)), "(2, 2, 4)"),
     (((2, 3, 4), (2, 3, 4), (2, 3, 5)), "h_ft (2, 3, 5)"), (((2, 3), (2, 3), (2, 3)), "3 dims")],
)
def test_simaou_shape_mismatch(shapes, word):
    arrays = [np.ones(s) for s in shapes]
    with pytest.raises(InputError, match=word.replace("(", r"\(").replace(")", r"\)")):
        M.simaou(*arrays, normalize=True)


def test_empty_input_refused():
    with pytest.raises(InputError, match="empty"):
        M.simaou(np.ones((0, 2, 3)), np.ones((0, 2, 3)), np.ones((0, 2, 3)), normalize=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_hidden_refused(bad):
    x = np.ones((3, 2, 4))
    y = x.copy()
    y[2, 1, 3] = bad
    with pytest.raises(InputError, match=r"h_icl: non-finite value .* at index \(2, 1, 3\)"):
        M.simaou(x, y, 2 * x, normalize=False)
    with pytest.raises(InputError, match="h_icl"):
        M.random_simaou(x, y, seed=0)


def test_nonfinite_map_refused_only_inside_valid_length():
    a, b, lengths = hand_maps()
    a[1, 0, 1, 2] = np.inf  # example 1 has 3 valid tokens: index 2 is real
    with pytest.raises(InputError, match=r"m_a: non-finite value inf at index \(1, 0, 1, 2\)"):
        M.simam(a, b, lengths)
    a, b, lengths = hand_maps()
    a[0, 0, 1, 2] = np.nan  # example 0 has 2 tokens: index 2 is padding
    M.simam(a, b, lengths)


def test_map_shape_and_length_refusals():
    a, b, lengths = hand_maps()
    with pytest.raises(InputError, match="shape mismatch"):
        M.simam(a, b[:, :, :1], lengths)
    with pytest.raises(InputError, match="map length 4 > map width 3"):
        M.simam(a, b, [2, 4])
    with pytest.raises(InputError, match="map length 0"):
        M.simam(a, b, [0, 3])
    with pytest.raises(InputError, match=r"expected shape \(2,\)"):
        M.simam(a, b, [2, 3, 3])
    with pytest.raises(InputError, match="integers"):
        M.simam(a, b, [2.5, 3])


def test_rec2ftp_length_mismatch_refused():
    with pytest.raises(InputError, match="ft_pred"):
        M.rec2ftp(ZS, ICL, FT[:-1], GOLD)


def test_all_metrics_refusals_name_settings():
    def fresh():
        return fake_results(kind="dict")

    (zs, icl, ft), gold = fresh()
    ft["records"]["attn_out"] = ft["records"]["attn_out"][:, :, :7]
    with pytest.raises(InputError, match=r"ft\.records\['attn_out'\] \(5, 3, 7\)"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    icl["records"]["attn_scores"] = icl["records"]["attn_scores"][:, :2]
    with pytest.raises(InputError, match=r"icl\.records\['attn_scores'\] \(5, 2, 2, 6\)"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    icl["map_lengths"] = icl["map_lengths"].copy()
    icl["map_lengths"][3] += 1 if icl["map_lengths"][3] < 6 else -1
    with pytest.raises(InputError, match="map_lengths differ between settings: example 3"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    zs["records"]["attn_out"] = zs["records"]["attn_out"].copy()
    zs["records"]["attn_out"][1, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"zs\.records\['attn_out'\]: non-finite"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    with pytest.raises(InputError, match="gold"):
        M.all_metrics(zs, icl, ft, gold=gold[:-1], seed=0)

    (zs, icl, ft), gold = fresh()
    for r in (zs, icl, ft):
        r["records"]["attn_out"] = r["records"]["attn_out"][:4]
    with pytest.raises(InputError, match="number of examples differs"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    del icl["records"]["attn_scores"]
    with pytest.raises(InputError, match=r"icl\.records has no 'attn_scores'"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    del ft["predictions"]
    with pytest.raises(InputError, match="ft: no 'predictions'"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=0)

    (zs, icl, ft), gold = fresh()
    with pytest.raises(InputError, match="seed"):
        M.all_metrics(zs, icl, ft, gold=gold, seed=1.5)


# ----------------------------------------------------------------------------------- torch parity


def test_parity_with_torch_reference_of_the_authors_pipeline():
    """The authors' metrics.py recipe, written in torch: F.normalize, F.cosine_similarity, maps
    left-padded with 0 to the longest, mean over heads then examples (docs/method.md#metrics)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(12)
    n, L, H, d = 6, 3, 2, 9
    hz, hi, hf = (rng.standard_normal((n, L, d)) for _ in range(3))
    lengths = np.array([4, 1, 3, 4, 2, 4])
    ragged = [[rng.standard_normal((L, H, k)) for k in lengths] for _ in range(3)]

    def t(x):
        return torch.tensor(np.asarray(x), dtype=torch.float64)

    def torch_simaou(normalize):
        z, i, f = (F.normalize(t(x), p=2, dim=-1) if normalize else t(x) for x in (hz, hi, hf))
        return F.cosine_similarity(i - z, f - z, dim=-1).mean(0).numpy()

    def left_pad(maps):
        width = max(m.shape[-1] for m in maps)
        return t(np.stack([np.concatenate([np.zeros((L, H, width - m.shape[-1])), m], -1) for m in maps]))

    mz, mi, mf = (left_pad(r) for r in ragged)
    ref = {
        "simaou_norm": torch_simaou(True),
        "simaou": torch_simaou(False),
        "simam": F.cosine_similarity(mi, mf, dim=-1).mean(2).mean(0).numpy(),
        "zsl_simam": F.cosine_similarity(mi, mz, dim=-1).mean(2).mean(0).numpy(),
        "simam_delta": F.cosine_similarity(mi - mz, mf - mz, dim=-1).mean(2).mean(0).numpy(),
    }
    r = np.random.default_rng(5).random((n, L, d))
    z, i = F.normalize(t(hz), dim=-1), F.normalize(t(hi), dim=-1)
    ref["random_simaou"] = F.cosine_similarity(i - z, t(r), dim=-1).mean(0).numpy()

    def right_pad(maps):  # the layout icl.py writes
        out = np.zeros((n, L, H, 4))
        for k, m in enumerate(maps):
            out[k, ..., : m.shape[-1]] = m
        return out

    settings = [
        {"records": {"attn_out": hx, "attn_scores": right_pad(r)}, "map_lengths": lengths, "predictions": np.zeros(n)}
        for hx, r in zip((hz, hi, hf), ragged)
    ]
    got = M.all_metrics(*settings, gold=np.zeros(n), seed=5)["per_layer"]
    for key, want in ref.items():
        assert got[key] == pytest.approx(list(want), abs=1e-12), key
