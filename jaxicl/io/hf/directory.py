"""load_hf_dir: a Hugging Face model directory -> (ModelConfig, params, Tokenizer)."""

from __future__ import annotations

from pathlib import Path

from jaxicl.errors import ModelNotFoundError
from jaxicl.io.hf.config import config_from_hf, convert_config
from jaxicl.io.hf.layout import CONFIG_FILE, read_json
from jaxicl.io.hf.settings import family_settings
from jaxicl.io.hf.tokenizer import load_tokenizer
from jaxicl.io.hf.weights import TensorStore, read_params
from jaxicl.io.tokenizer import Tokenizer
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import check_param_shapes


def _model_dir(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelNotFoundError(f"{root}: no such directory")
    if not (root / CONFIG_FILE).is_file():
        raise ModelNotFoundError(f"{root}: not a Hugging Face model directory (no {CONFIG_FILE})")
    return root


def read_hf_config(path: str | Path) -> ModelConfig:
    """The config of a Hugging Face directory from its config.json alone."""
    config_path = _model_dir(path) / CONFIG_FILE
    return config_from_hf(read_json(config_path), str(config_path))


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, dict, Tokenizer]:
    """(config, params as float32 numpy arrays in our layout, tokenizer) of a Hugging Face directory.

    The tokenizer is a placeholder that raises CheckpointError on use when the directory has no
    tokenizer files (see jaxicl.io.hf.tokenizer).
    """
    root = _model_dir(path)
    config_path = root / CONFIG_FILE
    raw = read_json(config_path)
    family, settings, multimodal = family_settings(raw, str(config_path))
    config = convert_config(family, settings)
    with TensorStore(root) as store:
        params = read_params(family, config, store, multimodal)
        check_param_shapes(config, params, store.source)
    tokenizer, config = load_tokenizer(root, config)
    return config, params, tokenizer
