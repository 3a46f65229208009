"""The loaded-model container: config + params pytree + tokenizer, and nothing hidden."""

from __future__ import annotations

import dataclasses

from jaxicl.io.tokenizer import Tokenizer
from jaxicl.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class LM:
    config: ModelConfig
    params: dict  # plain pytree of jax arrays (layout: jaxicl.models.config)
    tokenizer: Tokenizer
    source: str = ""  # where it was loaded from (path or registry name)
