"""One task's grid run batched (`--batch-runs on`: per (task, variant), the finetuning runs under
vmap, each run one lax.scan, then the finetuned models' zero-shot evaluations under vmap) and one by
one (`off`), each in a fresh process with no persistent compilation cache, side by side.

Prints wall time, programs compiled and compile seconds, the batched engine's share, each run's
time split into device, compile and host (timing.json "stages"), the device-to-host copies of
finetuning stats per run (one by construction: jaxicl/engine/finetune fetches a run's stacked stats
once), and the largest difference between the two runs' cells.

    python experiments/bench_grid.py [--model gemma3-270m] [--task sst2] [--n-runs 3] [--n-eval 200] [--k 32]
                                     [--variants trained,trained-embeddings]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.benchutil import matmul_gflops, rss_mb, run_child  # noqa: E402


def child(args) -> dict:
    import jaxicl
    from jaxicl.runner import RunConfig, run

    lm = jaxicl.load(args.model)
    config = RunConfig(model=args.model, tasks=(args.task,), n_runs=args.n_runs, k=args.k, n_eval=args.n_eval,
                       variants=tuple(args.variants.split(",")), data_dir=args.data_dir)  # fmt: skip
    start = time.perf_counter()
    counts = run(config, args.out, lm=lm, quiet=True, batch_runs=args.mode)
    wall = time.perf_counter() - start
    timing = json.loads((Path(args.out) / "timing.json").read_text())
    return {"wall_s": wall, "cells": counts["done"], "compile": timing["compile"],
            "batched": timing["batched"], "stages": timing["stages"], "rss_mb": rss_mb()}


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, tree


def cell_difference(a: Path, b: Path) -> dict:
    """The largest |difference| of any number in the two runs' cells, per top-level key (losses,
    per_layer, ...), with where it is, and whether every accuracy is equal."""
    worst: dict[str, tuple[float, str]] = {}
    same_accuracy = True
    for path in sorted((a / "cells").rglob("*.json")):
        x, y = (json.loads(p.read_text()) for p in (path, b / path.relative_to(a)))
        same_accuracy &= x["accuracy"] == y["accuracy"]
        for (where, u), (_, v) in zip(_leaves(x), _leaves(y), strict=True):
            if isinstance(u, float) and isinstance(v, float) and not (math.isnan(u) and math.isnan(v)):
                key = where.split(".")[1].split("[")[0]
                if abs(u - v) >= worst.get(key, (0.0, ""))[0]:
                    worst[key] = (abs(u - v), f"{path.name}{where} ({v:.6g})")
    return {"same_accuracy": same_accuracy, "max_abs": dict(sorted(worst.items(), key=lambda kv: -kv[1][0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--n-runs", type=int, default=3)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--variants", default="trained")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import jax

    common = ["--model", args.model, "--task", args.task, "--n-runs", str(args.n_runs), "--n-eval", str(args.n_eval),
              "--k", str(args.k), "--variants", args.variants] + (["--data-dir", args.data_dir] if args.data_dir else [])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        rows = {mode: run_child(__file__, mode, [*common, "--mode", mode, "--out", f"{tmp}/{mode}"])
                for mode in ("off", "on")}
        diff = cell_difference(Path(tmp, "off"), Path(tmp, "on"))
    rate = matmul_gflops()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); 2048^2 fp32 matmul: {rate:.0f} GFLOP/s")
    print(f"grid: {args.model}, {args.task}, {args.n_runs} runs x GD/LCGD, {args.variants}, k={args.k}, "
          f"n_eval={args.n_eval}")
    print("| runs | wall s | programs compiled | compile s | device s | host s | finetuning runs / ftzs together "
          "| their s | stats copies per run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, label in (("off", "one by one"), ("on", "batched")):
        r = rows[mode]
        device = sum(split["device"] for split in r["stages"].values())
        host = sum(split["host"] for split in r["stages"].values())
        print(f"| {label} | {r['wall_s']:.1f} | {r['compile']['programs']} | {r['compile']['seconds']:.1f} | "
              f"{device:.1f} | {host:.1f} | {r['batched']['runs']} / {r['batched']['evaluations']} | "
              f"{r['batched']['seconds']:.1f} | 1 |")
    for mode, label in (("off", "one by one"), ("on", "batched")):
        print(f"{label}, per stage (wall / device / compile / host s): " + "; ".join(
            f"{stage} {s['wall']:.1f}/{s['device']:.1f}/{s['compile']:.1f}/{s['host']:.1f}"
            for stage, s in rows[mode]["stages"].items()))
    print(f"batched / one by one wall time: {rows['on']['wall_s'] / rows['off']['wall_s']:.2f}")
    print(f"cells: accuracies {'equal' if diff['same_accuracy'] else 'DIFFER'}; largest |difference| per key:")
    for key, (value, where) in diff["max_abs"].items():
        print(f"  {key}: {value:.2e} at {where}")
    print("RESULT " + json.dumps({"rows": rows, "cells": diff, "matmul_gflops": rate}))


if __name__ == "__main__":
    main()
