"""experiments/gpu_check.py --tiny on CPU, in a subprocess where transformers, torch, gguf and
datasets cannot be imported (the GPU machine has only jax, flax, optax and numpy); plus the
analytic FLOP count and the peak table on hand-checked cases.

The subprocess runs with XLA's CPU backend optimisations lowered (compile time halves; the code
path is the same), so the whole run of 2 models × 2 dtypes stays well under a minute."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_COMPILE_XLA_FLAGS

REPO = Path(__file__).resolve().parent.parent
# One worker runs the whole module, so its gpu_check.py subprocess (module-scoped) runs once.
pytestmark = pytest.mark.xdist_group("gpu_check")
SCRIPT = REPO / "experiments" / "gpu_check.py"
BLOCKED = ("transformers", "torch", "gguf", "datasets", "tokenizers", "sentencepiece", "safetensors")
RUNNER = f"""
import runpy, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of these now raises ImportError
sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, cache = tmp / "out.json", tmp / "xla-cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=FAST_COMPILE_XLA_FLAGS)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "--tiny", "--out", str(out), "--compile-cache", str(cache)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, cache


@pytest.mark.slow  # the --tiny run: a subprocess compiling 2 models x 2 dtypes
def test_tiny_rows_are_complete_and_positive(tiny_run):
    payload, stdout, _ = tiny_run
    rows = payload["rows"]
    assert [(r["model"], r["dtype"]) for r in rows] == [
        (m, d) for m in ("gemma3-270m", "xglm-1.3b") for d in ("fp32", "bf16")
    ]
    for r in rows:
        for key in ("icl_queries_per_s", "icl_first_call_s", "icl_tflops", "gd_step_ms", "lcgd_step_ms",
                    "gd_first_call_s", "lcgd_first_call_s", "gd_tflops", "lcgd_tflops", "icl_flops",
                    "gd_flops_per_step", "lcgd_flops_per_step", "params_m"):  # fmt: skip
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["model"], r["dtype"], key)
        for key in ("icl_big_queries_per_s", "icl_big_tflops", "gd_many_steps_per_s", "lcgd_many_steps_per_s",
                    "gd_one_steps_per_s", "gd_many_speedup", "lcgd_many_speedup"):  # fmt: skip
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["model"], r["dtype"], key)
        assert r["icl_big_batch_size"] == 8 and r["icl_batch_size"] == 4 and r["gd_many_runs"] == 3
        assert r["gd_flops_xla"] is not None  # XLA's count of one step was taken (then judged against the analytic)
        assert math.isfinite(r["gd_loss"]) and math.isfinite(r["lcgd_loss"])
        assert r["lcgd_flops_per_step"] > r["gd_flops_per_step"]  # a readout per layer
        assert r["peak_tflops"] is None and r["icl_pct_peak"] is None  # CPU: no peak entry
    assert payload["tiny"] is True and payload["complete"] is True and payload["device"]["platform"] == "cpu"
    assert payload["configs"]["gemma3-270m"]["d_model"] == 64  # the tiny configs ran
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows) and "ICL queries/s" in table[0] and "N runs at once" in table[0]


@pytest.mark.slow  # the --tiny run: a subprocess compiling 2 models x 2 dtypes
def test_compile_cache_is_written(tiny_run):
    payload, _, cache = tiny_run
    assert payload["compile_cache"] == str(cache.resolve())
    assert len([p for p in cache.rglob("*") if p.is_file()]) >= 4  # prefix, rows, GD and LCGD steps at least


def test_full_configs_match_the_real_models():
    g = gpu_check.model_config("gemma3-270m")
    assert (g.vocab_size, g.d_model, g.n_layers, g.n_heads, g.n_kv_heads, g.head_dim, g.d_ff) == (
        262144, 640, 18, 4, 1, 256, 2048)  # fmt: skip
    assert g.sliding_window == 512 and g.max_positions == 32768 and g.local_layers.count(False) == 3
    assert not g.layer_is_local[5] and not g.layer_is_local[17] and g.layer_is_local[0]
    assert (g.rope_base, g.rope_local_base, g.scale) == (1e6, 1e4, 256**-0.5)
    assert 260e6 < gpu_check.n_params(g) < 280e6
    x = gpu_check.model_config("xglm-1.3b")
    assert (x.vocab_size, x.d_model, x.n_layers, x.n_heads, x.head_dim, x.d_ff, x.max_positions) == (
        50261, 2048, 24, 32, 64, 8192, 2048)  # fmt: skip
    assert x.position_kind == "sinusoidal" and x.position_offset == 2 and x.norm_kind == "layer"
    # 1.21B in the blocks + 0.10B tied GPT-2-BPE embedding: the 1.3B of the paper.
    blocks = 24 * (4 * (2048 * 2048 + 2048) + 2048 * 8192 + 8192 + 8192 * 2048 + 2048 + 4 * 2048)
    assert gpu_check.n_params(x) == blocks + 50261 * 2048 + 2 * 2048
    assert 1.25e9 < gpu_check.n_params(x) < 1.35e9


def test_forward_flops_by_hand():
    c = gpu_check.model_config("xglm-1.3b", tiny=True)  # d 64, 2 layers, 4 heads of 16, d_ff 256, V 512
    w = 4 * 64 * 64 + 2 * 64 * 256
    assert gpu_check.block_matmul_params(c) == w
    # 1 row, 8 tokens, 8 keys, logits at 8 positions
    assert gpu_check.forward_flops(c, 1, 8, 8, 8) == 2 * (2 * 8 * w + 4 * 8 * 8 * 4 * 16) + 2 * 64 * 512 * 8
    assert gpu_check.step_flops(c, 10, "gd", 32) == 3 * gpu_check.forward_flops(c, 1, 32, 32, 32)
    assert gpu_check.step_flops(c, 10, "lcgd", 32) == 3 * gpu_check.forward_flops(c, 1, 32, 32, 64)
    # prefix 60 -> 64 (no logits); 9 rows of 11 tokens (-> 16, evaluate's multiple of 8) in batches
    # of 4 -> 3 batches of [4, 16], 80 keys
    assert gpu_check.icl_flops(c, 60, 11, 9, 4) == (
        gpu_check.forward_flops(c, 1, 64, 64, 0) + 3 * gpu_check.forward_flops(c, 4, 16, 80, 4)
    )


def test_xla_count_used_only_when_it_agrees():
    assert gpu_check.choose_flops(100.0, 110.0) == (110.0, "xla")
    assert gpu_check.choose_flops(100.0, 10.0) == (100.0, "analytic")  # scan body counted once
    assert gpu_check.choose_flops(100.0, None) == (100.0, "analytic")


def test_peak_table():
    assert gpu_check.device_peak("NVIDIA H100 80GB HBM3", "bf16", "gpu")[0] == 989.0
    assert gpu_check.device_peak("NVIDIA H200", "bf16", "gpu")[0] == 989.0
    assert gpu_check.device_peak("NVIDIA H100 PCIe", "bf16", "gpu")[0] == 756.0
    assert gpu_check.device_peak("NVIDIA A100-SXM4-80GB", "fp32", "gpu")[0] == 156.0  # TF32 at default precision
    assert gpu_check.device_peak("TPU v4", "bf16", "tpu")[0] == 275.0
    assert gpu_check.device_peak("TPU v5 lite", "fp32", "tpu")[0] == 197.0
    assert gpu_check.device_peak("cpu", "fp32", "cpu") == (None, "unknown")


def test_compile_cache_enable_after_a_compilation(tmp_path):
    """enable() also takes effect when the process has compiled before (the cache re-binds)."""
    code = f"""
import jax, jax.numpy as jnp
from jaxicl.runtime import compile_cache
jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
compile_cache.enable({str(tmp_path / "c")!r})
jax.jit(lambda x: x * 2 + 3)(jnp.ones(5)).block_until_ready()
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(p.is_file() for p in (tmp_path / "c").rglob("*"))
