"""GD and LCGD on the demonstrations (paper-spec §4, §5): optax SGD through a parameter mask.

Protocol (the authors' code): one demonstration per step, one epoch, the demonstrations ICL saw
in the order ICL saw them; sequence = [BOS] + input + label; loss = mean next-token cross-entropy
over every target after BOS (option: label tokens only); SGD without momentum or weight decay at
the task's learning rate; only the attention keys/values are stepped, but gradients flow through
every layer. LCGD adds `stop_gradient` on every block input and sums the losses of every layer's
readout U(block output) (the last one is the normal output, counted once).

Each step is one jitted function of (trainable, optimizer state, frozen, demonstration); lengths
are padded to multiples of `length_multiple` so a run compiles a handful of shapes. The steps of
several demonstration sets (a task's seeds) can run at once under `jax.vmap` (`finetune_many`),
and with `mesh=` the sets are split over the mesh's "data" axis (jaxicl/sharding.py).
A non-finite loss or gradient stops the run with TrainingError; nothing is returned or saved.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from typing import Literal, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxicl import batch_size, distributed, sharding, stage_clock
from jaxicl import transforms as T
from jaxicl.api import bucket, check_ids
from jaxicl.data.prompts import PromptSet
from jaxicl.data.tasks import Task
from jaxicl.errors import DivergenceError, TrainingError
from jaxicl.icl import EvalOptions, EvalResult, evaluate
from jaxicl.io import checkpoint
from jaxicl.models.config import ModelConfig

Array = jax.Array
Ids = Sequence[int]


# --- objectives ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the loss reads and where gradients may flow.

    readout: "output" (the model's own logits: vanilla GD) or a per-layer readout U of each
      block output ("block", the authors' LCGD) or each attention output ("attn", the paper's).
    causal: stop_gradient on the input of every block (True) or of the listed blocks.
    readout_layers: per-layer losses of these layers only (None: all).
    layer_reduction: how per-layer losses combine ("sum": the authors' code; "mean").
    """

    readout: Literal["output", "block", "attn"] = "output"
    causal: bool | tuple[int, ...] = False
    readout_layers: tuple[int, ...] | None = None
    layer_reduction: Literal["sum", "mean"] = "sum"

    def __post_init__(self):
        for name in ("causal", "readout_layers"):  # any iterable of layers -> a hashable tuple
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                object.__setattr__(self, name, tuple(int(i) for i in value))
        if self.readout not in ("output", *T.READOUT_TAPS):
            raise ValueError(f"readout must be 'output', 'block' or 'attn', got {self.readout!r}")
        if self.layer_reduction not in ("sum", "mean"):
            raise ValueError(f"layer_reduction must be 'sum' or 'mean', got {self.layer_reduction!r}")
        if self.readout_layers is not None and self.readout == "output":
            raise ValueError("readout_layers needs a per-layer readout ('block' or 'attn')")

    def block_input_transform(self):
        if self.causal is False:
            return None
        return T.stop_gradient_inputs(None if self.causal is True else self.causal)


GD = Objective()
LCGD = Objective(readout="block", causal=True)
METHODS = {"gd": GD, "lcgd": LCGD}


@flax.struct.dataclass
class DemoBatch:
    """Padded demonstrations [B, T]: ids, valid (False on padding), next-token targets and loss
    weights (1 on the tokens whose prediction counts)."""

    ids: Array
    valid: Array
    targets: Array
    weights: Array


def objective_loss(params: dict, config: ModelConfig, objective: Objective, batch: DemoBatch) -> tuple[Array, Array]:
    """(loss, per-layer losses [L'] — or [1] for the output readout) of a batch of demonstrations.
    The output readout is U applied to the last block's output, i.e. the model's own logits."""
    transform = objective.block_input_transform()
    readout = "block" if objective.readout == "output" else objective.readout
    states = T.block_states(
        params, config, batch.ids, readout=readout, valid=batch.valid, block_input_transform=transform
    )
    if objective.readout == "output":
        states = states[-1:]
    elif objective.readout_layers is not None:
        states = states[jnp.asarray(objective.readout_layers)]
    per_layer = T.readout_losses(params, config, states, batch.targets, batch.weights)
    loss = per_layer.sum() if objective.layer_reduction == "sum" else per_layer.mean()
    return loss, per_layer


# --- options -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """Finetuning settings; defaults follow the authors' code except fp32 (they ran fp16).

    length_multiple: demonstrations are padded up to a multiple of it; each step's cost grows with
    the padded length, each new length costs a compilation (SST-2 on Gemma: 8..38 tokens, so 16
    gives 3 shapes and wastes far less than 32; accelerators favour larger multiples).
    all_grad_norms: also record each block's gradient norm over all its parameters (the authors'
    Fig. 4 logging); costs the weight gradients of every block (not of the embeddings)."""

    lr: float
    objective: Objective = GD
    loss_tokens: Literal["all", "label"] = "all"
    clip_norm: float | None = None
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    length_multiple: int = 16
    all_grad_norms: bool = True

    def __post_init__(self):
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.loss_tokens not in ("all", "label"):
            raise ValueError(f"loss_tokens must be 'all' or 'label', got {self.loss_tokens!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {self.length_multiple}")

    @classmethod
    def for_task(cls, task: Task, method: str = "gd", **changes) -> "FinetuneOptions":
        """The paper's settings for a task (its learning rate, paper-spec §3.2) and method."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
        if task.lr is None:
            raise TrainingError(f"task {task.name!r} has no learning rate; pass lr explicitly")
        return cls(**({"lr": task.lr, "objective": METHODS[method]} | changes))


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static part of a step (the learning rate is traced, so tasks share compilations)."""

    objective: Objective
    clip_norm: float | None
    compute_dtype: str
    all_grad_norms: bool

    @classmethod
    def of(cls, options: FinetuneOptions) -> "StepSpec":
        return cls(options.objective, options.clip_norm, options.compute_dtype, options.all_grad_norms)


def optimizer(spec: StepSpec, lr) -> optax.GradientTransformation:
    """optax SGD (clipped by global norm if asked) applied to the masked gradient."""
    sgd = optax.sgd(lr)  # momentum None, no weight decay: fairseq's sgd defaults
    return optax.chain(optax.clip_by_global_norm(spec.clip_norm), sgd) if spec.clip_norm else sgd


# --- the step ------------------------------------------------------------------------------------


@flax.struct.dataclass
class StepStats:
    loss: Array  # scalar, before the update
    layer_losses: Array  # [L'] per-layer readout losses ([1] for the output readout)
    kv_grad_norms: Array  # [L] l2 norm of the stepped (masked: k/v by default) gradient per block
    grad_norms: Array  # [L] l2 norm over all of a block's parameters (NaN if not recorded)


def _layer_norms(grads: dict, n_layers: int) -> Array:
    flat = T.flatten(grads)
    total = jnp.zeros((n_layers,), jnp.float32)
    for path, g in flat.items():
        if path.startswith("blocks/"):
            total = total + jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(n_layers, -1), axis=1)
    return jnp.sqrt(total)


def _step_impl(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask):
    params = T.merge_params(trainable, frozen)
    paths = set(mask.paths)
    if spec.all_grad_norms:
        paths |= {p for p in T.flatten(params) if p.startswith("blocks/")}
    diff, rest = T.split_params(params, paths)
    dtype = jnp.dtype(spec.compute_dtype)

    def loss_fn(diff):
        full = jax.tree.map(lambda x: x.astype(dtype), T.merge_params(diff, rest))
        return objective_loss(full, config, spec.objective, batch)

    (loss, layer_losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(diff)
    stepped = mask.apply(grads)
    masked_norms = _layer_norms(stepped, config.n_layers)
    all_norms = (
        _layer_norms(grads, config.n_layers) if spec.all_grad_norms else jnp.full((config.n_layers,), jnp.nan)
    )
    updates, new_opt_state = optimizer(spec, lr).update(stepped, opt_state, trainable)
    new = mask.where(optax.apply_updates(trainable, updates), trainable)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
    stats = StepStats(loss, layer_losses, masked_norms, all_norms)
    return keep(new, trainable), keep(new_opt_state, opt_state), stats


_STATIC = ("config", "spec", "mask")


@functools.partial(jax.jit, static_argnames=_STATIC)
def train_step(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask):
    """One SGD step on a padded demonstration batch [1, T] -> (trainable, opt_state, StepStats).

    trainable/frozen: `transforms.split_params(params, mask.paths)` (frozen may be in the compute
    dtype already); lr: traced scalar; active=False computes the step but keeps the old params."""
    return _step_impl(trainable, opt_state, frozen, batch, lr, active, config=config, spec=spec, mask=mask)


def _step_many(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask, frozen_per_set):
    step = functools.partial(_step_impl, config=config, spec=spec, mask=mask)
    axes = (0, 0, 0 if frozen_per_set else None, 0, 0, 0)
    return jax.vmap(step, in_axes=axes)(trainable, opt_state, frozen, batch, lr, active)


_MANY_STATIC = (*_STATIC, "frozen_per_set")


@functools.partial(jax.jit, static_argnames=_MANY_STATIC)
def train_step_many(trainable, opt_state, frozen, batch, lr, active, *, config, spec, mask, frozen_per_set=False):
    """`train_step` vmapped over a leading set axis of trainable, opt_state, batch, lr and active
    (and of frozen if `frozen_per_set`: sets that start from different params)."""
    return _step_many(
        trainable, opt_state, frozen, batch, lr, active, config=config, spec=spec, mask=mask,
        frozen_per_set=frozen_per_set,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=_MANY_STATIC)
def train_run_many(trainable, opt_state, frozen, batches, lr, active, *, config, spec, mask, frozen_per_set=False):
    """Every step of a run of `train_step_many` as one `lax.scan`: one dispatch for the whole run.

    batches: [n_steps, S, 1, T] (one padded length for every step); active: [n_steps, S].
    Returns (trainable, opt_state, StepStats with leaves [n_steps, S, ...])."""

    def body(carry, xs):
        batch, on = xs
        new_trainable, new_state, stats = _step_many(
            *carry, frozen, batch, lr, on, config=config, spec=spec, mask=mask, frozen_per_set=frozen_per_set
        )
        return (new_trainable, new_state), stats

    (trainable, opt_state), stats = jax.lax.scan(body, (trainable, opt_state), (batches, active))
    return trainable, opt_state, stats


# --- demonstrations ------------------------------------------------------------------------------


def demo_arrays(
    sequence: Ids, label_start: int | None, loss_tokens: str, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, valid, targets, weights), each [length], of one demonstration: targets[t] = ids[t+1];
    weights 1 on every target after BOS ("all") or on the label tokens only ("label")."""
    n = len(sequence)
    ids = np.zeros(length, np.int32)
    valid = np.zeros(length, bool)
    targets = np.zeros(length, np.int32)
    weights = np.zeros(length, np.float32)
    ids[:n] = sequence
    valid[:n] = True
    targets[: n - 1] = sequence[1:]
    first = 0 if loss_tokens == "all" else label_start - 1
    weights[first : n - 1] = 1.0
    return ids, valid, targets, weights


def demo_batch(
    sequence: Ids, *, label_start: int | None = None, loss_tokens: str = "all", length_multiple: int = 16
) -> DemoBatch:
    """One demonstration as a [1, T] batch, T its length rounded up to `length_multiple`."""
    return _batch([demo_arrays(sequence, label_start, loss_tokens, bucket(len(sequence), length_multiple))])


def _check_demos(config: ModelConfig, sequences: Sequence[Ids], label_starts, options) -> list[tuple[int, ...]]:
    if not len(sequences):
        raise TrainingError("no demonstrations to finetune on")
    seqs = []
    for i, seq in enumerate(sequences):
        check_ids(config, seq, what=f"demonstration {i}")
        if len(seq) < 2:
            raise TrainingError(f"demonstration {i} has {len(seq)} token(s); a loss needs at least 2")
        seqs.append(tuple(int(t) for t in seq))
    if options.loss_tokens == "label":
        if label_starts is None or len(label_starts) != len(seqs):
            raise TrainingError("loss_tokens='label' needs one label start per demonstration")
        for i, (seq, start) in enumerate(zip(seqs, label_starts)):
            if not 1 <= start < len(seq):
                raise TrainingError(f"demonstration {i}: label start {start} outside [1, {len(seq)})")
    return seqs


def _length(config: ModelConfig, n: int, options: FinetuneOptions) -> int:
    return min(bucket(n, options.length_multiple), max(config.max_positions, n))


def _compute_copy(frozen: dict, options: FinetuneOptions) -> dict:
    """The never-stepped params in the compute dtype, cast once instead of at every step."""
    dtype = jnp.dtype(options.compute_dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)


def _batch(arrays: Sequence[tuple[np.ndarray, ...]]) -> DemoBatch:
    """Stack per-demonstration arrays along a new leading axis ([B, T])."""
    return DemoBatch(*(jax.device_put(np.stack(a)) for a in zip(*arrays)))


# --- runs ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    params: dict  # the full finetuned params
    losses: np.ndarray  # [n_steps] loss at each step, before its update
    layer_losses: np.ndarray  # [n_steps, L'] per-layer readout losses ([n_steps, 1] for GD)
    kv_grad_norms: np.ndarray  # [n_steps, L] norm of the stepped (masked: k/v by default) gradient
    grad_norms: np.ndarray  # [n_steps, L] norm over all params of each block (NaN if off)
    seconds: float
    diverged: str | None = None  # finetune_many(on_divergence="mark"): why; params are then non-finite

    def records(self) -> dict[str, np.ndarray]:
        return {
            "losses": self.losses,
            "layer_losses": self.layer_losses,
            "kv_grad_norms": self.kv_grad_norms,
            "grad_norms": self.grad_norms,
        }


def _fetch_stats(steps: Sequence[StepStats] | StepStats) -> dict[str, np.ndarray]:
    """Every step's stats (a list of steps, stacked here on the device, or already stacked by a
    scan), copied to the host in one transfer.

    The steps before it were dispatched without waiting on each other (no per-step host sync);
    this is the run's only device-to-host copy of stats, and its only explicitly allowed one."""
    stacked = steps if isinstance(steps, StepStats) else stack_trees(list(steps))
    fields = {f.name: getattr(stacked, f.name) for f in dataclasses.fields(stacked)}  # asdict would deep-copy
    with jax.transfer_guard_device_to_host("allow"):
        fetched = jax.device_get(fields)
    return {k: np.asarray(v, np.float32) for k, v in fetched.items()}


@jax.jit
def stack_trees(trees: list):
    """Trees of one structure stacked leaf by leaf along a new leading axis (steps, sets, models):
    one program, not one eager op per leaf."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@functools.partial(jax.jit, static_argnums=1)
def _broadcast_sets(tree, n: int):
    """`n` stacked copies of every leaf ([n, ...]): one program, not one eager op per leaf."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)


def _first_divergence(stats: dict[str, np.ndarray]) -> tuple[int, str] | None:
    """(step, why) of the first step with a non-finite loss or stepped gradient, found after the run
    from its stats [n_steps, ...] (every later step computed on non-finite params and is ignored)."""
    bad_loss = ~np.isfinite(stats["loss"])
    bad_grad = ~np.isfinite(stats["kv_grad_norms"].reshape(len(bad_loss), -1)).all(axis=1)
    bad = np.flatnonzero(bad_loss | bad_grad)
    if not bad.size:
        return None
    step = int(bad[0])
    return step, (f"loss {stats['loss'][step]}" if bad_loss[step] else "non-finite gradient")


def _name(step: int, demo_names: Sequence | None) -> str:
    return f"demonstration {step}" + (f" ({demo_names[step]})" if demo_names is not None else "")


def finetune(
    params: dict,
    config: ModelConfig,
    sequences: Sequence[Ids],
    options: FinetuneOptions,
    *,
    label_starts: Sequence[int] | None = None,
    mask: T.ParamMask | None = None,
    demo_names: Sequence | None = None,
) -> FinetuneResult:
    """Finetune on `sequences` ([BOS] + input + label ids), one step per demonstration, in order.

    mask: what is stepped (default: keys/values of every layer). demo_names: how errors name a
    demonstration (e.g. its dataset index). Raises TrainingError on a non-finite loss/gradient."""
    mask = mask or T.kv_mask(config)
    seqs = _check_demos(config, sequences, label_starts, options)
    spec = StepSpec.of(options)
    trainable, frozen = T.split_params(params, mask.paths)
    frozen_c = _compute_copy(frozen, options)
    opt_state = optimizer(spec, options.lr).init(trainable)
    lr = np.float32(options.lr)  # a host scalar: jnp.float32 would compile a conversion
    steps = []
    start = time.perf_counter()
    with stage_clock.waiting():  # dispatching the steps and waiting for their stats and params
        for i, seq in enumerate(seqs):
            ls = None if label_starts is None else label_starts[i]
            batch = _batch([demo_arrays(seq, ls, options.loss_tokens, _length(config, len(seq), options))])
            trainable, opt_state, stats = train_step(
                trainable, opt_state, frozen_c, batch, lr, True, config=config, spec=spec, mask=mask
            )
            steps.append(stats)
        stats = _fetch_stats(steps)
        jax.block_until_ready(trainable)
    diverged = _first_divergence(stats)
    if diverged:
        step, why = diverged
        raise DivergenceError(f"finetuning diverged at step {step} on {_name(step, demo_names)}: {why}")
    return _result(T.merge_params(trainable, frozen), stats, time.perf_counter() - start)


def _result(params: dict, stats: dict[str, np.ndarray], seconds: float, diverged: str | None = None) -> FinetuneResult:
    return FinetuneResult(
        params=params,
        losses=stats["loss"],
        layer_losses=stats["layer_losses"],
        kv_grad_norms=stats["kv_grad_norms"],
        grad_norms=stats["grad_norms"],
        seconds=seconds,
        diverged=diverged,
    )


def finetune_many(
    params: dict | Sequence[dict],
    config: ModelConfig,
    sequence_sets: Sequence[Sequence[Ids]],
    options: FinetuneOptions,
    *,
    label_starts_sets: Sequence[Sequence[int]] | None = None,
    mask: T.ParamMask | None = None,
    max_parallel: int | None = None,
    mesh: Mesh | None = None,
    lrs: Sequence[float] | None = None,
    scan: bool = False,
    on_divergence: str = "raise",
) -> list[FinetuneResult]:
    """`finetune` of several demonstration sets (e.g. a task's seeds), their steps run together
    under `jax.vmap` (`max_parallel` sets at a time, to bound memory).

    params: one tree every set starts from, or one tree per set (e.g. the untrained variants'
    re-initialisations, stacked and vmapped: same shapes required). lrs: one learning rate per
    set (a learning-rate sweep as one more batched axis); default `options.lr` for all.
    scan: pad every step to the run's longest bucket and run all steps as one `lax.scan`, so a
    run is one dispatch (accelerators: dispatch costs more than the padding); else one dispatch
    per step, each padded to its own bucket (a 2-core CPU: padding costs more).

    Step i of every set runs at once, each padded to the longest bucket among them; a set with
    fewer demonstrations idles (its step is computed and discarded). Results equal one-by-one
    runs up to float rounding of the padded/batched kernels (tests/test_finetune.py).

    mesh: split the sets over its "data" axis (the shared params placed by `sharding.shard_params`);
    the number of sets is padded up to a multiple of that axis's size with sets that always idle,
    so a `max_parallel` that is such a multiple wastes nothing.

    on_divergence: "raise" (DivergenceError naming the first diverged set) or "mark" (every set's
    result is returned; a diverged one says why in `diverged`: a learning-rate sweep goes on)."""
    if on_divergence not in ("raise", "mark"):
        raise TrainingError(f"on_divergence must be 'raise' or 'mark', got {on_divergence!r}")
    mask = mask or T.kv_mask(config)
    n_sets = len(sequence_sets)
    starts = list(params) if _per_set(params) else None
    rates = [options.lr] * n_sets if lrs is None else [dataclasses.replace(options, lr=r).lr for r in lrs]
    for what, got in (("params trees", starts), ("learning rates", rates), ("label start lists", label_starts_sets)):
        if got is not None and len(got) != n_sets:
            raise TrainingError(f"{len(got)} {what} for {n_sets} demonstration sets")
    chunk = max_parallel or n_sets
    if chunk < n_sets:
        out = []
        for lo in range(0, n_sets, chunk):
            part = slice(lo, lo + chunk)
            out += finetune_many(
                params if starts is None else starts[part], config, sequence_sets[part], options,
                label_starts_sets=None if label_starts_sets is None else label_starts_sets[part],
                mask=mask, mesh=mesh, lrs=rates[part], scan=scan, on_divergence=on_divergence,
            )  # fmt: skip
        return out
    sets = [
        _check_demos(config, seqs, None if label_starts_sets is None else label_starts_sets[s], options)
        for s, seqs in enumerate(sequence_sets)
    ]
    idle = -n_sets % sharding.axis_size(mesh, sharding.DATA) if mesh is not None else 0
    if mesh is not None:
        sharding.check_mesh(mesh)
    sets += [[]] * idle  # idle sets: never active
    rates += [rates[0]] * idle
    spec = StepSpec.of(options)
    if starts is None:
        one, frozen = T.split_params(params, mask.paths)
        frozens = [frozen] * n_sets
        trainable = _broadcast_sets(one, len(sets))
        frozen_c = _compute_copy(frozen, options)
    else:
        parts = [T.split_params(p, mask.paths) for p in starts + starts[:1] * idle]
        _check_same_shapes([p for p, _ in parts], [f for _, f in parts])
        frozens = [f for _, f in parts]
        trainable = stack_trees([p for p, _ in parts])
        frozen_c = _compute_copy(stack_trees(frozens), options)
        one = parts[0][0]
    opt_state = _broadcast_sets(optimizer(spec, options.lr).init(one), len(sets))
    lr = jax.device_put(np.asarray(rates, np.float32))
    if mesh is not None:
        frozen_c = sharding.shard_params(frozen_c, mesh, sets_axis=starts is not None)
        trainable, opt_state = sharding.shard_params((trainable, opt_state), mesh, sets_axis=True)
        lr = sharding.shard_batch(lr, mesh)
    statics = dict(config=config, spec=spec, mask=mask, frozen_per_set=starts is not None)
    n_steps = max(map(len, sets))
    active = np.array([[i < len(seqs) for seqs in sets] for i in range(n_steps)])  # [n_steps, S]
    lengths = [max(_length(config, len(seqs[i]), options) for seqs in sets if i < len(seqs)) for i in range(n_steps)]
    if scan:
        lengths = [max(lengths)] * n_steps
    batches = [_step_batch(sets, label_starts_sets, options, i, lengths[i], active[i]) for i in range(n_steps)]
    start = time.perf_counter()
    with stage_clock.waiting():  # dispatching the steps and waiting for their stats and params
        if scan:
            batch = jax.tree.map(lambda *xs: np.stack(xs), *batches)  # [n_steps, S, 1, T]
            batch, on = jax.device_put((batch, active))
            if mesh is not None:
                batch, on = sharding.shard_batch((batch, on), mesh, axis=1)
            trainable, opt_state, stacked = train_run_many(trainable, opt_state, frozen_c, batch, lr, on, **statics)
            stats = _fetch_stats(stacked)
        else:
            steps = []
            for i in range(n_steps):
                batch, on = jax.device_put((batches[i], active[i]))
                if mesh is not None:
                    batch, on = sharding.shard_batch((batch, on), mesh)
                trainable, opt_state, step_stats = train_step_many(
                    trainable, opt_state, frozen_c, batch, lr, on, **statics
                )
                steps.append(step_stats)
            stats = _fetch_stats(steps)  # [n_steps, n_sets, ...]
        jax.block_until_ready(trainable)
    per_set = [{k: v[: len(sets[s]), s] for k, v in stats.items()} for s in range(n_sets)]  # its active steps
    why = [None] * n_sets
    for s, set_stats in enumerate(per_set):
        diverged = _first_divergence(set_stats)
        if diverged:
            step, reason = diverged
            why[s] = f"finetuning diverged in set {s} at step {step} on demonstration {step}: {reason}"
            if on_divergence == "raise":
                raise DivergenceError(why[s])
    seconds = time.perf_counter() - start
    trained = _unstack(trainable)
    return [_result(T.merge_params(trained[s], frozens[s]), per_set[s], seconds, why[s]) for s in range(n_sets)]


@jax.jit
def _unstack(tree) -> tuple:
    """The sets of a stacked tree ([S, ...] leaves) as S trees: one program, not one eager slice
    per set and leaf."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return tuple(jax.tree.map(lambda x, s=s: x[s], tree) for s in range(n))


def _per_set(params) -> bool:
    """A sequence of param trees (one per set) rather than one tree (a dict)."""
    return not isinstance(params, dict)


def _check_same_shapes(*groups: Sequence[dict]) -> None:
    """Per-set starting params must stack: the same tree structure and shapes in every set."""
    for trees in groups:
        first = jax.tree.map(np.shape, trees[0])
        for s, tree in enumerate(trees[1:], 1):
            if jax.tree.map(np.shape, tree) != first:
                raise TrainingError(f"the params of set {s} differ in structure or shapes from those of set 0")


def _step_batch(sets, label_starts_sets, options: FinetuneOptions, i: int, length: int, active) -> DemoBatch:
    """Host arrays [S, 1, length] of step i of every set; an idle set repeats a busy one's
    demonstration (computed and discarded)."""
    busy = int(np.argmax(active))
    arrays = []
    for s in range(len(sets)):
        src = s if active[s] else busy
        ls = None if label_starts_sets is None else label_starts_sets[src][i]
        arrays.append(demo_arrays(sets[src][i], ls, options.loss_tokens, length))
    return DemoBatch(*(np.stack(a)[:, None] for a in zip(*arrays)))


def finetune_prompts(
    params: dict, config: ModelConfig, prompts: PromptSet, options: FinetuneOptions, *, mask: T.ParamMask | None = None
) -> FinetuneResult:
    """`finetune` on the demonstrations ICL saw (`prompts.ft_sequences`), in ICL order."""
    names = [f"dataset index {i}" for i in prompts.demo_indices]
    return finetune(
        params, config, prompts.ft_sequences, options,
        label_starts=prompts.ft_label_starts, mask=mask, demo_names=names,
    )  # fmt: skip


# --- resumable runs and evaluation --------------------------------------------------------------


def run_key(
    config: ModelConfig,
    sequences: Sequence[Ids],
    options: FinetuneOptions,
    mask: T.ParamMask,
    base: str,
    label_starts: Sequence[int] | None = None,
) -> str:
    """Hash of everything a finetuning result depends on; `base` identifies the starting params."""
    return checkpoint.fingerprint(
        {
            "model": config.fingerprint_fields(),
            "options": dataclasses.asdict(options),
            "mask": [list(e) for e in mask.entries],
            "sequences": [list(map(int, s)) for s in sequences],
            "label_starts": None if label_starts is None else list(map(int, label_starts)),
            "base": base,
        }
    )


def finetune_cached(
    directory,
    params: dict,
    config: ModelConfig,
    sequences: Sequence[Ids],
    options: FinetuneOptions,
    *,
    label_starts: Sequence[int] | None = None,
    mask: T.ParamMask | None = None,
    base: str | None = None,
    demo_names: Sequence | None = None,
) -> tuple[FinetuneResult, bool]:
    """(result, resumed): the saved result of this exact run if `directory` holds one, else
    finetune and save (only the stepped tensors and the records; the rest is `params`).

    base: identity of the starting params (e.g. "gemma3-270m/trained"); default: a sha256 of
    every tensor (about a second per GB). A diverged run raises and writes nothing.

    Several processes (jax.distributed): the checkpoint is process 0's. If it has one, its tensors
    and records are broadcast, so every process goes on from the same params; if not, every process
    finetunes (same data, same deterministic steps: simpler than one trainer plus a broadcast, and
    each needs the params for its share of the evaluation) and process 0 alone saves."""
    mask = mask or T.kv_mask(config)
    base = base if base is not None else checkpoint.array_fingerprint(params)
    key = run_key(config, sequences, options, mask, base, label_starts)
    stepped, rest = T.split_params(params, mask.paths)
    expect = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stepped)}
    found = distributed.on_host0(checkpoint.restore, directory, key, expect=expect)
    if found is not None:
        tree, meta = found
        saved = jax.device_put(tree["params"])
        records = {k: np.asarray(v) for k, v in tree["records"].items()}
        return FinetuneResult(params=T.merge_params(saved, rest), seconds=meta["seconds"], **records), True
    result = finetune(
        params, config, sequences, options, label_starts=label_starts, mask=mask, demo_names=demo_names
    )
    _save(directory, key, result, mask)
    return result, False


def _save(directory, key: str, result: FinetuneResult, mask: T.ParamMask) -> None:
    """What finetune_cached keeps of a result (the stepped tensors and the records), process 0 only."""
    tree = {"params": T.split_params(result.params, mask.paths)[0], "records": result.records()}
    if distributed.is_writer():
        checkpoint.save(directory, tree, key, meta={"seconds": result.seconds, "steps": len(result.losses)})


def finetune_many_cached(
    directories: Sequence,
    params: dict | Sequence[dict],
    config: ModelConfig,
    sequence_sets: Sequence[Sequence[Ids]],
    options: FinetuneOptions,
    *,
    bases: Sequence[str],
    label_starts_sets: Sequence[Sequence[int]] | None = None,
    mask: T.ParamMask | None = None,
    max_parallel: int | None = None,
    lrs: Sequence[float] | None = None,
    scan: bool = False,
) -> list[bool]:
    """Finetune together (`finetune_many`) the sets whose directory holds no saved result of that
    exact run, and save each as `finetune_cached` would, so that a later `finetune_cached` of the
    same run (same `base`, same params, `options` with that set's rate) restores it. Returns, per
    set, whether it was computed here.

    params, lrs: as in `finetune_many` (one tree or one per set; one rate per set, part of each
    set's key). Out of device memory, the runs are retried half as many at a time (warning with
    the size), down to one; a diverged set raises (naming the set) before anything of this batch
    is saved."""
    mask = mask or T.kv_mask(config)
    starts = label_starts_sets or [None] * len(sequence_sets)
    rates = lrs if lrs is not None else [options.lr] * len(sequence_sets)
    set_options = [dataclasses.replace(options, lr=r) for r in rates]
    keys = [
        run_key(config, seqs, opts, mask, base, ls)
        for seqs, ls, base, opts in zip(sequence_sets, starts, bases, set_options, strict=True)
    ]
    have = distributed.on_host0(lambda: [checkpoint.has(d, k) for d, k in zip(directories, keys, strict=True)])
    todo = [i for i, found in enumerate(have) if not found]
    if todo:
        pick = lambda items: None if items is None else [items[i] for i in todo]  # noqa: E731
        chunk = min(max_parallel or len(todo), len(todo))
        while True:
            try:
                results = finetune_many(
                    params if not _per_set(params) else pick(params), config, pick(sequence_sets), options,
                    mask=mask, max_parallel=chunk, label_starts_sets=pick(label_starts_sets),
                    lrs=pick(rates), scan=scan,
                )  # fmt: skip
                break
            except jax.errors.JaxRuntimeError as e:
                if not batch_size.is_out_of_memory(e):
                    raise
                smaller = batch_size.halved(chunk)
                longest = max(len(seq) for i in todo for seq in sequence_sets[i])
                if smaller is None:
                    raise TrainingError(
                        f"out of device memory finetuning one run at a time ({len(todo)} runs of up to "
                        f"{max(len(sequence_sets[i]) for i in todo)} demonstrations, the longest {longest} tokens)"
                    ) from e
                warnings.warn(f"out of device memory finetuning {chunk} runs at once; retrying {smaller} at a time")
                chunk = smaller
        for i, result in zip(todo, results):
            _save(directories[i], keys[i], result, mask)
    return [not found for found in have]


def evaluate_finetuned(
    params_ft: dict, config: ModelConfig, prompts: PromptSet, options: EvalOptions | None = None
) -> EvalResult:
    """Zero-shot evaluation of finetuned params ("ftzs"): the ICL evaluator with the zero-shot
    prefix and the same queries, candidates and probe records as the zs and ICL runs."""
    return evaluate(
        params_ft, config, prompts.zs_prefix_ids, prompts.query_ids, prompts.candidate_ids,
        options or EvalOptions(),
    )  # fmt: skip
