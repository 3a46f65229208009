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
