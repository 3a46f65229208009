"""Shared by the benchmark scripts: run one measurement in a fresh subprocess (so its peak RSS is
its own) and read back the JSON line it prints."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, name: str, argv: list[str]) -> dict:
    """Run `script --child NAME ARGV...` and return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, script, "--child", name, *argv], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """This machine's own rate for a jitted n x n matmul in `dtype` (best of `repeats`), in GFLOP/s:
    printed beside a throughput, since machines here differ 2-3x in speed."""
    import time

    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
