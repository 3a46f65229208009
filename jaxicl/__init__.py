"""jaxicl: in-context learning vs gradient descent inside real language models, in pure-function JAX.

The public face: `load` a model, its next-token `logits`, the `forward` pass with its variants,
and the errors. `jaxicl.finetune` (GD and LCGD) and `jaxicl.transforms` (the pieces they are made
of) load on first use. The stages live in subpackages: models, io, data, engine, runner,
analyses, runtime, report and cli.
"""

import importlib

from jaxicl import legacy_imports
from jaxicl.api import load, logits
from jaxicl.errors import (
    CheckpointError,
    DataError,
    DivergenceError,
    InputError,
    JaxiclError,
    ModelNotFoundError,
    TrainingError,
)
from jaxicl.lm import LM
from jaxicl.models.config import ModelConfig
from jaxicl.models.transformer import KVCache, forward

legacy_imports.install()

__version__ = "0.1.0"
__all__ = [
    "load",
    "logits",
    "forward",
    "KVCache",
    "LM",
    "ModelConfig",
    "JaxiclError",
    "ModelNotFoundError",
    "CheckpointError",
    "InputError",
    "DataError",
    "DivergenceError",
    "TrainingError",
]


def __getattr__(name: str):
    """`jaxicl.finetune` and `jaxicl.transforms`, imported on first use."""
    if name in ("finetune", "transforms"):
        return importlib.import_module(f"jaxicl.engine.{name}")
    raise AttributeError(f"module 'jaxicl' has no attribute {name!r}")
