"""jaxicl: in-context learning vs gradient descent inside real language models, in pure-function JAX."""

from jaxicl.api import load, logits
from jaxicl.errors import CheckpointError, DataError, DivergenceError, InputError, JaxiclError, ModelNotFoundError, TrainingError
from jaxicl.lm import LM
from jaxicl.models.config import ModelConfig
from jaxicl.models.transformer import KVCache, forward

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
