"""jaxicl.runtime.sharding: the parameter rule, mesh validation, and multi-device runs equal to one device.

The device comparisons run in one subprocess with 8 virtual CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8), since the device count is fixed when JAX
starts: `scoring.evaluate` and `finetune.finetune_many` on tiny random models, with no mesh, a
data-only mesh (8 × 1) and a data × model mesh (4 × 2), and the refusals only a multi-device
mesh can trigger. Everything else runs here on the one default device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from jaxicl.engine import finetune as F
from jaxicl.engine.scoring import EvalOptions, evaluate
from jaxicl.errors import InputError
from jaxicl.runtime.sharding import make_mesh, param_spec, shard_batch, shard_params
from tests.test_transforms import LLAMA, random_params

REPO = Path(__file__).resolve().parent.parent
# One worker runs the whole module, so its 8-device subprocess (module-scoped) runs once.
pytestmark = pytest.mark.xdist_group("sharding")
TOL = 1e-5  # multi-device vs one device, relative to max(1, largest |value|): summation order only

# ---- the parameter rule (pure) ------------------------------------------------------------------


@pytest.mark.parametrize("shape, model, layer_axis, sets_axis, want", [
    ((160, 32), 2, False, False, PartitionSpec("model", None)),  # embed: the larger axis
    ((97, 32), 2, False, False, PartitionSpec(None, "model")),  # 97 not divisible: the next one
    ((97, 31), 2, False, False, PartitionSpec(None, None)),  # nothing divisible: replicated
    ((4, 32, 48), 2, True, False, PartitionSpec(None, None, "model")),  # blocks/up/w: d_ff
    ((64, 32, 32), 4, True, False, PartitionSpec(None, None, "model")),  # layer axis never; tie: later
    ((64, 6), 4, True, False, PartitionSpec(None, None)),  # only the layer axis divides: replicated
    ((160, 32), 1, False, False, PartitionSpec(None, None)),  # model size 1: replicated
    ((8, 4, 32, 16), 2, True, True, PartitionSpec("data", None, "model", None)),  # stacked sets
    ((8, 4, 32, 16), 1, True, True, PartitionSpec("data", None, None, None)),
    ((8,), 2, False, True, PartitionSpec("data")),
])  # fmt: skip
def test_param_spec_rule(shape, model, layer_axis, sets_axis, want):
    assert param_spec(shape, model, layer_axis=layer_axis, sets_axis=sets_axis) == want


# ---- meshes on one device -----------------------------------------------------------------------


def test_make_mesh_on_one_device_replicates_and_keeps_values():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    params = random_params(LLAMA)
    placed = shard_params(params, mesh)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(placed)):
        assert b.sharding.spec == PartitionSpec(*[None] * a.ndim)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (x,) = shard_batch((np.arange(6).reshape(3, 2),), mesh)
    assert x.sharding.spec == PartitionSpec("data")


@pytest.mark.parametrize("kwargs, message", [
    ({"model": 2}, "do not split into a 'model' axis of 2"),
    ({"data": 2}, "needs 2 devices; 1 available"),
    ({"data": 0}, "positive integer"),
    ({"model": 1.5}, "positive integer"),
])  # fmt: skip
def test_make_mesh_refuses_impossible_shapes(kwargs, message):
    with pytest.raises(InputError, match=message):
        make_mesh(**kwargs)


@pytest.mark.parametrize("axes, message", [
    (("data", "heads"), r"unknown mesh axis \['heads'\]"),
    (("batch",), r"unknown mesh axis \['batch'\]"),
    (("model",), "no 'data' axis"),
])  # fmt: skip
def test_meshes_with_unknown_or_missing_axes_are_refused(axes, message):
    mesh = Mesh(np.asarray(jax.devices()[:1], dtype=object).reshape((1,) * len(axes)), axes)
    config, params = LLAMA, random_params(LLAMA)
    with pytest.raises(InputError, match=message):
        evaluate(params, config, [1], [[5, 6]], ((7,), (8,)), EvalOptions(batch_size=2, records=()), mesh=mesh)
    with pytest.raises(InputError, match=message):
        F.finetune_many(params, config, [[[1, 5, 6]]], F.FinetuneOptions(lr=0.1), mesh=mesh)
    with pytest.raises(InputError, match=message):
        shard_params(params, mesh)


def test_data_only_mesh_is_accepted():
    """A hand-made mesh without the optional "model" axis: everything replicated."""
    mesh = Mesh(np.asarray(jax.devices()[:1], dtype=object), ("data",))
    config, params = LLAMA, random_params(LLAMA)
    options = EvalOptions(batch_size=2, records=())
    got = evaluate(params, config, [1], [[5, 6], [9]], ((7,), (8,)), options, mesh=mesh)
    want = evaluate(params, config, [1], [[5, 6], [9]], ((7,), (8,)), options)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=TOL)


# ---- 8 virtual devices --------------------------------------------------------------------------

WORKER = textwrap.dedent('''
    import json
    import jax, numpy as np
    from jaxicl.engine import finetune as F, transforms as T
    from jaxicl.errors import InputError
    from jaxicl.engine.scoring import EvalOptions, evaluate
    from jaxicl.models.init import init_params
    from jaxicl.runtime.sharding import make_mesh, shard_params
    from tests.test_icl import CONFIGS, ICL_PREFIX, MULTI, QUERIES, SINGLE, ZS_PREFIX
    from tests.test_transforms import LLAMA

    assert jax.device_count() == 8, jax.devices()

    def random_params(config, seed=0):
        """Every tensor noisy (norms too); numpy noise: no per-leaf compiles on 8 devices."""
        rng = np.random.default_rng(seed)
        init = jax.jit(init_params, static_argnums=0)(config, jax.random.key(seed))
        return jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.standard_normal(x.shape, np.float32), init)
    meshes = {"8x1": make_mesh(), "4x2": make_mesh(model=2)}
    out = {"mesh_shapes": {k: dict(m.shape) for k, m in meshes.items()}}

    def diff(a, b):
        """max |a - b| relative to max(1, max |b|): float32 rounding grows with magnitude."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))

    config = CONFIGS["gemma3"]  # sliding window, GQA, soft-capping: the fussiest tiny config
    params = random_params(config)
    placed = shard_params(params, meshes["4x2"])["blocks"]["up"]["w"]
    out["up_w"] = {"shape": list(placed.shape), "spec": str(placed.sharding.spec),
                   "shard": list(placed.addressable_shards[0].data.shape)}
    options = EvalOptions(batch_size=8)
    out["evaluate"] = {}
    for name, prefix, cands in (("icl-multi", ICL_PREFIX, MULTI), ("zs-single", ZS_PREFIX, SINGLE)):
        base = evaluate(params, config, prefix, QUERIES, cands, options)
        for mesh_name, mesh in meshes.items():
            got = evaluate(params, config, prefix, QUERIES, cands, options, mesh=mesh)
            out["evaluate"][f"{name}/{mesh_name}"] = {
                "scores": diff(got.scores, base.scores),
                "records": {k: diff(got.records[k], base.records[k]) for k in base.records},
                "same_shapes": all(got.records[k].shape == base.records[k].shape for k in base.records),
                "same_predictions": bool(np.array_equal(got.predictions, base.predictions)),
                "same_map_lengths": bool(np.array_equal(got.map_lengths, base.map_lengths)),
            }

    rng = np.random.default_rng(0)
    seqs = [[1] + list(rng.integers(3, 160, n)) for n in (9, 12, 5, 14, 7, 11)]
    sets = [seqs[:3], seqs[3:5], seqs[5:]]  # 3, 2 and 1 steps: sets idle at different times
    ft_params = random_params(LLAMA)
    ft_options = F.FinetuneOptions(lr=0.2, objective=F.LCGD)
    base = F.finetune_many(ft_params, LLAMA, sets, ft_options)
    # the batched engine's other axes on a mesh: each set its own start and rate, one scan per run
    starts = [ft_params, T.reinit(ft_params, LLAMA, "no-training", 1), T.reinit(ft_params, LLAMA, "no-training", 2)]
    own = {"starts": starts, "lrs": [0.2, 0.1, 0.05]}
    own_base = F.finetune_many(starts, LLAMA, sets, ft_options, lrs=own["lrs"])
    out["finetune"] = {}
    runs = [(name, mesh, {}, base) for name, mesh in meshes.items()]
    runs.append(("4x2-scan-own-starts", meshes["4x2"], {"scan": True, "lrs": own["lrs"]}, own_base))
    for mesh_name, mesh, extra, base in runs:
        params_in = starts if "lrs" in extra else ft_params
        got = F.finetune_many(params_in, LLAMA, sets, ft_options, mesh=mesh, **extra)
        assert len(got) == len(sets)
        out["finetune"][mesh_name] = {
            "n": len(got),
            "steps": [len(r.losses) for r in got],
            "losses": max(diff(g.losses, b.losses) for g, b in zip(got, base)),
            "kv_grad_norms": max(diff(g.kv_grad_norms, b.kv_grad_norms) for g, b in zip(got, base)),
            "params": max(diff(x, y) for g, b in zip(got, base)
                          for x, y in zip(jax.tree.leaves(g.params), jax.tree.leaves(b.params))),
            "moved": min(diff(g.params["blocks"]["k"]["w"], ft_params["blocks"]["k"]["w"]) for g in got),
        }

    errors = {}
    for name, call in {
        "batch": lambda: evaluate(params, config, ZS_PREFIX, QUERIES, SINGLE, EvalOptions(batch_size=6),
                                  mesh=meshes["8x1"]),
        "mesh": lambda: make_mesh(model=3),
    }.items():
        try:
            call()
            errors[name] = None
        except InputError as e:
            errors[name] = str(e)
    out["errors"] = errors
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> dict:
    script = tmp_path_factory.mktemp("sharding") / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXICL_")}
    flags = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=flags.strip())
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_meshes_have_the_asked_shapes(eight_devices):
    assert eight_devices["mesh_shapes"] == {"8x1": {"data": 8, "model": 1}, "4x2": {"data": 4, "model": 2}}


def test_model_axis_really_splits_params(eight_devices):
    up = eight_devices["up_w"]  # [layers, d_model, d_ff]: d_ff (48) is the largest divisible axis
    assert up["spec"] == str(PartitionSpec(None, None, "model"))
    assert up["shard"] == up["shape"][:2] + [up["shape"][2] // 2]


@pytest.mark.parametrize("mesh", ["8x1", "4x2"])
@pytest.mark.parametrize("case", ["icl-multi", "zs-single"])
def test_evaluate_on_a_mesh_equals_one_device(eight_devices, case, mesh):
    got = eight_devices["evaluate"][f"{case}/{mesh}"]
    assert got["same_predictions"] and got["same_map_lengths"] and got["same_shapes"]
    assert got["scores"] <= TOL, got
    assert max(got["records"].values()) <= TOL, got
    assert set(got["records"]) == {"attn_out", "attn_scores", "resid_post"}


@pytest.mark.parametrize("mesh", ["8x1", "4x2", "4x2-scan-own-starts"])
def test_finetune_many_on_a_mesh_equals_one_device(eight_devices, mesh):
    got = eight_devices["finetune"][mesh]
    assert got["n"] == 3 and got["steps"] == [3, 2, 1]  # the idle padding sets are dropped
    assert got["moved"] > 1e-3  # training changed the params: the comparison is not vacuous
    assert got["losses"] <= TOL and got["kv_grad_norms"] <= TOL and got["params"] <= TOL, got


def test_multi_device_refusals(eight_devices):
    errors = eight_devices["errors"]
    assert errors["batch"] == ("batch_size 6 is not a multiple of the mesh's 'data' axis size 8; use e.g. 8")
    assert errors["mesh"] == "8 devices do not split into a 'model' axis of 3"
