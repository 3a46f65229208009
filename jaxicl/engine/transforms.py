"""Small composable transforms of the one forward pass, for GD-vs-ICL research (docs/method.md#finetuning).

Each is a plain function over pytrees, so it composes with `jax.grad`, `jax.jit` and `jax.vmap`:

  * layer causality: `stop_gradient_inputs(layers)`, a `block_input_transform` for `forward` that
    detaches every block's residual input (or only those of the given layers);
  * per-layer readout: `block_states` records each block's output ("block", the authors' code) or
    each attention output ("attn", the paper's formula) at every position, and `readout_losses`
    applies the final norm + unembedding U to them, a few layers at a time (never [L, T, V]);
  * parameter masks: `ParamMask`, which parameters (and which layers of stacked block tensors) a
    step may change; `kv_mask` (attention keys and values, biases included, the shared KV heads
    in GQA/MQA) or `mask_from_predicate` for any rule over parameter paths;
  * untrained baselines: `reinit` re-initialises all but the kept parameters with a seeded init.

Parameter paths are the params-layout keys joined by "/", e.g. "blocks/k/w", "final_norm/scale".
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.errors import TrainingError
from jaxicl.models import layers
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import init_params, param_shapes
from jaxicl.models.transformer import BlockInputTransform, forward

Array = jax.Array
Readout = Literal["block", "attn"]
READOUT_TAPS = {"block": "resid_post", "attn": "attn_out"}
LOGITS_BUDGET = 1 << 28  # bytes of float32 logits a per-layer readout may hold at once (256 MiB)
VARIANTS = ("trained", "trained-embeddings", "no-training", "no-training-keep-norms")
EMBEDDING_PATHS = ("embed", "unembed", "pos_embed")


# --- paths ---------------------------------------------------------------------------------------


def flatten(tree: Mapping) -> dict[str, object]:
    """Nested dict -> {"a/b/c": leaf}, in the dict's own order."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update({f"{key}/{sub}": leaf for sub, leaf in flatten(value).items()})
        else:
            out[key] = value
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    """{"a/b/c": leaf} -> nested dict (inverse of `flatten`)."""
    out: dict = {}
    for path, leaf in flat.items():
        *parents, name = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return out


def split_params(params: Mapping, paths: Iterable[str]) -> tuple[dict, dict]:
    """(the leaves at `paths`, everything else), both nested dicts; `merge_params` undoes it.

    Differentiating with respect to the first part only is how a step avoids computing gradients
    of parameters it will never change (e.g. a 262k-row embedding)."""
    wanted = set(paths)
    flat = flatten(params)
    missing = wanted - set(flat)
    if missing:
        raise KeyError(f"no parameters at {sorted(missing)}")
    return (
        unflatten({p: x for p, x in flat.items() if p in wanted}),
        unflatten({p: x for p, x in flat.items() if p not in wanted}),
    )


def merge_params(*parts: Mapping) -> dict:
    """Union of disjoint nested dicts (e.g. the two halves of `split_params`)."""
    flat: dict = {}
    for part in parts:
        flat.update(flatten(part))
    return unflatten(flat)


def _shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(param_shapes(config), is_leaf=is_shape)[0]
    return {"/".join(k.key for k in path): shape for path, shape in leaves}


# --- layer causality and per-layer readout -------------------------------------------------------


def stop_gradient_inputs(layers: Iterable[int] | None = None) -> BlockInputTransform:
    """Layer causality: `stop_gradient` on the residual input of every block (None) or of the
    given blocks only, so a block's parameters get gradient only from losses read at or above it
    through its own output, never through the blocks below."""
    if layers is None:
        return lambda x, layer: jax.lax.stop_gradient(x)
    chosen = jnp.asarray(sorted(set(int(i) for i in layers)), jnp.int32)

    def transform(x: Array, layer: Array) -> Array:
        return jnp.where(jnp.any(chosen == layer), jax.lax.stop_gradient(x), x)

    return transform


def block_states(
    params: dict,
    config: ModelConfig,
    ids: Array,
    *,
    readout: Readout = "block",
    valid: Array | None = None,
    block_input_transform: BlockInputTransform | None = None,
) -> Array:
    """Per-layer states [L, B, T, d] at every position: block outputs ("block") or attention
    outputs after the output projection, before any post-norm or residual add ("attn")."""
    if readout not in READOUT_TAPS:
        raise ValueError(f"readout must be one of {sorted(READOUT_TAPS)}, got {readout!r}")
    tap = READOUT_TAPS[readout]
    out = forward(
        params, config, ids, valid=valid, logits_at=None, taps=(tap,), block_input_transform=block_input_transform
    )
    return out.taps[tap]


def token_loss(logits: Array, targets: Array, weights: Array) -> Array:
    """Weighted mean next-token cross-entropy: logits [..., T, V], targets/weights [..., T]."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def readout_losses(
    params: dict,
    config: ModelConfig,
    states: Array,
    targets: Array,
    weights: Array,
    *,
    logits_budget: int = LOGITS_BUDGET,
) -> Array:
    """[L'] loss of U(state) per layer, U = final norm + unembedding (frozen or not, as the caller
    differentiates).

    The final norm is ordinary autodiff; the unembedding + cross-entropy is one fused custom-VJP
    op (`_readout_xent`) that returns each layer's gradient with respect to its normed state from
    the forward pass itself: two [V, d] matmuls per layer instead of the three of a rematerialised
    backward, and the [L, B, T, V] logits never exist at once (Gemma's vocabulary has 262144
    entries). Layers go through in groups, each group's float32 logits within `logits_budget` bytes,
    so short demonstrations get a few large matmuls instead of L small ones."""
    per_layer = int(np.prod(states.shape[1:-1])) * config.vocab_size * 4
    n_groups = -(-states.shape[0] // max(logits_budget // per_layer, 1))
    group = -(-states.shape[0] // n_groups)  # as even as possible: little zero-padding
    normed = layers.norm(states, params["final_norm"], config)
    if config.tie_embeddings:
        table, transposed = params["embed"], False  # [V, d]
    else:
        table, transposed = params["unembed"], True  # [d, V]
    rows = normed.reshape(normed.shape[0], -1, normed.shape[-1])  # [L', N, d]
    flat_targets, flat_weights = targets.reshape(-1), weights.reshape(-1).astype(jnp.float32)
    return _readout_xent(rows, table, flat_targets, flat_weights, group, transposed, config.final_logit_softcap)


def _readout_pieces(x, table, targets, scale, transposed, softcap):
    """For x [G, N, d]: weighted nll [G, N], and d(sum of weighted nll)/d(logits) as two parts,
    a dense [G, N, V] one (softmax) minus a sparse one [G, N] at each row's target (no one-hot
    [G, N, V] is ever built)."""
    eq = "gnd,dv->gnv" if transposed else "gnd,vd->gnv"
    z = jnp.einsum(eq, x, table.astype(x.dtype)).astype(jnp.float32)
    logits = jnp.tanh(z / softcap) * softcap if softcap else z
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.broadcast_to(targets, logits.shape[:-1])[..., None], axis=-1)[..., 0]
    nll = (lse - picked) * scale
    dense = jnp.exp(logits - lse[..., None]) * scale[:, None]
    sparse = jnp.broadcast_to(scale, nll.shape)
    if softcap:  # d tanh: 1 - tanh^2 at each logit
        dense = dense * (1.0 - jnp.square(logits / softcap))
        sparse = sparse * (1.0 - jnp.square(picked / softcap))
    return nll, dense, sparse


def _table_rows(table: Array, targets: Array, transposed: bool) -> Array:
    """The unembedding vectors [N, d] of the targets."""
    return (table[:, targets].T if transposed else table[targets]).astype(jnp.float32)


def _in_groups(tree, group: int):
    """Each leaf [L', ...] zero-padded to a multiple of `group` layers and split [L'/group, group, ...]."""
    def split(a):
        pad = -a.shape[0] % group
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((-1, group) + a.shape[1:])

    return jax.tree.map(split, tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _readout_xent(x, table, targets, weights, group, transposed, softcap):
    """Weighted mean next-token cross-entropy of x @ table per layer: x [L', N, d] -> [L']."""
    return _readout_xent_fwd(x, table, targets, weights, group, transposed, softcap)[0]


def _readout_xent_fwd(x, table, targets, weights, group, transposed, softcap):
    scale = weights / jnp.maximum(jnp.sum(weights), 1.0)
    eq = "gnv,dv->gnd" if transposed else "gnv,vd->gnd"
    rows = _table_rows(table, targets, transposed)

    def one(xg):
        nll, dense, sparse = _readout_pieces(xg, table, targets, scale, transposed, softcap)
        dx = jnp.einsum(eq, dense, table.astype(jnp.float32)) - sparse[..., None] * rows
        return nll.sum(-1), dx.astype(x.dtype)

    grouped = jax.lax.map(one, _in_groups(x, group))
    losses, dx = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[: x.shape[0]], grouped)
    return losses, (x, table, targets, scale, dx)


def _readout_xent_bwd(group, transposed, softcap, residuals, cotangent):
    x, table, targets, scale, dx = residuals
    ct = cotangent.astype(jnp.float32)

    def table_grad(args):  # recomputed only if the table itself is differentiated (else dead code)
        xg, cg = args
        _, dense, sparse = _readout_pieces(xg, table, targets, scale, transposed, softcap)
        xf = xg.astype(jnp.float32) * cg[:, None, None]
        eq = "gnv,gnd->dv" if transposed else "gnv,gnd->vd"
        at_targets = jnp.einsum("gn,gnd->nd", sparse, xf)
        grad = jnp.einsum(eq, dense, xf)
        return grad.at[:, targets].add(-at_targets.T) if transposed else grad.at[targets].add(-at_targets)

    d_table = jax.lax.map(table_grad, _in_groups((x, ct), group)).sum(0)
    d_x = (dx * ct[:, None, None]).astype(x.dtype)
    return d_x, d_table.astype(table.dtype), None, None


_readout_xent.defvjp(_readout_xent_fwd, _readout_xent_bwd)


# --- parameter masks -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamMask:
    """Which parameters a step may change: (path, layers) pairs, layers None for a whole tensor
    (any tensor outside "blocks/") or the selected indices along a block tensor's layer axis.

    Hashable, so it can be a static argument of a jitted step. Never empty."""

    entries: tuple[tuple[str, tuple[int, ...] | None], ...]

    def __post_init__(self):
        if not self.entries or all(layers == () for _, layers in self.entries):
            raise TrainingError("the parameter mask selects no parameter; nothing would be trained")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.entries)

    def selector(self, path: str, ndim: int, n_layers: int | None = None) -> Array | bool:
        """Boolean broadcastable to the tensor at `path` (True where the step may change it)."""
        layers = dict(self.entries)[path]
        if layers is None:
            return True
        n = n_layers if n_layers is not None else max(layers) + 1
        sel = np.zeros(n, bool)
        sel[list(layers)] = True
        return jnp.asarray(sel.reshape((n,) + (1,) * (ndim - 1)))

    def apply(self, tree: Mapping) -> dict:
        """The masked leaves of `tree` (a params-like tree holding at least `paths`), zero where
        not selected; the result holds exactly `paths`."""
        flat = flatten(tree)
        return unflatten(
            {p: jnp.where(self.selector(p, flat[p].ndim, flat[p].shape[0]), flat[p], 0) for p in self.paths}
        )

    def where(self, new: Mapping, old: Mapping) -> dict:
        """`new` on selected entries, `old` elsewhere (both trees holding exactly `paths`)."""
        fn, fo = flatten(new), flatten(old)
        return unflatten(
            {p: jnp.where(self.selector(p, fo[p].ndim, fo[p].shape[0]), fn[p], fo[p]) for p in self.paths}
        )

    def size(self, config: ModelConfig) -> int:
        """Number of scalar parameters selected."""
        shapes = _shapes(config)
        total = 0
        for path, selected in self.entries:
            n = int(np.prod(shapes[path]))
            total += n if selected is None else n // shapes[path][0] * len(selected)
        return total


def mask_from_predicate(config: ModelConfig, predicate: Callable[[str, int | None], bool]) -> ParamMask:
    """Mask of the parameters where `predicate(path, layer)` holds; `layer` is the block index for
    tensors under "blocks/" (asked once per layer) and None for the others."""
    entries = []
    for path in _shapes(config):
        if path.startswith("blocks/"):
            layers = tuple(i for i in range(config.n_layers) if predicate(path, i))
            if layers:
                entries.append((path, layers))
        elif predicate(path, None):
            entries.append((path, None))
    if not entries:
        raise TrainingError("the parameter mask selects no parameter; the predicate matched nothing")
    return ParamMask(tuple(entries))


def kv_mask(config: ModelConfig, layers: Iterable[int] | None = None, parts: Iterable[str] = ("k", "v")) -> ParamMask:
    """Attention key and value projections (or only `parts` of them: "k", "v"), weights and biases
    where the family has them, of every layer or of `layers`. Under GQA/MQA these are the shared KV
    heads ([d, n_kv_heads * hd])."""
    chosen = None if layers is None else {int(i) for i in layers}
    if chosen is not None and not chosen <= set(range(config.n_layers)):
        raise TrainingError(f"layers {sorted(chosen)} outside [0, {config.n_layers})")
    parts = tuple(parts)
    if not parts or not set(parts) <= {"k", "v"}:
        raise TrainingError(f"parts must name 'k' and/or 'v', got {list(parts)}")
    return mask_from_predicate(
        config,
        lambda path, layer: path.split("/")[:2] in [["blocks", p] for p in parts]
        and (chosen is None or layer in chosen),
    )


def masked_sgd(params: dict, grads: Mapping, mask: ParamMask, lr: float | Array) -> dict:
    """params − lr · grads on the masked entries only (`grads` holds at least the mask's paths)."""
    stepped, rest = split_params(params, mask.paths)
    g = mask.apply(grads)
    new = jax.tree.map(lambda p, d: p - jnp.asarray(lr, p.dtype) * d.astype(p.dtype), stepped, g)
    return merge_params(mask.where(new, stepped), rest)


# --- untrained baselines -------------------------------------------------------------------------


def is_norm(path: str) -> bool:
    """Every normalisation parameter (block norms, QK-norms, post-norms, the final norm)."""
    return any(part.endswith("norm") for part in path.split("/"))


def reinit(params: dict, config: ModelConfig, variant: str, seed: int) -> dict:
    """Untrained-baseline params (docs/method.md#untrained-baselines), a pure function of (config, variant, seed), so
    the zero-shot, ICL and finetuning runs of one cell get identical random weights.

    "trained": params unchanged; "trained-embeddings": keep token/position embeddings, the
    unembedding and all norms (the authors' code); "no-training": everything re-initialised;
    "no-training-keep-norms": only the norms kept (what the authors' log names suggest).
    Re-initialised tensors come from `init_params` (normal(0, 0.02), zero biases, identity norms)
    in each tensor's dtype."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    if variant == "trained":
        return params
    keep = {
        "trained-embeddings": lambda p: p in EMBEDDING_PATHS or is_norm(p),
        "no-training": lambda p: False,
        "no-training-keep-norms": is_norm,
    }[variant]
    # eager on purpose: a jitted init differs in the last bit (XLA fuses 0.02 * normal), which the
    # untrained runs amplify, and the committed results were made with the eager one
    fresh = flatten(init_params(config, jax.random.PRNGKey(seed)))
    return unflatten({p: x if keep(p) else fresh[p].astype(x.dtype) for p, x in flatten(params).items()})
