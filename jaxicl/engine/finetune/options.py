"""Finetuning settings (the learning rate, objective, loss tokens, precision) and the optimizer.

The defaults follow the authors' code: SGD without momentum or weight decay, loss on every token,
keys and values stepped; except that we compute in float32 where they ran fp16.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import optax

from jaxicl.data.tasks import Task
from jaxicl.engine import transforms as T
from jaxicl.engine.finetune.objective import GD, METHODS, Objective
from jaxicl.errors import TrainingError
from jaxicl.models.config import ModelConfig

STEPPED = {"kv": ("k", "v"), "k": ("k",), "v": ("v",)}  # FinetuneOptions.stepped -> kv_mask's parts
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """Finetuning settings; defaults follow the authors' code except fp32 (they ran fp16).

    length_multiple: demonstrations are padded up to a multiple of it; each step's cost grows with
    the padded length, each new length costs a compilation (SST-2 on Gemma: 8..38 tokens, so 16
    gives 3 shapes and wastes far less than 32; accelerators favour larger multiples).
    all_grad_norms: also record each block's gradient norm over all its parameters (the authors'
    Fig. 4 logging); costs the weight gradients of every block (not of the embeddings).
    stepped: which attention projections SGD changes when no explicit mask is given: keys and
    values ("kv", the paper's), keys only ("k") or values only ("v").
    compute_dtype: the forward and backward passes' dtype; the stepped params stay float32 (master
    weights), as in mixed-precision training. No float16: Gemma's activations overflow it."""

    lr: float
    objective: Objective = GD
    loss_tokens: Literal["all", "label"] = "all"
    clip_norm: float | None = None
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    length_multiple: int = 16
    all_grad_norms: bool = True
    stepped: Literal["kv", "k", "v"] = "kv"

    def __post_init__(self):
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.loss_tokens not in ("all", "label"):
            raise ValueError(f"loss_tokens must be 'all' or 'label', got {self.loss_tokens!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        if self.stepped not in STEPPED:
            raise ValueError(f"stepped must be one of {list(STEPPED)}, got {self.stepped!r}")
        if self.length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {self.length_multiple}")

    @classmethod
    def for_task(cls, task: Task, method: str = "gd", **changes) -> "FinetuneOptions":
        """The paper's settings for a task (its learning rate, docs/method.md#runs-and-learning-rates) and method."""
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


def default_mask(config: ModelConfig, options: FinetuneOptions) -> T.ParamMask:
    """What a finetuning steps when it is given no mask: the `stepped` projections of every layer."""
    return T.kv_mask(config, parts=STEPPED[options.stepped])


def optimizer(spec: StepSpec, lr) -> optax.GradientTransformation:
    """optax SGD (clipped by global norm if asked) applied to the masked gradient."""
    sgd = optax.sgd(lr)  # momentum None, no weight decay: fairseq's sgd defaults
    return optax.chain(optax.clip_by_global_norm(spec.clip_norm), sgd) if spec.clip_norm else sgd
