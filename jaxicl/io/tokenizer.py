"""A thin tokenizer wrapper with one contract for every checkpoint source.

`encode` never adds special tokens: prompts are assembled explicitly (BOS, separators) by the
caller, so that what the model sees is exactly what a results file says it saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxicl.errors import CheckpointError


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


# A tokenizer rebuilt from a file's vocabulary can decode every id right and still fail to merge:
# transformers 5.17.0 builds Gemma 3's GGUF tokenizer so that " positive" (one token, 4414) encodes
# as four pieces. Every prompt then silently becomes character soup and accuracy falls to chance
# (seen on a GPU machine with that version). A sound tokenizer encodes nearly every ordinary
# token's own text back to that one token (gemma3-270m 460 of 460 sampled, smollm2-135m 490 of
# 490), the broken build 118 of 460. The check takes about 15 ms.
ROUND_TRIP_SAMPLE = 500
ROUND_TRIP_MIN_SHARE = 0.9


def vocabulary_round_trip(backend: Any, sample: int = ROUND_TRIP_SAMPLE) -> tuple[int, int, list[tuple]]:
    """(tokens that encode back to themselves, tokens checked, a few that do not) over evenly spaced
    ids; special tokens, one-character tokens and partial UTF-8 bytes are not checked."""
    size = len(backend)
    special = set(backend.all_special_ids)
    checked, kept, failures = 0, 0, []
    for token_id in range(0, size, max(1, size // sample)):
        text = backend.decode([token_id])
        if token_id in special or len(text.strip()) < 2 or "\ufffd" in text:
            continue
        checked += 1
        ids = list(backend.encode(text, add_special_tokens=False))
        if ids == [token_id]:
            kept += 1
        elif len(failures) < 3:
            failures.append((token_id, text, ids))
    return kept, checked, failures


def check_vocabulary_round_trip(backend: Any, source: str) -> None:
    """Refuse a tokenizer that does not reproduce its own vocabulary, naming the transformers version."""
    import transformers

    kept, checked, failures = vocabulary_round_trip(backend)
    if checked and kept < ROUND_TRIP_MIN_SHARE * checked:
        examples = "; ".join(f"{text!r} (id {i}) -> {ids}" for i, text, ids in failures)
        raise CheckpointError(
            f"{source}: the tokenizer transformers {transformers.__version__} built from this file does not "
            f"reproduce its own vocabulary: only {kept} of {checked} sampled tokens encode back to "
            f"themselves (e.g. {examples}). Prompts would be split into the wrong tokens. "
            "transformers 5.17.0 does this for Gemma 3 GGUF files; install another version (5.18-5.24 checked)."
        )
