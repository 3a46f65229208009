"""A thin tokenizer wrapper with one contract for every checkpoint source.

`encode` never adds special tokens: prompts are assembled explicitly (BOS, separators) by the
caller, so that what the model sees is exactly what a results file says it saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Wraps a Hugging Face (fast) tokenizer built from a GGUF vocabulary or an HF directory."""

    backend: Any  # transformers.PreTrainedTokenizerBase
    bos_id: int | None
    eos_id: int | None
    add_bos: bool  # the family's rule: does a prompt start with BOS?

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added."""
        return list(self.backend.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids))

    def prompt_ids(self, text: str) -> list[int]:
        """`encode(text)` with the family's BOS prepended when the family uses one."""
        bos = [self.bos_id] if self.add_bos and self.bos_id is not None else []
        return bos + self.encode(text)

    @property
    def vocab_size(self) -> int:
        return len(self.backend)
