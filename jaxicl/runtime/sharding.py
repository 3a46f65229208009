"""Device meshes and shardings: where params, prefix caches and batches live on several devices.

One mesh, two named axes:
  "data"   splits a leading batch axis: the query rows of `scoring.evaluate`, the demonstration sets
           of `finetune.finetune_many`. Each device runs its own rows; nothing is exchanged
           except the results.
  "model"  (optional; size 1 = off) splits each parameter tensor, FSDP-style, for models larger
           than one device's memory. XLA (GSPMD) inserts the gathers and reductions.

Parameter rule (`param_spec`): a tensor is split over "model" along its largest axis whose length
the "model" size divides (ties: the later axis), never along the stacked layer axis of `blocks/*`
tensors, because the forward pass `lax.scan`s over that axis and a split there would be gathered
whole at every step. A tensor with no divisible axis stays replicated, so every config works on
every mesh; with a "model" axis of size 1 every tensor is replicated.

`make_mesh()` spans this process's devices only (`jax.local_devices()`): on several hosts each
host evaluates its own share of the queries without cross-host collectives per batch, and
`engine.across_hosts.evaluate_across_hosts` gathers the results once. Only the device placement changes
the numbers, and only by float summation order (≤ 1e-5 in tests/test_sharding.py).

Usage:
    mesh = make_mesh()                  # all local devices on "data"
    mesh = make_mesh(model=2)           # n/2 on "data" × 2 on "model"
    evaluate(params, config, prefix, queries, candidates, options, mesh=mesh)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxicl.errors import InputError

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)
LAYER_TREE = "blocks"  # params under this key carry a stacked layer axis first (scanned over)


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "model") mesh of data × model devices; data defaults to all devices // model.

    devices defaults to this process's devices (see the module docstring for why). The axes are
    `AxisType.Auto`, so jit propagates shardings from its inputs (no explicit-sharding typing)."""
    devices = list(jax.local_devices() if devices is None else devices)
    for name, size in ((DATA, data), (MODEL, model)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InputError(f"mesh axis {name!r} needs a positive integer size, got {size!r}")
    if data is None:
        if len(devices) % model:
            raise InputError(f"{len(devices)} devices do not split into a 'model' axis of {model}")
        data = len(devices) // model
    if data * model > len(devices):
        raise InputError(f"a {data} × {model} mesh needs {data * model} devices; {len(devices)} available")
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def check_mesh(mesh: Mesh) -> None:
    """Refuse meshes whose axes these helpers would silently ignore or misread, and meshes over
    other processes' devices (results are read back on this host; hosts are not in lock-step)."""
    if not isinstance(mesh, Mesh):
        raise InputError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    unknown = [name for name in mesh.axis_names if name not in AXES]
    if unknown:
        raise InputError(f"unknown mesh axis {unknown}; jaxicl uses {list(AXES)} (make_mesh builds one)")
    if DATA not in mesh.axis_names:
        raise InputError(f"the mesh has no {DATA!r} axis (axes: {list(mesh.axis_names)})")
    here = jax.process_index()
    if any(d.process_index != here for d in mesh.devices.flat):
        raise InputError("the mesh spans other processes' devices; jaxicl meshes are per process "
                         "(make_mesh() uses jax.local_devices()); split work across hosts with "
                         "jaxicl.engine.across_hosts.evaluate_across_hosts")


def axis_size(mesh: Mesh, name: str) -> int:
    """Size of a mesh axis; 1 for an absent optional axis ("model")."""
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


def check_multiple(mesh: Mesh, size: int, what: str) -> None:
    """Rows split evenly over "data" or not at all: name the setting and a value that works."""
    n = axis_size(mesh, DATA)
    if size % n:
        up = -(-size // n) * n
        raise InputError(f"{what} {size} is not a multiple of the mesh's {DATA!r} axis size {n}; use e.g. {up}")


def param_spec(shape: Sequence[int], model_size: int, *, layer_axis: bool = False,
               sets_axis: bool = False) -> PartitionSpec:
    """The spec of one tensor under the module's rule (pure: shapes in, spec out).

    sets_axis: the tensor has a leading axis of stacked copies (finetune_many's sets), split over
    "data"; layer_axis: after it comes a stacked layer axis that is never split."""
    lead = (DATA,) if sets_axis else ()
    skip = len(lead) + bool(layer_axis)
    spec: list[str | None] = [None] * (len(shape) - len(lead))
    if model_size > 1:
        candidates = [i for i in range(skip, len(shape)) if shape[i] % model_size == 0]
        if candidates:
            best = max(candidates, key=lambda i: (shape[i], i))
            spec[best - len(lead)] = MODEL
    return PartitionSpec(*lead, *spec)


def _under_layers(path) -> bool:
    return any(getattr(key, "key", None) == LAYER_TREE for key in path)


def param_shardings(tree: Any, mesh: Mesh, *, sets_axis: bool = False) -> Any:
    """NamedShardings mirroring `tree` (params, or anything shaped like them: optimizer states)."""
    model = axis_size(mesh, MODEL)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(
            mesh, param_spec(np.shape(x), model, layer_axis=_under_layers(path), sets_axis=sets_axis)
        ),
        tree,
    )


def shard_params(tree: Any, mesh: Mesh, *, sets_axis: bool = False) -> Any:
    """Place params by the module's rule; a no-op for arrays already placed so.

    sets_axis: a leading axis of stacked copies goes over "data" (its size must be a multiple)."""
    check_mesh(mesh)
    if sets_axis:
        for leaf in jax.tree.leaves(tree):
            check_multiple(mesh, np.shape(leaf)[0], "the number of stacked sets")
    return jax.device_put(tree, param_shardings(tree, mesh, sets_axis=sets_axis))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf whole on every device (e.g. the prefix KV cache, shared by all query rows)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(tree: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Split axis `axis` (default the leading one) of every leaf over "data" (the rest replicated)."""
    check_mesh(mesh)
    for leaf in jax.tree.leaves(tree):
        check_multiple(mesh, np.shape(leaf)[axis], f"axis {axis} of the batch" if axis else "the batch's leading axis")
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA)))
