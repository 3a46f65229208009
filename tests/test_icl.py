"""The prefix-cached ICL evaluator (`jaxicl.engine.scoring.evaluate`) against a plain full recompute.

Tiny random models built from configs: a Gemma-3-like one (QK-norm, post-norms, (1 + w) norms,
soft-capped logits, local layers whose sliding window (5) is much shorter than the prompts, so the
cache's positions and window both matter) and a Llama-like one with grouped-query attention.
Weights are drawn well away from init_params' near-identity so every mistake moves the numbers.

The reference never uses the cache: each whole prompt (prefix + query + candidate) goes through
`forward` in one causal pass, right-padded with ordinary tokens to one shared length so a batch
needs one compile; causality alone keeps the padding out of every real position.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl.engine.scoring import RECORD_TAPS, EvalOptions, evaluate, evaluate_many, length_batches, split_shared
from jaxicl.engine.transforms import flatten, unflatten
from jaxicl.errors import InputError
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import init_params
from jaxicl.models.transformer import forward

VOCAB = 97
BOS = 2
SCORE_TOL = 1e-4  # cached vs full recompute, summed log-probs
RECORD_TOL = 1e-4  # cached vs full recompute, activations (relative to their scale)
SAME_TOL = 1e-5  # batch size / padding: only the summation order of XLA's kernels may differ
REF_LEN = 128  # the reference's padded length (longest prompt here: 70 + 14 + 3 = 87)

CONFIGS = {
    "gemma3": ModelConfig(
        family="gemma3", vocab_size=VOCAB, d_model=32, n_layers=3, n_heads=4, n_kv_heads=1, head_dim=8,
        d_ff=48, max_positions=256, norm_plus_one=True, sliding_window=5, layer_is_local=(True, False, True),
        qk_norm=True, post_norms=True, activation="gelu_tanh", embed_scale=32**0.5, query_scale=16**-0.5,
        final_logit_softcap=5.0, rope_base=1000.0, rope_local_base=50.0, rope_scaling_factor=2.0,
        bos_token_id=BOS, eos_token_id=1, pad_token_id=0,
    ),
    "llama": ModelConfig(
        family="llama", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
        d_ff=48, max_positions=256, norm_eps=1e-5, rope_base=500.0, tie_embeddings=False,
        bos_token_id=BOS, eos_token_id=1, pad_token_id=0,
    ),
}  # fmt: skip

SINGLE = ((5,), (7,), (40,))  # one token per label word: one row scores every class
MULTI = ((5, 9), (5, 10, 4), (7,))  # several tokens, a shared first token, unequal lengths

_rng = np.random.default_rng(0)
QUERIES = [list(_rng.integers(3, VOCAB, n)) for n in (1, 9, 14, 6, 11, 3, 8)]
ICL_PREFIX = [BOS] + list(_rng.integers(3, VOCAB, 69))  # 70 tokens: past one 64-token pad bucket
ZS_PREFIX = [BOS]


def _random_params(config: ModelConfig, seed: int = 0) -> dict:
    """init_params plus large noise on every leaf, norms and biases included."""
    rng = np.random.default_rng(seed)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(seed))  # one compile, not one per leaf
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.3 * rng.standard_normal(x.shape), jnp.float32), params)


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    config = CONFIGS[request.param]
    return config, _random_params(config)


_full_forward = jax.jit(
    lambda params, config, ids: forward(params, config, ids, taps=RECORD_TAPS),
    static_argnums=(1,),
)


def _full(config, params, sequences: list[list[int]]):
    """Log-softmax over every position and the taps at every position, [N, T, ...] each."""
    assert max(map(len, sequences)) <= REF_LEN
    ids = np.full((len(sequences), REF_LEN), 3, np.int32)  # ordinary tokens; causality hides them
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
    out = _full_forward(params, config, jnp.asarray(ids))
    logp = np.asarray(jax.nn.log_softmax(out.logits, axis=-1), np.float64)
    taps = {name: np.moveaxis(np.asarray(x), 0, 1) for name, x in out.taps.items()}  # [N, L, T, ...]
    return logp, taps


def _reference_scores(config, params, prefix, queries, candidates) -> np.ndarray:
    seqs = [prefix + q + list(c) for q in queries for c in candidates]
    logp, _ = _full(config, params, seqs)
    out = np.zeros((len(queries), len(candidates)))
    for n, q in enumerate(queries):
        for c, cand in enumerate(candidates):
            row = logp[n * len(candidates) + c]
            start = len(prefix) + len(q) - 1  # the position predicting the candidate's first token
            out[n, c] = sum(row[start + j, tok] for j, tok in enumerate(cand))
    return out


def _assert_close(got, want, tol, what):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g} > {tol * scale:.3g}"


# --- 1. scores ---------------------------------------------------------------------------------


@pytest.mark.parametrize("candidates", [SINGLE, MULTI], ids=["single-token", "multi-token"])
@pytest.mark.parametrize("prefix", [ZS_PREFIX, ICL_PREFIX], ids=["zero-shot", "icl"])
def test_cached_scores_equal_full_recompute(model, prefix, candidates):
    config, params = model
    result = evaluate(params, config, prefix, QUERIES, candidates, EvalOptions(batch_size=4))
    want = _reference_scores(config, params, prefix, QUERIES, candidates)
    assert result.scores.shape == (len(QUERIES), len(candidates))
    for n in range(len(QUERIES)):
        _assert_close(result.scores[n], want[n], SCORE_TOL, f"example {n} scores")
    np.testing.assert_array_equal(result.predictions, np.argmax(result.scores, axis=1))
    assert result.prefix_len == len(prefix)
    # The scores discriminate: classes differ by far more than the tolerance.
    assert np.abs(np.diff(want, axis=1)).min() > 100 * SCORE_TOL


def test_prefix_changes_scores(model):
    """Guard for the test above: demonstrations do move the scores (the cache is really used)."""
    config, params = model
    zs = evaluate(params, config, ZS_PREFIX, QUERIES, SINGLE, EvalOptions(batch_size=4))
    icl = evaluate(params, config, ICL_PREFIX, QUERIES, SINGLE, EvalOptions(batch_size=4))
    assert np.abs(zs.scores - icl.scores).min() > 1e-3


# --- 2. records --------------------------------------------------------------------------------


@pytest.mark.parametrize("candidates", [SINGLE, MULTI], ids=["single-token", "multi-token"])
@pytest.mark.parametrize("probe", ["label", "last"])
def test_records_equal_full_forward(model, probe, candidates):
    config, params = model
    by_prefix = {}
    for name, prefix in (("zs", ZS_PREFIX), ("icl", ICL_PREFIX)):
        result = evaluate(params, config, prefix, QUERIES, candidates, EvalOptions(batch_size=4, probe=probe))
        # Records come from candidate 0's row: the probe "label" is candidate 0's first token.
        _, taps = _full(config, params, [prefix + q + list(candidates[0]) for q in QUERIES])
        width = max(len(q) for q in QUERIES) + (probe == "label")
        assert result.records["attn_scores"].shape == (len(QUERIES), config.n_layers, config.n_heads, width)
        for n, q in enumerate(QUERIES):
            probe_in_query = len(q) if probe == "label" else len(q) - 1
            assert result.map_lengths[n] == probe_in_query + 1
            at = len(prefix) + probe_in_query  # the probe's position in the whole prompt
            for tap in ("attn_out", "resid_post"):
                _assert_close(result.records[tap][n], taps[tap][n, :, at], RECORD_TOL, f"{name} {tap} ex {n}")
            # Scaled pre-softmax logits of the probe over the query's keys: prefix end .. probe.
            want = taps["attn_scores"][n, :, at, :, len(prefix) : at + 1]  # [L, H, map_len]
            got = result.records["attn_scores"][n]
            _assert_close(got[..., : result.map_lengths[n]], want, RECORD_TOL, f"{name} attn_scores ex {n}")
            assert not got[..., result.map_lengths[n] :].any(), "the map's padding must be zeros"
        by_prefix[name] = result
    np.testing.assert_array_equal(by_prefix["zs"].map_lengths, by_prefix["icl"].map_lengths)
    for tap in RECORD_TAPS:
        assert by_prefix["zs"].records[tap].shape == by_prefix["icl"].records[tap].shape


@pytest.mark.parametrize("probe", ["label", "last"])
def test_every_token_records_equal_full_forward_and_the_probe_record(model, probe):
    """attn_out@all: the attention output at every query token up to the probe, token axis last,
    taken in the same pass as the probe's records (its last valid token is the probe record)."""
    config, params = model
    options = EvalOptions(batch_size=4, probe=probe, records=("attn_out", "attn_out@all"))
    result = evaluate(params, config, ICL_PREFIX, QUERIES, SINGLE, options)
    _, taps = _full(config, params, [ICL_PREFIX + q + list(SINGLE[0]) for q in QUERIES])
    tokens = result.records["attn_out@all"]  # [n, L, d, Q]
    assert tokens.shape == (len(QUERIES), config.n_layers, config.d_model, int(result.map_lengths.max()))
    for n, q in enumerate(QUERIES):
        length = int(result.map_lengths[n])
        want = np.moveaxis(taps["attn_out"][n, :, len(ICL_PREFIX) : len(ICL_PREFIX) + length], 1, -1)
        _assert_close(tokens[n, ..., :length], want, RECORD_TOL, f"attn_out@all ex {n}")
        np.testing.assert_array_equal(tokens[n, ..., length - 1], result.records["attn_out"][n])
        assert not tokens[n, ..., length:].any(), "padding must be zeros"


def test_label_probe_is_candidate_zero_first_token(model):
    """Probe "label" sits one past the query: its resid_pre is the embedding of candidate 0's first token."""
    config, params = model
    result = evaluate(params, config, ICL_PREFIX, QUERIES, MULTI, EvalOptions(records=("resid_pre",)))
    emb = np.asarray(params["embed"][MULTI[0][0]]) * config.embed_scale
    for n in range(len(QUERIES)):
        _assert_close(result.records["resid_pre"][n, 0], emb, RECORD_TOL, f"layer-0 input at the probe, ex {n}")


# --- 3. padding and batch size -----------------------------------------------------------------


@pytest.fixture(scope="module")
def batch16(model):
    """The baseline the other batchings are compared with: batch 16, rows padded to 64."""
    config, params = model
    return {
        name: evaluate(params, config, ICL_PREFIX, QUERIES, cands, EvalOptions(batch_size=16, length_multiple=64))
        for name, cands in (("single-token", SINGLE), ("multi-token", MULTI))
    }


@pytest.mark.parametrize("batch_size, multiple", [(1, 64), (3, 64), (16, 8), (3, 8)])
@pytest.mark.parametrize("candidates", ["single-token", "multi-token"])
def test_batch_size_and_padding_do_not_change_numbers(model, batch16, candidates, batch_size, multiple):
    config, params = model
    cands = {"single-token": SINGLE, "multi-token": MULTI}[candidates]
    options = EvalOptions(batch_size=batch_size, length_multiple=multiple)
    _assert_same_result(evaluate(params, config, ICL_PREFIX, QUERIES, cands, options), batch16[candidates])


def test_rows_are_batched_by_sorted_length():
    """Each row scored once; batches of similar lengths, each padded to its own longest row; the one
    partial batch holds the shortest rows (padding rows there cost least)."""
    Row = collections.namedtuple("Row", "name ids")
    rows = [Row(name, (0,) * n) for name, n in zip("abcdefg", (30, 3, 17, 4, 29, 16, 5), strict=True)]
    plan = length_batches(rows, size=3, multiple=8)
    assert [[row.name for row in batch] for batch, _ in plan] == [["b"], ["d", "g", "f"], ["c", "e", "a"]]
    assert [length for _, length in plan] == [8, 16, 32]
    assert [len(b) for b, _ in length_batches(rows, size=7, multiple=8)] == [7]
    assert [len(b) for b, _ in length_batches(rows, size=2, multiple=1)] == [1, 2, 2, 2]


def _assert_same_result(got, want) -> None:
    """Equal up to the summation order of XLA's kernels: scores, predictions, map lengths, records."""
    _assert_close(got.scores, want.scores, SAME_TOL, "scores")
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.map_lengths, want.map_lengths)
    for tap in RECORD_TAPS:
        assert got.records[tap].shape == want.records[tap].shape
        _assert_close(got.records[tap], want.records[tap], SAME_TOL, tap)


@pytest.mark.slow  # 14 s: two vmapped and four single programs per model and case
@pytest.mark.parametrize("prefix, candidates", [(ICL_PREFIX, MULTI), (ZS_PREFIX, SINGLE)], ids=["icl-multi", "zs-single"])
def test_several_models_at_once_equal_each_alone(model, prefix, candidates):
    """evaluate_many (the batched zero-shot evaluation of a task's finetuned models): models that
    share all but their keys (one copy of the rest) and models that share nothing."""
    config, params = model
    flat = dict(flatten(params))
    flat["blocks/k/w"] = flat["blocks/k/w"] * 1.5  # a "finetuned" model: only k differs, the rest the same arrays
    tuned = unflatten(flat)
    other = _random_params(config, seed=1)
    options = EvalOptions(batch_size=4, length_multiple=16)
    shared, stacked = split_shared([params, tuned])
    assert list(flatten(stacked)) == ["blocks/k/w"] and "embed" in flatten(shared)
    for models in ([params, tuned], [params, other]):
        together = evaluate_many(models, config, prefix, QUERIES, candidates, options)
        for got, p in zip(together, models, strict=True):
            _assert_same_result(got, evaluate(p, config, prefix, QUERIES, candidates, options))
    assert not np.allclose(together[0].scores, together[1].scores)  # the models really differ
    flat["blocks/k/w"] = flat["blocks/k/w"][..., :-1]
    with pytest.raises(InputError, match="differ in the shape of blocks/k/w"):
        evaluate_many([params, unflatten(flat)], config, prefix, QUERIES, candidates, options)


# --- 4. determinism ----------------------------------------------------------------------------


def test_same_inputs_give_bit_identical_outputs(model):
    config, params = model
    options = EvalOptions(batch_size=3, length_multiple=64)
    a = evaluate(params, config, ICL_PREFIX, QUERIES, MULTI, options)
    b = evaluate(params, config, list(ICL_PREFIX), [list(q) for q in QUERIES], [tuple(c) for c in MULTI], options)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.map_lengths, b.map_lengths)
    assert a.records.keys() == b.records.keys()
    for tap in a.records:
        assert a.records[tap].dtype == b.records[tap].dtype
        np.testing.assert_array_equal(a.records[tap], b.records[tap])


# --- 5. records do not grow with the prefix ----------------------------------------------------


def test_record_shapes_do_not_depend_on_prefix_length(model):
    config, params = model
    rng = np.random.default_rng(5)
    shapes, layer0_maps = set(), []
    for length in (1, 40, 150):  # cache of 1, 64 and 192 padded positions
        prefix = [BOS] + list(rng.integers(3, VOCAB, length - 1))
        result = evaluate(params, config, prefix, QUERIES, SINGLE, EvalOptions(batch_size=4))
        shapes.add(tuple((tap, x.shape) for tap, x in sorted(result.records.items())))
        np.testing.assert_array_equal(result.map_lengths, [len(q) + 1 for q in QUERIES])
        layer0_maps.append(result.records["attn_scores"][:, 0])
    assert len(shapes) == 1, f"record shapes vary with the prefix: {shapes}"
    (shape,) = shapes
    assert dict(shape)["attn_scores"][-1] == max(len(q) for q in QUERIES) + 1  # no demonstration columns
    # Layer 0 sees only token embeddings, and RoPE makes q.k depend on relative positions only: its
    # map over the query's own keys is the same after any prefix. A map holding prefix columns is not.
    for other in layer0_maps[1:]:
        _assert_close(other, layer0_maps[0], RECORD_TOL, "layer-0 attention map over the query")


# --- 6. bad input ------------------------------------------------------------------------------


def test_out_of_vocabulary_query_is_refused_by_name(model):
    config, params = model
    bad = [list(q) for q in QUERIES]
    bad[3][2] = VOCAB
    with pytest.raises(InputError, match=rf"query 3: token id {VOCAB} is outside the vocabulary \[0, {VOCAB}\)"):
        evaluate(params, config, ICL_PREFIX, bad, SINGLE)
    bad[3][2] = -4
    with pytest.raises(InputError, match="query 3: token id -4"):
        evaluate(params, config, ICL_PREFIX, bad, SINGLE)


def test_out_of_vocabulary_candidate_or_prefix_is_refused(model):
    config, params = model
    with pytest.raises(InputError, match=f"candidate 1: token id {VOCAB + 5}"):
        evaluate(params, config, ICL_PREFIX, QUERIES, ((5,), (7, VOCAB + 5)))
    with pytest.raises(InputError, match=f"prefix: token id {VOCAB + 1} is outside"):
        evaluate(params, config, ICL_PREFIX[:-1] + [VOCAB + 1], QUERIES, SINGLE)


def test_prompt_longer_than_context_window_is_refused(model):
    config, params = model
    # 240 + 14 (query 2, the longest) + 3 (longest candidate) = 257 > 256.
    prefix = [BOS] + [5] * 239
    with pytest.raises(InputError, match=r"query 2: its prompt has 257 tokens .*context window of 256"):
        evaluate(params, config, prefix, QUERIES, MULTI)
    evaluate(params, config, prefix[:-1], QUERIES, MULTI, EvalOptions(records=()))  # 256 fits
    with pytest.raises(InputError, match="query 0: 300 tokens exceed the model's context window of 256"):
        evaluate(params, config, ZS_PREFIX, [[5] * 300], SINGLE)


def test_empty_inputs_are_refused(model):
    config, params = model
    with pytest.raises(InputError, match="query 1: no token ids"):
        evaluate(params, config, ICL_PREFIX, [[5], []], SINGLE)
    with pytest.raises(InputError, match="candidate 0: no token ids"):
        evaluate(params, config, ICL_PREFIX, QUERIES, ((), (7,)))
    with pytest.raises(InputError, match="no queries"):
        evaluate(params, config, ICL_PREFIX, [], SINGLE)
    with pytest.raises(InputError, match="no candidates"):
        evaluate(params, config, ICL_PREFIX, QUERIES, ())


@pytest.mark.parametrize(
    "options, message",
    [
        (EvalOptions(probe="lable"), "probe must be 'label' or 'last'"),
        (EvalOptions(records=("attn_scores", "resid")), "unknown record"),
        (EvalOptions(batch_size=0), "batch_size must be"),
        (EvalOptions(length_multiple=0), "length_multiple must be"),
    ],
)
def test_bad_options_are_refused(model, options, message):
    config, params = model
    with pytest.raises(InputError, match=message):
        evaluate(params, config, ICL_PREFIX, QUERIES, SINGLE, options)
