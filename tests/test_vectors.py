"""Per-head reads and writes of the forward pass (the z tap, head_transform), activation patching
(jaxicl/engine/patching.py) and the task- and function-vector analyses built on them, on the tiny
random models of tests/test_icl.py (a Gemma-3-like one with MQA and post-norms, a Llama-like one
with GQA). Parity with transformers is in test_hf_parity.py, test_families.py, test_real_models.py."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl.analyses import function_vectors as fv
from jaxicl.analyses import task_vectors as tv
from jaxicl.engine import patching
from jaxicl.engine.scoring import EvalOptions, evaluate, evaluate_patched
from jaxicl.engine.transforms import stop_gradient_inputs
from jaxicl.errors import InputError
from jaxicl.models import layers
from jaxicl.models.transformer import forward
from tests.test_experiment import task_spec, tiny_lm  # noqa: F401  (fixtures)
from tests.test_icl import CONFIGS, ICL_PREFIX, MULTI, QUERIES, SINGLE, ZS_PREFIX, _random_params

GOLD = [0, 1, 2, 0, 1, 2, 0]
SAME_TOL = 1e-5


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    config = CONFIGS[request.param]
    return config, _random_params(config)


def _ids(rows):
    t = max(map(len, rows))
    return jnp.asarray([list(r) + [3] * (t - len(r)) for r in rows], jnp.int32)


# --- the forward pass --------------------------------------------------------------------------


def test_z_is_exactly_the_output_projections_input(model):
    config, params = model
    out = forward(params, config, _ids(QUERIES[1:3]), logits_at=None, taps=("z", "attn_out"))
    z = out.taps["z"]  # [L, B, T, H, hd]
    assert z.shape == (config.n_layers, 2, 14, config.n_heads, config.head_dim)
    for layer in range(config.n_layers):
        o = jax.tree.map(lambda x: x[layer], params["blocks"]["o"])
        projected = layers.linear(z[layer].reshape(2, 14, -1), o)
        np.testing.assert_allclose(projected, out.taps["attn_out"][layer], atol=SAME_TOL, rtol=0)


def _zero_head(layer: int, head: int):
    return lambda z, at: jnp.where((at == layer) & (jnp.arange(z.shape[2]) == head)[None, None, :, None], 0.0, z)


def test_head_transform_composes_with_jit_and_records_what_the_projection_reads(model):
    config, params = model
    ids = _ids(QUERIES[:3])
    plain = forward(params, config, ids)
    identity = forward(params, config, ids, head_transform=lambda z, at: z)
    np.testing.assert_array_equal(identity.logits, plain.logits)
    edited = forward(params, config, ids, head_transform=_zero_head(1, 2), taps=("z",))
    jitted = jax.jit(lambda p: forward(p, config, ids, head_transform=_zero_head(1, 2), taps=("z",)))(params)
    np.testing.assert_allclose(jitted.logits, edited.logits, atol=SAME_TOL, rtol=0)
    assert np.all(np.asarray(edited.taps["z"])[1, :, :, 2] == 0)  # the tap reads after the edit
    assert np.any(np.asarray(edited.taps["z"])[0, :, :, 2] != 0)
    assert np.abs(np.asarray(edited.logits) - np.asarray(plain.logits)).max() > 1e-2


def test_head_transform_gradient_equals_finite_differences(model):
    """d loss / d s of a head's output scaled by s, through grad, against central differences."""
    config, params = model
    ids = _ids(QUERIES[1:3])

    def loss(s):
        which = (jnp.arange(config.n_heads) == 1)[None, None, :, None]
        scale = lambda z, at: jnp.where((at == 0) & which, s * z, z)  # noqa: E731
        return jnp.mean(forward(params, config, ids, head_transform=scale).logits[:, -1, 5])

    grad = float(jax.grad(loss)(1.0))
    eps = 1e-2
    numeric = float((loss(1.0 + eps) - loss(1.0 - eps)) / (2 * eps))
    assert abs(grad - numeric) <= 2e-2 * max(abs(numeric), 1e-3), (grad, numeric)
    assert abs(grad) > 1e-4


def test_head_transform_composes_with_block_input_transform_and_vmap(model):
    """With every block input detached (LCGD's transform), the last-position logits get no gradient
    from the layers below the last through z; vmapping edits equals running them one by one."""
    config, params = model
    ids = _ids(QUERIES[1:3])
    last = config.n_layers - 1

    def loss(blocks):
        out = forward(params | {"blocks": blocks}, config, ids, head_transform=_zero_head(last, 0),
                      block_input_transform=stop_gradient_inputs())  # fmt: skip
        return jnp.sum(out.logits[:, -1])

    grads = jax.grad(loss)(params["blocks"])["v"]["w"]
    assert np.all(np.asarray(grads[:last]) == 0) and np.any(np.asarray(grads[last]) != 0)
    heads = jnp.arange(config.n_heads)
    batched = jax.vmap(lambda h: forward(params, config, ids, head_transform=lambda z, at: jnp.where(
        (at == 0) & (jnp.arange(config.n_heads) == h)[None, None, :, None], 0.0, z)).logits)(heads)
    for h in range(config.n_heads):
        np.testing.assert_allclose(batched[h], forward(params, config, ids, head_transform=_zero_head(0, h)).logits,
                                   atol=1e-4, rtol=0)  # fmt: skip


def test_a_patch_after_a_cached_prefix_equals_the_same_patch_in_one_forward(model):
    """The KV cache: patches at the query's last token after a cached prefix equal the same patches
    at the same absolute position of one forward over prefix + query."""
    config, params = model
    prefix, query = ICL_PREFIX[:20], QUERIES[2]
    vector = np.linspace(-1, 1, config.d_model).astype(np.float32)
    patch = patching.stack([patching.residual(config, 1, vector, add=True)]), patching.stack(
        [patching.head_output(config, 1, 3, np.ones(config.head_dim, np.float32))])
    for p in patch:
        one = jax.tree.map(lambda x: x[0], p)
        cache = forward(params, config, jnp.asarray([prefix]), logits_at=None).cache
        block, heads = patching.transforms(one, jnp.asarray([len(query) - 1]), len(query))
        cached = forward(params, config, jnp.asarray([query]), cache=cache, block_input_transform=block,
                         head_transform=heads).logits[0, -1]  # fmt: skip
        full_ids = jnp.asarray([prefix + query])
        block, heads = patching.transforms(one, jnp.asarray([len(prefix) + len(query) - 1]), len(prefix) + len(query))
        full = forward(params, config, full_ids, block_input_transform=block, head_transform=heads).logits[0, -1]
        unpatched = forward(params, config, full_ids).logits[0, -1]
        np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)
        assert np.abs(np.asarray(full) - np.asarray(unpatched)).max() > 1e-3


# --- patching and the analyses -------------------------------------------------------------------


def _patched_scores_by_hand(config, params, prefix, patch) -> np.ndarray:
    """[n, C]: each class's summed candidate log-probs, one full forward per (query, class), the
    patch at the query's last token."""
    full = jax.jit(lambda p, ids, at: jax.nn.log_softmax(forward(p, config, ids[None], **dict(zip(
        ("block_input_transform", "head_transform"), patching.transforms(patch, at[None], ids.shape[0])))).logits[0], -1))
    scores = np.zeros((len(QUERIES), len(MULTI)))
    for n, q in enumerate(QUERIES):
        for c, cand in enumerate(MULTI):
            row = list(prefix) + list(q) + list(cand)
            at = len(prefix) + len(q) - 1
            logp = np.asarray(full(params, jnp.asarray(row + [3] * (128 - len(row)), jnp.int32), jnp.asarray(at)))
            scores[n, c] = sum(logp[at + j, tok] for j, tok in enumerate(cand))
    return scores


def test_evaluate_patched_equals_one_full_forward_per_prompt(model):
    """The split at the probe (tokens before it once, unedited; from it on under each edit) against
    whole prompts through `forward`, for multi-token label words after a cached prefix."""
    config, params = model
    rng = np.random.default_rng(3)
    edits = [patching.residual(config, 1, rng.standard_normal(config.d_model).astype(np.float32), add=True),
             patching.head_output(config, 0, 2, 3 * rng.standard_normal(config.head_dim).astype(np.float32))]  # fmt: skip
    got = evaluate_patched(params, config, ICL_PREFIX, QUERIES, MULTI, patching.stack(edits), EvalOptions(3, "last", ()), 1)
    plain = evaluate(params, config, ICL_PREFIX, QUERIES, MULTI, EvalOptions(3, "last", ()))
    for edit, result in zip(edits, got):
        want = _patched_scores_by_hand(config, params, ICL_PREFIX, edit)
        np.testing.assert_allclose(result.scores, want, atol=1e-4, rtol=0)
        assert np.abs(result.scores - plain.scores).max() > 1e-3  # the edit matters


def test_patching_a_prompts_own_task_vector_into_it_changes_nothing(model):
    config, params = model
    query = [QUERIES[1]]
    own = evaluate(params, config, ICL_PREFIX, query, MULTI, tv.eval_options(4))
    theta = tv.task_vectors(own)  # the mean over one prompt: its own residuals
    patches = patching.stack([patching.residual(config, layer, theta[layer]) for layer in range(config.n_layers)])
    for result in evaluate_patched(params, config, ICL_PREFIX, query, MULTI, patches, EvalOptions(4, "last", ())):
        np.testing.assert_allclose(result.scores, own.scores, atol=SAME_TOL, rtol=0)


def test_a_head_patched_with_its_own_clean_output_has_zero_cie(model):
    config, params = model
    query = [QUERIES[4]]
    own = fv.mean_head_outputs(evaluate(params, config, ICL_PREFIX, query, SINGLE, tv.eval_options(4)))
    cie = fv.cie_grid(params, config, ICL_PREFIX, query, SINGLE, [2], own, batch_size=4, per_batch=3)
    assert cie.shape == (config.n_layers, config.n_heads)
    np.testing.assert_allclose(cie, 0.0, atol=1e-6)


def test_the_vmapped_cie_grid_equals_the_loop(model):
    config, params = model
    icl = evaluate(params, config, ICL_PREFIX, QUERIES, SINGLE, tv.eval_options(4))
    mean_z = fv.mean_head_outputs(icl)
    corrupted = ICL_PREFIX[:40] + ICL_PREFIX[45:]  # a different prefix: the heads' means now matter
    grid = fv.cie_grid(params, config, corrupted, QUERIES, SINGLE, GOLD, mean_z, batch_size=4, per_batch=3)
    loop = fv.cie_loop(params, config, corrupted, QUERIES, SINGLE, GOLD, mean_z, batch_size=4)
    np.testing.assert_allclose(grid, loop, atol=1e-6, rtol=0)
    assert np.abs(grid).max() > 1e-5


def test_the_layer_sweep_patches_each_layer_in_turn(model):
    """Each entry equals an evaluation with that one layer's patch; a zero vector added is no patch."""
    config, params = model
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((config.n_layers, config.d_model)).astype(np.float32) * 3
    sweep = tv.layer_sweep(params, config, ZS_PREFIX, QUERIES, SINGLE, vectors, GOLD, add=False, batch_size=4, per_batch=2)
    for layer in range(config.n_layers):
        (one,) = evaluate_patched(params, config, ZS_PREFIX, QUERIES, SINGLE,
                                  patching.stack([patching.residual(config, layer, vectors[layer])]), EvalOptions(4, "last", ()))  # fmt: skip
        assert sweep[layer].mean() == one.accuracy(GOLD)
    zero = tv.layer_sweep(params, config, ZS_PREFIX, QUERIES, SINGLE, np.zeros_like(vectors), GOLD, add=True, batch_size=4)
    plain = evaluate(params, config, ZS_PREFIX, QUERIES, SINGLE, EvalOptions(4, "last", ())).accuracy(GOLD)
    assert np.all(zero.mean(axis=1) == plain)


def test_the_heldout_accuracy_chooses_the_layer_on_the_other_queries():
    correct = np.array([[1, 0, 1, 0, 1, 0],   # layer 0: right on the even queries only
                        [0, 1, 0, 1, 0, 1],   # layer 1: right on the odd queries only
                        [1, 1, 0, 0, 0, 0]])  # fmt: skip
    # chosen on the even queries: layer 0, 0/3 right on the odd; on the odd: layer 1, 0/3 on the even
    assert tv.heldout_accuracy(correct) == 0.0
    assert tv.heldout_accuracy(np.array([[1, 1, 1, 0], [0, 0, 0, 0]])) == 0.75


def test_cosine_and_spearman_by_hand():
    a = np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]])  # [n=2, L=2, d=2]
    b = np.array([[[1.0, 1.0], [-1.0, -1.0]], [[0.0, 1.0], [3.0, 4.0]]])
    # layer 0: cos 1/sqrt2 and 1 -> mean; layer 1: -1 and (zero vector: left out) -> -1
    np.testing.assert_allclose(tv.mean_cosine(a, b), [(2**-0.5 + 1) / 2, -1.0])
    assert np.isnan(tv.mean_cosine(np.zeros((2, 1, 3)), np.ones((2, 1, 3)))[0])
    assert fv.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fv.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    ra, rb = np.array([1.5, 1.5, 3, 4]) - 2.5, np.array([1, 2, 3, 4]) - 2.5
    assert fv.spearman([7, 7, 8, 9], [1, 2, 3, 4]) == pytest.approx(np.sum(ra * rb) / np.sqrt(np.sum(ra**2) * np.sum(rb**2)))
    assert np.isnan(fv.spearman([1, 1, 1], [1, 2, 3]))


def test_kv_update_sizes_and_the_function_vector_by_hand():
    config = CONFIGS["llama"]  # 4 query heads over 2 KV heads of 8 dims
    params = _random_params(config)
    after = jax.tree.map(lambda x: x, params)
    k = np.asarray(params["blocks"]["k"]["w"]).copy()
    k[1, :, 8:16] += 0.5  # KV head 1 of layer 1: 32 x 8 entries moved by 0.5
    after["blocks"] = dict(params["blocks"], k=dict(params["blocks"]["k"], w=jnp.asarray(k)))
    sizes = fv.kv_update_sizes(params, after, config)
    expected = np.zeros((2, 4))
    expected[1, 2:] = 0.5 * np.sqrt(32 * 8)  # query heads 2 and 3 share KV head 1
    np.testing.assert_allclose(sizes, expected, rtol=1e-5, atol=1e-6)
    mean_z = np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)
    w = np.asarray(params["blocks"]["o"]["w"])
    want = mean_z[1, 3] @ w[1, 24:32] + mean_z[0, 0] @ w[0, 0:8]
    np.testing.assert_allclose(fv.function_vector(params, config, mean_z, [(1, 3), (0, 0)]), want, rtol=1e-5, atol=1e-5)
    assert fv.top_heads(np.array([[0.1, 0.5], [0.5, -1.0]]), 3) == [(0, 1), (1, 0), (0, 0)]


def test_out_of_range_layers_and_heads_are_refused_by_name():
    config = CONFIGS["llama"]
    with pytest.raises(InputError, match=r"layer 2 is out of range: the model has layers 0..1"):
        patching.residual(config, 2, np.zeros(config.d_model))
    with pytest.raises(InputError, match=r"head 4 is out of range: the model has query heads 0..3"):
        patching.head_output(config, 0, 4, np.zeros(config.head_dim))
    with pytest.raises(InputError, match=r"shape \(32,\)"):
        patching.residual(config, 0, np.zeros(5))
    with pytest.raises(InputError, match="count must be in 1..4"):
        fv.top_heads(np.zeros((2, 2)), 5)
    one = patching.stack([patching.residual(config, 0, np.zeros(config.d_model))])
    with pytest.raises(InputError, match=r'probe="last" and records=\(\)'):
        evaluate_patched(_random_params(config), config, ZS_PREFIX, QUERIES, SINGLE, one, EvalOptions(4, "label", ()))


# --- the runner, the report and the refusals -----------------------------------------------------


@pytest.mark.slow  # a tiny run with both analyses: about 25 s on the 2-core CPU
def test_vector_cells_are_written_apart_resumable_deterministic_and_reported(tiny_lm, task_spec, tmp_path):
    from jaxicl.report import load_cells, write_report
    from jaxicl.runner import RunConfig, run

    config = RunConfig(model="tiny", tasks=(task_spec,), k=8, n_eval=6, batch_size=4, methods=("gd", "lcgd"), n_runs=1,
                       analyses=("task-vectors", "function-vectors"), cie_queries=4)  # fmt: skip
    assert run(config, tmp_path / "a", lm=tiny_lm, quiet=True)["done"] == 4
    tv_path, fv_path = (f"analyses/{kind}/tiny/trained/seed1-perm0.json" for kind in ("task-vectors", "function-vectors"))
    tv_cell = json.loads((tmp_path / "a" / tv_path).read_text())
    fv_cell = json.loads((tmp_path / "a" / fv_path).read_text())
    layers, heads = tiny_lm.config.n_layers, tiny_lm.config.n_heads
    assert len(tv_cell["layers"]["accuracy"]) == layers and tv_cell["best_layer"] in range(layers)
    assert 0 <= tv_cell["heldout_accuracy"] <= tv_cell["best_accuracy"]
    assert tv_cell["methods"]["gd"]["alignment"][0] is None  # GD never changes the embeddings
    assert np.asarray(fv_cell["cie"]).shape == (layers, heads) and len(fv_cell["top_heads"]) == 10
    assert fv_cell["cie_queries"] == 4 and set(fv_cell["methods"]) == {"gd", "lcgd"}
    assert 0 <= fv_cell["accuracy"]["shuffled_icl"] <= 1 and set(fv_cell["gold_probability"]) == {"icl", "shuffled_icl"}
    assert np.asarray(fv_cell["methods"]["lcgd"]["kv_update"]).shape == (layers, heads)
    # the finetuned models are the cells' own: their zero-shot accuracy matches the real cells'
    gd = json.loads((tmp_path / "a/cells/tiny/trained/gd-seed1-perm0.json").read_text())
    assert tv_cell["methods"]["gd"]["accuracy_ft"] == gd["accuracy"]["ft"]
    cells, problems = load_cells(tmp_path / "a")
    assert not problems and len(cells) == 2  # never in Tables 1-2
    md = write_report(tmp_path / "a", plots=True).read_text()
    assert "## Task vectors" in md and "## Function vectors" in md
    for name in ("task_vectors.csv", "function_vectors.csv", "vectors_by_layer.png", "cie_heads.png"):
        assert (tmp_path / "a/report" / name).stat().st_size > 0
    # resumable, and the same config and seed give the same files
    (tmp_path / "a" / fv_path).unlink()
    assert run(config, tmp_path / "a", lm=tiny_lm, quiet=True) | {"skipped": 3} == {"done": 1, "skipped": 3,
                                                                                     "recomputed": 0, "deferred": 0}
    assert json.loads((tmp_path / "a" / fv_path).read_text()) == fv_cell
    run(config, tmp_path / "b", lm=tiny_lm, quiet=True)
    for path in (tv_path, fv_path):
        assert (tmp_path / "b" / path).read_text() == (tmp_path / "a" / path).read_text()


@pytest.mark.parametrize("changes, message", [
    (dict(analyses=("task-vector",)), r"--analyses: unknown 'task-vector'; choose from task-vectors, function-vectors"),
    (dict(analyses=("task-vectors", "task-vectors")), "--analyses repeats a value"),
    (dict(analyses=("function-vectors",), cie_queries=0), "--cie-queries must be an integer >= 1"),
])  # fmt: skip
def test_bad_analyses_are_refused_before_any_work(changes, message, tmp_path):
    from jaxicl.runner import RunConfig, run

    config = RunConfig(model="no-such-model-is-loaded", tasks=("sst2",), **changes)
    with pytest.raises(InputError, match=message):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
