"""Finetuning (docs/method.md#finetuning): the step against a hand-computed update, the mask, the loss
tokens, training progress, batched seeds vs one by one, divergence, resumable checkpoints, and
the zero-shot evaluation of the finetuned model ("ftzs")."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl.data import get_task
from jaxicl.engine import finetune as F
from jaxicl.engine import transforms as T
from jaxicl.engine.scoring import EvalOptions, evaluate
from jaxicl.errors import DivergenceError, TrainingError
from jaxicl.io import checkpoint
from jaxicl.models.transformer import forward
from tests.test_transforms import GPT2, LLAMA, random_params, tiny_prompts

RNG = np.random.default_rng(0)
SEQS = [[1] + list(RNG.integers(3, 160, n)) for n in (12, 40, 7, 30, 19)]  # two length buckets


def demo(seq, loss_tokens="all", label_start=None):
    return F.demo_batch(seq, label_start=label_start, loss_tokens=loss_tokens)


def hand_step(params, config, seq, lr, objective, mask, **demo_kw):
    """p − lr · ∂loss/∂p on the masked entries, from jax.grad of the objective (no optax)."""
    batch = demo(seq, **demo_kw)
    grads = jax.jit(jax.grad(lambda p: F.objective_loss(p, config, objective, batch)[0]))(params)
    return T.masked_sgd(params, grads, mask, lr), grads


# --- the step ------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", [F.GD, F.LCGD], ids=["gd", "lcgd"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_one_step_is_the_hand_computed_update_and_only_masked_params_change(kind, objective):
    config = {"llama": LLAMA, "gpt2": GPT2}[kind]
    params = random_params(config)
    mask = T.kv_mask(config, layers=[0, 2])
    options = F.FinetuneOptions(lr=0.3, objective=objective)
    got = F.finetune(params, config, SEQS[:1], options, mask=mask).params
    want, grads = hand_step(params, config, SEQS[0], 0.3, objective, mask)
    old, new, exp = ({k: np.asarray(v) for k, v in T.flatten(t).items()} for t in (params, got, want))
    for path in old:
        if path in mask.paths:
            np.testing.assert_allclose(new[path], exp[path], rtol=1e-5, atol=1e-6, err_msg=path)
            off = [i for i in range(config.n_layers) if i not in (0, 2)]
            assert np.array_equal(new[path][off], old[path][off]), path  # unselected layers
            assert not np.array_equal(new[path][[0, 2]], old[path][[0, 2]]), path
        else:
            assert np.array_equal(new[path], old[path]), path
    assert float(jnp.abs(grads["blocks"]["q"]["w"]).max()) > 0  # gradients flow through q but it is not stepped


def test_clipping_and_grad_norm_records():
    config, params = LLAMA, random_params(LLAMA)
    mask = T.kv_mask(config)
    _, grads = hand_step(params, config, SEQS[1], 1.0, F.LCGD, mask)
    g = T.flatten(grads)
    per_layer_kv = np.sqrt(sum(np.sum(np.square(g[p]).reshape(4, -1), axis=1) for p in mask.paths))
    per_layer_all = np.sqrt(sum(np.sum(np.square(g[p]).reshape(4, -1), axis=1) for p in g if p.startswith("blocks/")))
    total = float(np.sqrt(np.sum(per_layer_kv**2)))
    clip = total / 4
    result = F.finetune(params, config, SEQS[1:2], F.FinetuneOptions(lr=1.0, objective=F.LCGD, clip_norm=clip))
    np.testing.assert_allclose(result.kv_grad_norms[0], per_layer_kv, rtol=1e-5)
    np.testing.assert_allclose(result.grad_norms[0], per_layer_all, rtol=1e-5)
    assert np.all(per_layer_all > per_layer_kv)
    step = T.flatten(result.params)["blocks/k/w"] - T.flatten(params)["blocks/k/w"]
    np.testing.assert_allclose(step, -g["blocks/k/w"] * clip / total, rtol=1e-4, atol=1e-7)
    off = F.finetune(params, config, SEQS[1:2], F.FinetuneOptions(lr=1.0, all_grad_norms=False))
    assert np.all(np.isnan(off.grad_norms)) and np.all(np.isfinite(off.kv_grad_norms))


def test_loss_tokens_all_or_label():
    seq, start = [1, 50, 51, 52, 53, 54, 99], 5
    b = demo(seq)
    assert b.ids.shape == (1, 16)
    assert list(np.asarray(b.targets[0, :6])) == seq[1:] and float(b.weights.sum()) == 6
    assert list(np.flatnonzero(np.asarray(demo(seq, "label", start).weights[0]))) == [4, 5]  # predict seq[5:]
    config, params = LLAMA, random_params(LLAMA)
    logits = np.asarray(jax.nn.log_softmax(forward(params, config, b.ids).logits[0]))
    want = -np.mean([logits[t, seq[t + 1]] for t in (4, 5)])
    got, _ = F.objective_loss(params, config, F.GD, demo(seq, "label", start))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_training_reduces_the_demonstrations_loss():
    config, params = LLAMA, random_params(LLAMA, scale=0.2)
    pattern = [1, 20, 21, 22, 23, 24, 25, 26, 27]
    seqs = [pattern[:3] + pattern[3:][i % 3 :] + [40 + i % 2] for i in range(12)]
    loss = jax.jit(lambda p, b: F.objective_loss(p, config, F.GD, b)[0])
    mean_loss = lambda p: np.mean([float(loss(p, demo(s))) for s in seqs])  # noqa: E731
    for objective in (F.GD, F.LCGD):
        result = F.finetune(params, config, seqs, F.FinetuneOptions(lr=0.5, objective=objective))
        before, after = mean_loss(params), mean_loss(result.params)
        assert after < before - 0.05, (objective, before, after)


def test_few_compilations():
    """Lengths are bucketed: one compiled step per (bucket length, static settings)."""
    config, params = GPT2, random_params(GPT2)
    options = F.FinetuneOptions(lr=0.01, objective=F.Objective(readout="block", causal=True, layer_reduction="mean"))
    before = F.train_step._cache_size()
    F.finetune(params, config, SEQS, options)
    F.finetune(params, config, SEQS[::-1], dataclasses.replace(options, lr=0.02))  # lr is traced
    assert F.train_step._cache_size() - before == 3  # buckets 16, 32 and 48


def test_bf16_compute_option_runs_close_to_fp32():
    config, params = LLAMA, random_params(LLAMA)
    a = F.finetune(params, config, SEQS[:2], F.FinetuneOptions(lr=0.1))
    b = F.finetune(params, config, SEQS[:2], F.FinetuneOptions(lr=0.1, compute_dtype="bfloat16"))
    assert b.params["blocks"]["k"]["w"].dtype == jnp.float32  # fp32 master weights
    np.testing.assert_allclose(b.losses, a.losses, rtol=2e-2)


@pytest.mark.parametrize("stepped, moves, stays", [("k", "k", "v"), ("v", "v", "k")])
def test_stepping_only_keys_or_only_values_leaves_the_other_as_it_was(stepped, moves, stays):
    config, params = LLAMA, random_params(LLAMA)
    options = F.FinetuneOptions(lr=0.1, objective=F.LCGD, stepped=stepped)
    result = F.finetune(params, config, SEQS[:2], options)
    both = F.finetune(params, config, SEQS[:2], dataclasses.replace(options, stepped="kv"))
    np.testing.assert_array_equal(result.params["blocks"][stays]["w"], params["blocks"][stays]["w"])
    assert np.abs(np.asarray(result.params["blocks"][moves]["w"] - params["blocks"][moves]["w"])).max() > 1e-4
    assert np.abs(np.asarray(both.params["blocks"][stays]["w"] - params["blocks"][stays]["w"])).max() > 1e-4
    # a saved run's key follows the mask it stepped; the default's key is the one saved before `stepped` existed
    keys = {s: F.run_key(config, SEQS[:2], dataclasses.replace(options, stepped=s), F.default_mask(
        config, dataclasses.replace(options, stepped=s)), "base") for s in ("kv", "k", "v")}  # fmt: skip
    assert len(set(keys.values())) == 3
    with pytest.raises(ValueError, match="stepped must be one of"):
        F.FinetuneOptions(lr=0.1, stepped="q")


def test_options_for_task_use_the_paper_learning_rate():
    opts = F.FinetuneOptions.for_task(get_task("sst2"), "lcgd")
    assert opts.lr == 0.0005 and opts.objective == F.LCGD
    assert F.FinetuneOptions.for_task(get_task("agnews"), "gd", clip_norm=1.0).lr == 0.2
    with pytest.raises(ValueError, match="unknown method"):
        F.FinetuneOptions.for_task(get_task("sst2"), "adam")
    with pytest.raises(ValueError, match="lr"):
        F.FinetuneOptions(lr=float("nan"))


# --- batched seeds -------------------------------------------------------------------------------


@pytest.mark.slow  # vmapped runs of three sets plus their one-by-one twins: a dozen compilations
def test_batched_sets_equal_one_by_one():
    """Three demonstration sets of different sizes and lengths (two length buckets, a step where
    the sets' buckets differ, sets that idle): finetune_many == finetune each."""
    config, params = GPT2, random_params(GPT2)
    sets = [[SEQS[0], SEQS[2], SEQS[4]], [SEQS[4], SEQS[2]], [SEQS[2]]]  # 13, 8, 20 tokens: buckets 16, 32
    options = F.FinetuneOptions(lr=0.2, objective=F.LCGD)
    many = F.finetune_many(params, config, sets, options)
    chunked = F.finetune_many(params, config, sets, options, max_parallel=2)
    for s, seqs in enumerate(sets):
        one = F.finetune(params, config, seqs, options)
        for got in (many[s], chunked[s]):
            assert got.losses.shape == (len(seqs),)
            np.testing.assert_allclose(got.losses, one.losses, rtol=1e-6)
            np.testing.assert_allclose(got.kv_grad_norms, one.kv_grad_norms, rtol=1e-5)
            for path, x in T.flatten(one.params).items():
                np.testing.assert_allclose(T.flatten(got.params)[path], x, rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.slow  # three vmapped programs (two starts, dispatch and scan) plus three one-by-one runs
def test_sets_with_own_params_and_rates_equal_one_by_one_stepped_or_scanned():
    """The batched engine's other axes: each set starts from its own params (the untrained
    variants' re-initialisations) and steps at its own rate (a learning-rate sweep), one dispatch
    per step or the whole run as one `lax.scan` padded to one length: each equals `finetune`."""
    config, params = LLAMA, random_params(LLAMA)
    sets = [[SEQS[0], SEQS[2], SEQS[4]], [SEQS[4], SEQS[2]], [SEQS[2]]]
    starts = [params, T.reinit(params, config, "no-training", 1), T.reinit(params, config, "trained-embeddings", 2)]
    lrs = [0.2, 0.05, 0.1]
    options = F.FinetuneOptions(lr=0.3, objective=F.LCGD)
    stepped = F.finetune_many(starts, config, sets, options, lrs=lrs)
    scanned = F.finetune_many(starts, config, sets, options, lrs=lrs, scan=True)
    shared = F.finetune_many(params, config, sets, options, lrs=lrs, scan=True)
    for s, seqs in enumerate(sets):
        one = F.finetune(starts[s], config, seqs, dataclasses.replace(options, lr=lrs[s]))
        same_start = F.finetune(params, config, seqs, dataclasses.replace(options, lr=lrs[s]))
        for got, want in ((stepped[s], one), (scanned[s], one), (shared[s], same_start)):
            np.testing.assert_allclose(got.losses, want.losses, rtol=1e-5)
            np.testing.assert_allclose(got.kv_grad_norms, want.kv_grad_norms, rtol=1e-5)
            for path, x in T.flatten(want.params).items():
                np.testing.assert_allclose(T.flatten(got.params)[path], x, rtol=1e-5, atol=1e-6, err_msg=path)
    assert not np.allclose(stepped[1].losses, shared[1].losses)  # the starts really differ


def test_batched_axes_refuse_what_does_not_line_up():
    config, params = LLAMA, random_params(LLAMA)
    sets = [[[1, 5, 6]], [[1, 7, 8]]]
    options = F.FinetuneOptions(lr=0.1)
    with pytest.raises(TrainingError, match="1 learning rates for 2 demonstration sets"):
        F.finetune_many(params, config, sets, options, lrs=[0.1])
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        F.finetune_many(params, config, sets, options, lrs=[0.1, float("inf")])
    with pytest.raises(TrainingError, match="1 params trees for 2"):
        F.finetune_many([params], config, sets, options)
    other = random_params(LLAMA.replace(d_ff=LLAMA.d_ff * 2))
    with pytest.raises(TrainingError, match="set 1 differ in structure or shapes"):
        F.finetune_many([params, other], config, sets, options)


def test_batched_runs_out_of_memory_retry_fewer_at_once_then_name_the_shapes(tmp_path, monkeypatch):
    """Device OOM while finetuning runs together: halve how many step at once, warn, and finish;
    at one run at a time, an error naming the runs and their shapes, and nothing saved."""
    config, params = LLAMA, random_params(LLAMA)
    sets = [SEQS[:2], SEQS[2:4], SEQS[1:3]]
    options = F.FinetuneOptions(lr=0.1)
    real, seen = F.train_run_many, []

    def limited(trainable, *args, limit, **kwargs):
        seen.append(jax.tree.leaves(trainable)[0].shape[0])
        if seen[-1] > limit:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.00GiB")
        return real(trainable, *args, **kwargs)

    dirs = [tmp_path / f"run{i}" for i in range(3)]
    monkeypatch.setattr(F.many, "train_run_many", lambda *a, **k: limited(*a, limit=1, **k))
    with pytest.warns(UserWarning, match="finetuning 3 runs at once; retrying 1 at a time"):
        computed = F.finetune_many_cached(dirs, params, config, sets, options, bases=["b"] * 3, scan=True)
    assert computed == [True] * 3 and seen[0] == 3 and set(seen[1:]) == {1}
    for d, seqs in zip(dirs, sets):
        restored, resumed = F.finetune_cached(d, params, config, seqs, options, base="b")
        assert resumed
        np.testing.assert_allclose(restored.losses, F.finetune(params, config, seqs, options).losses, rtol=1e-5)
    monkeypatch.setattr(F.many, "train_run_many", lambda *a, **k: limited(*a, limit=0, **k))
    with pytest.warns(UserWarning), pytest.raises(TrainingError, match=r"one run at a time \(3 runs of up to 2 demonstrations, the longest 41 tokens\)"):
        F.finetune_many_cached([tmp_path / f"x{i}" for i in range(3)], params, config, sets, options,
                               bases=["b"] * 3, scan=True)  # fmt: skip
    assert not any((tmp_path / f"x{i}").exists() for i in range(3))


class _CountingNumpy:
    """numpy for jaxicl.engine.finetune, recording each np.asarray / np.array of a jax.Array (a host read)."""

    def __init__(self, reads: list):
        self.reads = reads

    def __getattr__(self, name):
        attr = getattr(np, name)
        if name not in ("asarray", "array"):
            return attr

        def counted(x, *args, **kwargs):
            if isinstance(x, jax.Array):
                self.reads.append(name)
            return attr(x, *args, **kwargs)

        return counted


def test_a_run_copies_its_stats_to_the_host_once(monkeypatch):
    """No host sync per step: the host reads of device arrays during finetune / finetune_many are
    counted (numpy conversions in jaxicl.engine.finetune, and jax.Array._value, which jax.device_get,
    float() and bool() go through). A run reads its 4 stacked stats once, whatever its length."""
    from jax._src import array as jax_array  # private: where jax.device_get and float() read

    config, params = LLAMA, random_params(LLAMA)
    options = F.FinetuneOptions(lr=0.2)
    reads = []
    value = jax_array.ArrayImpl._value
    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(lambda self: (reads.append("_value"), value.fget(self))[1]))
    for module in (F.single, F.many, F.result, F.demos):
        monkeypatch.setattr(module, "np", _CountingNumpy(reads))
    counts = {}
    for n in (2, 4):
        reads.clear()
        result = F.finetune(params, config, SEQS[:n], options)
        counts[n] = len(reads)
        assert result.losses.shape == (n,)
    reads.clear()
    many = F.finetune_many(params, config, [SEQS[:4], SEQS[:2]], options)
    counts["many"] = len(reads)
    reads.clear()
    scanned = F.finetune_many(params, config, [SEQS[:4], SEQS[:2]], options, scan=True)
    counts["scan"] = len(reads)
    assert counts == {2: 4, 4: 4, "many": 4, "scan": 4}, counts
    assert [m.losses.shape for m in scanned] == [(4,), (2,)]
    assert [m.losses.shape for m in many] == [(4,), (2,)]


# --- bad input -----------------------------------------------------------------------------------


def poisoned(params, token: int) -> dict:
    flat = T.flatten(params)
    flat["embed"] = flat["embed"].at[token].set(jnp.nan)
    return T.unflatten(flat)


def test_nan_loss_names_step_and_demonstration_and_writes_nothing(tmp_path):
    config = LLAMA.replace(tie_embeddings=False)  # the poisoned row is read only as an input
    params = poisoned(random_params(config), token=155)
    seqs = [[1, 10, 11, 12], [1, 13, 14], [1, 20, 155, 21], [1, 30, 31]]
    with pytest.raises(TrainingError, match=r"step 2 on demonstration 2 \(row 77\).*loss nan"):
        F.finetune(params, config, seqs, F.FinetuneOptions(lr=0.1), demo_names=["row 5", "row 9", "row 77", "row 3"])
    with pytest.raises(TrainingError, match=r"step 2"):
        F.finetune_cached(tmp_path / "run", params, config, seqs, F.FinetuneOptions(lr=0.1), base="x")
    assert not (tmp_path / "run" / checkpoint.META_FILE).exists()
    assert not (tmp_path / "run" / checkpoint.TREE_DIR).exists()
    with pytest.raises(DivergenceError, match=r"set 1 at step 2"):
        F.finetune_many(params, config, [seqs[:2], seqs], F.FinetuneOptions(lr=0.1))
    # a sweep marks the diverged set and keeps the others
    kept, marked = F.finetune_many(params, config, [seqs[:2], seqs], F.FinetuneOptions(lr=0.1), on_divergence="mark")
    assert kept.diverged is None and np.all(np.isfinite(kept.losses))
    assert "set 1 at step 2" in marked.diverged and "loss nan" in marked.diverged
    with pytest.raises(TrainingError, match="on_divergence must be 'raise' or 'mark'"):
        F.finetune_many(params, config, [seqs], F.FinetuneOptions(lr=0.1), on_divergence="skip")


def test_bad_demonstrations_are_refused():
    config, params = LLAMA, random_params(LLAMA)
    opts = F.FinetuneOptions(lr=0.1)
    with pytest.raises(TrainingError, match="no demonstrations"):
        F.finetune(params, config, [], opts)
    with pytest.raises(TrainingError, match="at least 2"):
        F.finetune(params, config, [[1]], opts)
    with pytest.raises(Exception, match="outside the vocabulary"):
        F.finetune(params, config, [[1, 999]], opts)
    with pytest.raises(TrainingError, match="label start"):
        F.finetune(params, config, [[1, 5, 6]], F.FinetuneOptions(lr=0.1, loss_tokens="label"))


# --- resumable runs ------------------------------------------------------------------------------


def test_finetune_cached_resumes_without_retraining(tmp_path, monkeypatch):
    config, params = LLAMA, random_params(LLAMA)
    options = F.FinetuneOptions(lr=0.2, objective=F.LCGD)
    first, resumed = F.finetune_cached(tmp_path, params, config, SEQS[:3], options)
    assert not resumed
    meta = json.loads((tmp_path / checkpoint.META_FILE).read_text())
    assert meta["meta"]["steps"] == 3

    calls = []
    monkeypatch.setattr(F.cache, "finetune", lambda *a, **k: calls.append(1) or first)
    again, resumed = F.finetune_cached(tmp_path, params, config, SEQS[:3], options)
    assert resumed and not calls
    for path, x in T.flatten(first.params).items():
        assert np.array_equal(T.flatten(again.params)[path], x), path
    for name, rec in first.records().items():
        np.testing.assert_array_equal(again.records()[name], rec)

    # another config hash (options, demonstrations or starting params) retrains
    F.finetune_cached(tmp_path, params, config, SEQS[:3], F.FinetuneOptions(lr=0.3, objective=F.LCGD))
    F.finetune_cached(tmp_path, params, config, SEQS[:2], options)
    F.finetune_cached(tmp_path, random_params(LLAMA, seed=1), config, SEQS[:2], options)
    assert len(calls) == 3


def test_damaged_checkpoint_is_recomputed(tmp_path):
    config, params = LLAMA, random_params(LLAMA)
    options = F.FinetuneOptions(lr=0.2)
    F.finetune_cached(tmp_path, params, config, SEQS[:1], options, base="m")
    for f in (tmp_path / checkpoint.TREE_DIR).rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        _, resumed = F.finetune_cached(tmp_path, params, config, SEQS[:1], options, base="m")
    assert not resumed
    _, resumed = F.finetune_cached(tmp_path, params, config, SEQS[:1], options, base="m")
    assert resumed


# --- zero-shot evaluation of the finetuned model -------------------------------------------------


def test_ftzs_reuses_the_evaluator_with_the_zero_shot_prefix():
    config, params = LLAMA, random_params(LLAMA, scale=0.2)
    prompts = tiny_prompts()
    result = F.finetune_prompts(params, config, prompts, F.FinetuneOptions(lr=0.5))
    assert len(result.losses) == prompts.k_icl
    options = EvalOptions(batch_size=4)
    ftzs = F.evaluate_finetuned(result.params, config, prompts, options)
    direct = evaluate(result.params, config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids, options)
    zs = evaluate(params, config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids, options)
    np.testing.assert_array_equal(ftzs.scores, direct.scores)
    assert ftzs.records["attn_out"].shape == zs.records["attn_out"].shape  # same probe records
    np.testing.assert_array_equal(ftzs.map_lengths, zs.map_lengths)
    assert not np.allclose(ftzs.scores, zs.scores)
