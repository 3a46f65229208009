"""Transforms (docs/method.md#finetuning): layer causality, per-layer readout, parameter masks, untrained
re-initialisation. The docs' examples that compose them run in tests/test_docs.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl.data import Task, build_prompts_from_rows
from jaxicl.engine import transforms as T
from jaxicl.engine.finetune import GD, LCGD, DemoBatch, Objective, demo_batch, objective_loss
from jaxicl.errors import TrainingError
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import init_params
from jaxicl.models.transformer import forward, unembed

LLAMA = ModelConfig(
    family="llama", vocab_size=160, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
    max_positions=96, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
GPT2 = ModelConfig(
    family="gpt2", vocab_size=160, d_model=32, n_layers=3, n_heads=4, n_kv_heads=4, head_dim=8, d_ff=64,
    max_positions=96, norm_kind="layer", norm_eps=1e-5, position_kind="learned", attn_bias=True,
    mlp_bias=True, gated_mlp=False, activation="gelu_tanh",
)  # fmt: skip
GEMMA = ModelConfig(
    family="gemma3", vocab_size=160, d_model=32, n_layers=3, n_heads=4, n_kv_heads=1, head_dim=8, d_ff=48,
    max_positions=96, norm_plus_one=True, qk_norm=True, post_norms=True, activation="gelu_tanh",
    embed_scale=32**0.5, sliding_window=6, layer_is_local=(True, False, True), final_logit_softcap=5.0,
)  # fmt: skip
CONFIGS = {"llama": LLAMA, "gpt2": GPT2, "gemma3": GEMMA}


def random_params(config: ModelConfig, seed: int = 0, scale: float = 0.3) -> dict:
    """Every tensor random (biases and norms too), large enough for non-linear behaviour;
    norm scales near their identity (0 under Gemma's 1 + scale)."""
    flat = T.flatten(init_params(config, jax.random.PRNGKey(0)))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    out = {}
    for (path, x), k in zip(flat.items(), keys):
        noise = scale * jax.random.normal(k, x.shape)
        if T.is_norm(path):
            identity = 1.0 if path.endswith("scale") and not config.norm_plus_one else 0.0
            noise = identity + 0.3 * noise
        out[path] = noise
    return T.unflatten(out)


def batch_of(seq, length: int = 32) -> DemoBatch:
    return demo_batch(seq, length_multiple=length)


SEQ = [1, 17, 40, 99, 5, 63, 120, 7, 33, 71, 150, 12, 9]


def layer_loss(params, config, batch, layer, causal: bool, readout: str = "block"):
    """Layer `layer`'s own readout loss (layer may be traced), with or without stop_gradient on
    block inputs."""
    transform = T.stop_gradient_inputs() if causal else None
    states = T.block_states(
        params, config, batch.ids, readout=readout, valid=batch.valid, block_input_transform=transform
    )
    one = jax.lax.dynamic_index_in_dim(states, layer, keepdims=True)
    return T.readout_losses(params, config, one, batch.targets, batch.weights)[0]


def kv_grads(fn, config):
    """Jitted params -> gradient of fn(params) with respect to the k/v tensors, {path: array}."""
    paths = T.kv_mask(config).paths

    @jax.jit
    def grads(params):
        stepped, rest = T.split_params(params, paths)
        return T.flatten(jax.grad(lambda s: fn(T.merge_params(s, rest)))(stepped))

    return grads


def per_layer_kv_grads(params, config, batch, causal: bool, readout: str = "block"):
    """{path: [L_loss, L, ...]}: the k/v gradient of each layer's readout loss, separately."""
    stepped, rest = T.split_params(params, T.kv_mask(config).paths)
    grad = jax.grad(lambda s, layer: layer_loss(T.merge_params(s, rest), config, batch, layer, causal, readout))
    out = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(stepped, jnp.arange(config.n_layers))
    return T.flatten(out)


# --- layer causality and readout -----------------------------------------------------------------


@pytest.mark.parametrize("readout", ["block", "attn"])
@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma3"])
def test_lcgd_layer_update_is_its_own_readout_gradient(kind, readout):
    """Layer ℓ's k/v gradient of the LCGD loss equals that of layer ℓ's readout loss alone; every
    other layer's readout loss contributes exactly zero to it."""
    config = CONFIGS[kind]
    params, batch = random_params(config), batch_of(SEQ)
    L = config.n_layers
    per_layer = per_layer_kv_grads(params, config, batch, True, readout)
    objective = Objective(readout=readout, causal=True)
    total = kv_grads(lambda p: objective_loss(p, config, objective, batch)[0], config)(params)
    for path in total:
        for ell in range(L):
            for j in range(L):
                if j != ell:
                    assert np.all(np.asarray(per_layer[path][j, ell]) == 0.0), (path, ell, j)
            np.testing.assert_allclose(total[path][ell], per_layer[path][ell, ell], rtol=1e-5, atol=1e-7)
            assert np.abs(np.asarray(per_layer[path][ell, ell])).max() > 0  # the test has teeth


def test_without_causality_higher_readouts_reach_lower_layers():
    config = LLAMA
    params, batch = random_params(config), batch_of(SEQ)
    g = per_layer_kv_grads(params, config, batch, False)["blocks/k/w"]
    for j in range(1, config.n_layers):
        assert np.abs(np.asarray(g[j, 0])).max() > 1e-6  # layer j's readout reaches layer 0


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_gd_early_gradient_depends_on_deeper_layers_lcgd_does_not(kind):
    """Changing the last block's MLP changes layer 0's k/v gradient under GD, not under LCGD."""
    config = CONFIGS[kind]
    params, batch = random_params(config), batch_of(SEQ)
    changed = T.flatten(params)
    changed["blocks/up/w"] = changed["blocks/up/w"].at[-1].multiply(1.7)
    changed = T.unflatten(changed)
    for objective, should_change in ((GD, True), (LCGD, False)):
        grad = kv_grads(lambda p: objective_loss(p, config, objective, batch)[0], config)
        before, after = grad(params)["blocks/v/w"][0], grad(changed)["blocks/v/w"][0]
        delta = float(jnp.abs(before - after).max())
        assert (delta > 1e-6) if should_change else (delta == 0.0), (objective, delta)


def test_stop_gradient_on_chosen_layers_only():
    config = LLAMA
    params, batch = random_params(config), batch_of(SEQ)
    transform = T.stop_gradient_inputs(layers=[2])

    def last_readout(p):
        states = T.block_states(p, config, batch.ids, valid=batch.valid, block_input_transform=transform)
        return T.readout_losses(p, config, states[-1:], batch.targets, batch.weights)[0]

    g = kv_grads(last_readout, config)(params)["blocks/k/w"]
    assert np.all(np.asarray(g[:2]) == 0.0)  # below the cut at block 2: nothing
    assert np.abs(np.asarray(g[2:])).min(axis=(1, 2)).shape == (2,) and np.abs(np.asarray(g[2:])).max() > 0


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_readout_losses_match_full_logits_and_last_is_the_output(kind):
    config = CONFIGS[kind]
    params, batch = random_params(config), batch_of(SEQ)
    states = T.block_states(params, config, batch.ids, valid=batch.valid)
    got = T.readout_losses(params, config, states, batch.targets, batch.weights)
    n = len(SEQ) - 1
    for ell in range(config.n_layers):
        logp = jax.nn.log_softmax(unembed(params, config, states[ell, 0, :n]), axis=-1)
        want = -np.mean(np.asarray(logp)[np.arange(n), SEQ[1:]])
        np.testing.assert_allclose(got[ell], want, rtol=1e-5)
    out = forward(params, config, batch.ids, valid=batch.valid).logits
    np.testing.assert_allclose(got[-1], T.token_loss(out, batch.targets, batch.weights), rtol=1e-6)
    np.testing.assert_allclose(objective_loss(params, config, GD, batch)[0], got[-1], rtol=1e-6)
    np.testing.assert_allclose(objective_loss(params, config, LCGD, batch)[0], got.sum(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma3"])
def test_fused_readout_gradients_equal_plain_autodiff(kind):
    """The custom-VJP readout (gradient from the forward pass) against autodiff of
    token_loss(unembed(...)): states, final norm and the unembedding table itself (tied for Gemma
    with a soft-cap, untied for the others), under a non-uniform layer cotangent."""
    config = CONFIGS[kind]
    if kind != "gemma3":
        config = dataclasses.replace(config, tie_embeddings=False)
    params, batch = random_params(config), batch_of(SEQ)
    states = T.block_states(params, config, batch.ids, valid=batch.valid)
    cot = jnp.arange(1.0, config.n_layers + 1.0)

    def fused(s, p):
        return jnp.dot(cot, T.readout_losses(p, config, s, batch.targets, batch.weights, logits_budget=1))

    def plain(s, p):
        losses = jnp.stack([T.token_loss(unembed(p, config, s[i]), batch.targets, batch.weights) for i in range(len(s))])
        return jnp.dot(cot, losses)

    got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(states, params)
    want = jax.value_and_grad(plain, argnums=(0, 1))(states, params)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-5, atol=1e-7)
    table = "embed" if config.tie_embeddings else "unembed"
    for name in (table, "final_norm"):
        for a, b in zip(jax.tree.leaves(got[1][1][name]), jax.tree.leaves(want[1][1][name])):
            assert np.abs(np.asarray(b)).max() > 0
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_readout_groups_do_not_change_losses_or_gradients():
    """Layers read out one at a time, three at a time (with a remainder) or all at once."""
    config = LLAMA
    params, batch = random_params(config), batch_of(SEQ)
    states = T.block_states(params, config, batch.ids, valid=batch.valid)
    per_layer = 32 * config.vocab_size * 4
    results = []
    for budget in (1, 3 * per_layer, 100 * per_layer):
        def fn(s, p, budget=budget):
            return T.readout_losses(p, config, s, batch.targets, batch.weights, logits_budget=budget)

        grads = jax.jit(jax.grad(lambda s, p: fn(s, p).sum(), argnums=(0, 1)))(states, params)
        results.append((fn(states, params), grads[0], grads[1]["final_norm"]["scale"]))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_transforms_compose_with_jit_and_vmap():
    """Per-demonstration LCGD gradients of several demonstrations at once: vmap(jit(grad))."""
    config = LLAMA
    params = random_params(config)
    seqs = [SEQ, SEQ[::-1], SEQ[2:] + [3, 4]]
    batches = [batch_of(s) for s in seqs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batches)
    stepped, rest = T.split_params(params, T.kv_mask(config).paths)
    grad = jax.jit(jax.grad(lambda s, b: objective_loss(T.merge_params(s, rest), config, LCGD, b)[0]))
    many = jax.vmap(grad, in_axes=(None, 0))(stepped, stacked)
    for i, b in enumerate(batches):
        one = grad(stepped, b)
        np.testing.assert_allclose(many["blocks"]["k"]["w"][i], one["blocks"]["k"]["w"], rtol=1e-5, atol=1e-6)


# --- masks ---------------------------------------------------------------------------------------


def test_kv_mask_paths_per_family():
    assert T.kv_mask(LLAMA).paths == ("blocks/k/w", "blocks/v/w")
    assert T.kv_mask(GPT2).paths == ("blocks/k/b", "blocks/k/w", "blocks/v/b", "blocks/v/w")
    assert T.kv_mask(GEMMA).paths == ("blocks/k/w", "blocks/v/w")  # k_norm is a norm, not a projection
    # GQA/MQA: the stepped tensors are the shared KV heads
    params = random_params(LLAMA)
    assert params["blocks"]["k"]["w"].shape == (4, 32, 2 * 8)
    assert T.kv_mask(LLAMA).size(LLAMA) == 2 * 4 * 32 * 16
    assert T.kv_mask(GPT2, layers=[0, 2]).size(GPT2) == 2 * 2 * (32 * 32 + 32)


def test_mask_from_predicate_and_layer_subsets():
    mask = T.mask_from_predicate(LLAMA, lambda path, layer: path.startswith("blocks/q") and layer in (1, 3))
    assert mask.entries == (("blocks/q/w", (1, 3)),)
    norms = T.mask_from_predicate(GPT2, lambda path, layer: path == "final_norm/scale")
    assert norms.entries == (("final_norm/scale", None),)
    params = random_params(LLAMA)
    grads = jax.tree.map(jnp.ones_like, params)
    new = T.masked_sgd(params, grads, mask, lr=0.5)
    flat_old, flat_new = T.flatten(params), T.flatten(new)
    for path in flat_old:
        diff = np.asarray(flat_new[path] - flat_old[path])
        if path == "blocks/q/w":
            np.testing.assert_allclose(diff[[1, 3]], -0.5, rtol=1e-6)
            assert np.all(diff[[0, 2]] == 0.0)
        else:
            assert np.all(diff == 0.0), path


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.mask_from_predicate(LLAMA, lambda path, layer: False),
        lambda: T.kv_mask(LLAMA, layers=()),
        lambda: T.ParamMask(()),
        lambda: T.ParamMask((("blocks/k/w", ()),)),
    ],
)
def test_a_mask_that_selects_nothing_is_an_error(make):
    with pytest.raises(TrainingError, match="selects no parameter"):
        make()


def test_kv_mask_refuses_layers_out_of_range():
    with pytest.raises(TrainingError, match="outside"):
        T.kv_mask(LLAMA, layers=[4])


# --- untrained baselines -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "gemma3"])
def test_reinit_variants(kind):
    config = CONFIGS[kind]
    trained = random_params(config, seed=5)
    flat = T.flatten(trained)
    expect_kept = {
        "trained-embeddings": {p for p in flat if p in T.EMBEDDING_PATHS or T.is_norm(p)},
        "no-training": set(),
        "no-training-keep-norms": {p for p in flat if T.is_norm(p)},
    }
    assert "pos_embed" in expect_kept["trained-embeddings"] or config.position_kind != "learned"
    assert T.reinit(trained, config, "trained", 0) is trained
    for variant, kept in expect_kept.items():
        a = T.flatten(T.reinit(trained, config, variant, seed=2))
        b = T.flatten(T.reinit(trained, config, variant, seed=2))  # the zs, icl and ft runs of one cell
        c = T.flatten(T.reinit(trained, config, variant, seed=3))
        for path in flat:
            assert a[path].dtype == flat[path].dtype and a[path].shape == flat[path].shape
            assert np.array_equal(a[path], b[path])
            if path in kept:
                assert np.array_equal(a[path], flat[path]), (variant, path)
            else:
                assert not np.array_equal(a[path], flat[path]), (variant, path)
                if not path.endswith(("/b", "/bias", "scale")):  # biases/norms init to constants
                    assert not np.array_equal(a[path], c[path]), (variant, path)


def test_reinit_refuses_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant"):
        T.reinit(random_params(LLAMA), LLAMA, "half-trained", 0)


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    bos_id: int = 1
    eos_id: int = 2
    add_bos: bool = True

    def encode(self, text: str) -> list[int]:
        return [min(ord(c) - 20, 159) for c in text]


def tiny_prompts():
    """A toy task's PromptSet on a character tokenizer (for tests of finetuning on prompts)."""
    task = Task(name="toy", template="S: {t} L:", label_words=("no", "yes"), eval_split="test", lr=0.1)
    rows = [{"t": "ab" * (i % 4 + 1) + "c" * (i % 3), "label": i % 2} for i in range(40)]
    return build_prompts_from_rows(task, CharTokenizer(), rows, rows[:12], seed=1, k=6, max_len=96)
