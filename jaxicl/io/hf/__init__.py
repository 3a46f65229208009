"""Hugging Face model directories → (ModelConfig, params, Tokenizer).

A directory holds `config.json`, safetensors weights (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`) and usually tokenizer files. Each family is a config mapping plus
a weight-name map onto the one forward pass. Settings a mapping does not understand are refused
with CheckpointError naming the setting and the file, never guessed.

The modules, in the order a load runs them:
  layout     the directory's file names; reading its JSON files
  settings   config.json -> Settings: supported model types over the HF config-class defaults
  config     Settings -> ModelConfig, one converter per family (config_from_hf)
  weights    weight-name maps and reading safetensors into our param layout
  tokenizer  the directory's tokenizer and the BOS rule it implies
  directory  load_hf_dir, which runs all of the above
"""

from jaxicl.io.hf.config import ACTIVATIONS, CONVERTERS, config_from_hf, convert_config
from jaxicl.io.hf.directory import load_hf_dir, read_hf_config
from jaxicl.io.hf.layout import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, TOKENIZER_FILES
from jaxicl.io.hf.settings import HF_DEFAULTS, MODEL_TYPES, Settings, family_settings
from jaxicl.io.hf.tokenizer import MissingTokenizer, load_tokenizer
from jaxicl.io.hf.weights import (
    BUFFERS,
    HEAD,
    HEAD_NAMES,
    PREFIXES,
    WEIGHT_MAPS,
    Source,
    TensorStore,
    read_params,
    weight_map,
)

__all__ = [
    "ACTIVATIONS",
    "BUFFERS",
    "CONFIG_FILE",
    "CONVERTERS",
    "HEAD",
    "HEAD_NAMES",
    "HF_DEFAULTS",
    "INDEX_FILE",
    "MODEL_TYPES",
    "PREFIXES",
    "SINGLE_FILE",
    "TOKENIZER_FILES",
    "WEIGHT_MAPS",
    "MissingTokenizer",
    "Settings",
    "Source",
    "TensorStore",
    "config_from_hf",
    "convert_config",
    "family_settings",
    "load_hf_dir",
    "read_hf_config",
    "load_tokenizer",
    "read_params",
    "weight_map",
]
