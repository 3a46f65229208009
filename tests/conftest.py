"""Shared test setup.

The datasets live outside the repo, in ../shared/data (or $JAXICL_DATA_DIR). The two shipped
GGUF models, and transformers' own loading of them (the parity reference), are loaded once per
test session and shared by every real-model module: loading them is most of those tests' cost
(transformers dequantizes Gemma's 262k-row embedding in Python). Tests must not modify them.

XLA compiles the test session's programs with its CPU backend optimisations lowered (about a third
less compile time) and with its older, non-MLIR fusion emitters (about two thirds less again:
tests/test_transforms.py compiles its 402 programs in 16 s instead of 49 s). The numbers checked stay
the same (the real model's ICL scores are bitwise equal either way) and run times barely move. Set
JAXICL_TEST_FULL_XLA=1 to test with XLA's defaults. Subprocesses inherit the flags.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("JAXICL_DATA_DIR", REPO.parent / "shared" / "data"))
os.environ.setdefault("JAXICL_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXICL_COMPILE_CACHE", "off")  # `jaxicl run` in tests: no cache unless a test names one
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false"
)
if os.environ.get("JAXICL_TEST_FULL_XLA") != "1" and FAST_COMPILE_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}".strip()

REAL_MODELS = ("gemma3-270m", "smollm2-135m")
# Every real-model module joins this xdist group, so one worker loads the real models once.
REAL_MODEL_GROUP = pytest.mark.xdist_group("real_models")
# The largest registry model is checked on a worker of its own, beside the group above.
QWEN = "qwen2.5-coder-0.5b"
QWEN_GROUP = pytest.mark.xdist_group("qwen")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2").exists():
        pytest.fail(f"datasets not found at {DATA_DIR}; set JAXICL_DATA_DIR")
    return DATA_DIR


def _once(load):
    """A session-scoped getter: name -> load(name), each name loaded on its first request."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            start = time.perf_counter()
            loaded[name] = load(name)
            peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            print(f"\n{load.__name__}({name}): {time.perf_counter() - start:.1f} s, peak RSS so far {peak_gb:.2f} GB")
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def real_lm():
    """name -> jaxicl.load(name) (through load_gguf), shared by the session."""
    import jaxicl

    def jaxicl_load(name: str):
        return jaxicl.load(name)

    return _once(jaxicl_load)


@pytest.fixture(scope="session")
def hf_model():
    """name -> transformers' float32 model read from the same GGUF file by its own loader (eval mode)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxicl.io import registry

    def transformers_model(name: str):
        path = registry.resolve(name)
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()

    return _once(transformers_model)


@pytest.fixture(scope="session")
def hf_tokenizer():
    """name -> transformers' tokenizer read from the same GGUF file."""
    transformers = pytest.importorskip("transformers")
    from jaxicl.io import registry

    def transformers_tokenizer(name: str):
        path = registry.resolve(name)
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    return _once(transformers_tokenizer)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 4 (each worker holds its own JAX and torch)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_configure(config) -> None:
    """Refuse --dist loadgroup on pytest 9.2 and later, where pytest-xdist (3.8) no longer groups
    tests (pytest-xdist issue 1386) and its scheduler fails with an INTERNALERROR instead."""
    if getattr(config.option, "dist", "no") != "loadgroup" or not getattr(config.option, "numprocesses", 0):
        return  # no workers (-n 0, or this is a worker): nothing to group
    if tuple(int(part) for part in pytest.__version__.split(".")[:2]) >= (9, 2):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup, which this suite uses to load "
            "the real models once; install pytest<9.2 (pyproject's test extra) or run in one process with -n 0"
        )
