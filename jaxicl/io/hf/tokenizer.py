"""The tokenizer of a Hugging Face directory, and the BOS rule it implies.

Loaded through `transformers.AutoTokenizer` when the directory has tokenizer files. A directory
without any still loads: its Tokenizer is a placeholder that raises CheckpointError (naming the
directory) the first time it is used, so weights-only directories fail only where text must be
tokenized. The BOS rule (`add_bos`, `bos_token_id`) is read from what the tokenizer itself
prepends and written into the returned ModelConfig as well, so config and tokenizer agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from jaxicl.errors import CheckpointError
from jaxicl.io.hf.layout import TOKENIZER_FILES
from jaxicl.io.tokenizer import Tokenizer
from jaxicl.models.config import ModelConfig


class MissingTokenizer:
    """Backend of a directory without tokenizer files: any use raises, naming the directory."""

    def __init__(self, root: Path):
        self._root = root

    def _fail(self) -> NoReturn:
        raise CheckpointError(f"{self._root}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        self._fail()

    def __len__(self) -> int:
        self._fail()

    def __call__(self, *args, **kwargs):
        self._fail()


def _prepended_token(backend, source: Path) -> int | None:
    """The token the tokenizer puts before a text (its BOS rule), or None if it adds none."""
    probe = "Hello world"
    plain = list(backend.encode(probe, add_special_tokens=False))
    full = list(backend.encode(probe, add_special_tokens=True))
    if not plain:
        return None
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            prefix = full[:start]
            if len(prefix) > 1:
                raise CheckpointError(f"{source}: the tokenizer prepends {prefix}; expected at most one BOS token")
            return prefix[0] if prefix else None
    raise CheckpointError(f"{source}: cannot tell what the tokenizer prepends ({probe!r}: {plain} vs {full})")


def load_tokenizer(root: Path, config: ModelConfig) -> tuple[Tokenizer, ModelConfig]:
    """The directory's tokenizer, and the config with the tokenizer's BOS rule written in."""
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        return Tokenizer(MissingTokenizer(root), config.bos_token_id, config.eos_token_id, config.add_bos), config
    from transformers import AutoTokenizer

    try:
        backend = AutoTokenizer.from_pretrained(str(root))
    except Exception as e:  # transformers raises many types for unreadable tokenizer files
        raise CheckpointError(f"{root}: cannot load the tokenizer ({type(e).__name__}: {e})") from e
    bos = _prepended_token(backend, root)
    if bos is not None:
        config = config.replace(add_bos=True, bos_token_id=bos)
    else:
        config = config.replace(add_bos=False)
    eos = backend.eos_token_id if backend.eos_token_id is not None else config.eos_token_id
    return Tokenizer(backend, config.bos_token_id, eos, config.add_bos), config
