"""One model's `jaxicl study` on a lent accelerator, prepared so that a cut-off call still leaves numbers.

On the device, in the repository's copy (the model's file brought earlier, cut in parts, to PARTS):

    JAX_DEFAULT_MATMUL_PRECISION=highest python experiments/gpu_study.py --model gemma3-270m \\
        --parts PARTS --reference docs/results/models/gemma3-270m --out-dir $OUT --minutes 8

1. machine.json, at once: the device, jax and transformers versions, the matmul precision and this
   machine's own bf16 and fp32 matmul rates (machines differ; a throughput needs its machine's rate).
2. --parts: the model's file, assembled into the cache and its sha256 checked (`registry.place`).
3. fingerprint.json: the sha256 of every prompt's token ids, run by run, against the reference's
   prompts.json (written on the CPU by `--fingerprint-only`). A mismatch stops here (exit 3): a
   tokenizer that differs (transformers 5.17 merged no Gemma 3 pieces) makes every number differ.
4. The study runs as a child process at the reference's selected rates (its lr_selection.json), with
   the batched engine. progress.json is rewritten every --every seconds: seconds per stage (the
   study's record), cells done, cells per minute since the grid began, and for each cell the
   reference also has, the largest |device - reference| of its accuracies and Table 1-2 metrics.
   At --minutes the child is sent SIGTERM; it keeps its finished cells.
5. cells.tgz: the device's cells, to compare or adopt on the CPU (`jaxicl study --adopt`).

On a CPU, with a tiny model and the study's own tune, the same script tests the whole path:
tests/test_gpu_study.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.benchutil import matmul_gflops  # noqa: E402
from jaxicl.io.checkpoint import fingerprint  # noqa: E402
from jaxicl.io.results import write_json_atomic  # noqa: E402
from jaxicl.runner.layout import CELLS, SELECTION_FILE  # noqa: E402

PROMPTS_FILE = "prompts.json"  # in a model's published folder: its prompts' fingerprints, made on the CPU
COMPARED = ("zs", "icl", "ft", "simaou_norm", "simaou", "simam", "simam_delta", "rec2ftp")


def machine() -> dict:
    """What ran: the device, the versions that decide the numbers, and this machine's matmul rates."""
    from importlib import metadata

    import jax

    n = 4096 if jax.default_backend() != "cpu" else 512
    rates = {f"matmul_{dtype}_tflops": matmul_gflops(n, dtype=dtype) / 1e3 for dtype in ("bfloat16", "float32")}
    return {
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "jax": jax.__version__, "transformers": metadata.version("transformers"),
        "matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION"), **rates,
    }  # fmt: skip


def prompt_fingerprints(lm, model: str, tasks, n_runs: int | None, k: int, n_eval: int | None, data_dir=None) -> dict:
    """{task: {"seed-perm": sha256 of the run's PromptSet}}: equal fingerprints, equal token ids."""
    import dataclasses

    from jaxicl.data.tasks import get_task
    from jaxicl.runner.plan import RunConfig, run_prompts

    config = RunConfig(model=model, tasks=tuple(tasks), n_runs=n_runs, k=k, n_eval=n_eval, data_dir=data_dir)
    out = {}
    for name in tasks:
        task = get_task(name)
        out[task.name] = {f"{seed}-{perm}": fingerprint(dataclasses.asdict(run_prompts(lm, config, task, seed, perm)))
                          for seed, perm in task.runs[:n_runs]}  # fmt: skip
    return out


def compare_cells(mine: Path, reference: Path) -> dict:
    """Per cell both directories hold: the largest |mine - reference| over COMPARED, and which."""
    out = {}
    for path in sorted(mine.rglob("*.json")):
        theirs = reference / path.relative_to(mine)
        if not theirs.exists():
            continue
        a, b = (json.loads(p.read_text()) for p in (path, theirs))
        values = lambda c: {**c.get("accuracy", {}), **c.get("scalar", {})}  # noqa: E731
        diffs = {k: abs(values(a)[k] - values(b)[k]) for k in COMPARED
                 if values(a).get(k) is not None and values(b).get(k) is not None}  # fmt: skip
        worst = max(diffs, key=diffs.get) if diffs else None
        out[path.relative_to(mine).as_posix()] = {"max_abs_diff": diffs.get(worst), "metric": worst}
    return out


def progress(where: Path, reference: Path | None, started: float) -> dict:
    """The study's state now: its record, cells done, cells per minute, the comparison."""
    record_path = where / "study.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    cells = where / "grid" / CELLS
    done = sorted(p.relative_to(cells).as_posix() for p in cells.rglob("*.json")) if cells.is_dir() else []
    grid_seconds = sum(record.get("seconds", {}).get(s, 0.0) for s in ("trained", "untrained"))
    return {
        "wall_s": time.time() - started, "study": record, "cells_done": len(done), "cells": done,
        "cells_per_minute": len(done) / grid_seconds * 60 if grid_seconds else None,
        "versus_reference": compare_cells(cells, reference / CELLS) if reference and cells.is_dir() else {},
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a registry name (or a path, for the CPU test)")
    parser.add_argument("--parts", default=None, help="folder of the model's file cut in order (sorted names)")
    parser.add_argument("--reference", default=None, help="the model's published folder (docs/results/models/<m>)")
    parser.add_argument("--out-dir", required=True, help="where the JSON goes (the device's $OUT)")
    parser.add_argument("--work", default="/var/tmp/jaxicl-gpu-study", help="the study's directory")
    parser.add_argument("--minutes", type=float, default=8.0, help="stop the study after this long")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between progress.json writes")
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--n-runs", type=int, default=None)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--fingerprint-only", action="store_true",
                        help="write the prompts' fingerprints to --out-dir/prompts.json and stop (on the CPU)")
    parser.add_argument("study_args", nargs="*", help="after --: more `jaxicl study` arguments")
    args = parser.parse_args(argv)
    started = time.time()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from jaxicl.data.tasks import PAPER_TASKS

    tasks = args.tasks.split(",") if args.tasks else list(PAPER_TASKS)
    if not args.fingerprint_only:
        write_json_atomic(out_dir / "machine.json", machine())
    if args.parts:
        from jaxicl.io.registry import place

        place(args.model, sorted(p for p in Path(args.parts).iterdir() if p.is_file()))
    from jaxicl.api import load

    lm = load(args.model)
    prints = prompt_fingerprints(lm, args.model, tasks, args.n_runs, args.k, args.n_eval)
    del lm
    if args.fingerprint_only:
        write_json_atomic(out_dir / PROMPTS_FILE, prints)
        return 0
    reference = Path(args.reference) if args.reference else None
    theirs = json.loads((reference / PROMPTS_FILE).read_text()) if reference else None
    differing = sorted(f"{t}/{r}" for t in prints for r in prints[t] if theirs and theirs.get(t, {}).get(r) != prints[t][r])
    write_json_atomic(out_dir / "fingerprint.json", {"prompts": prints, "reference": str(reference),
                                                     "differing": differing, "match": theirs is not None and not differing})  # fmt: skip
    if differing:
        print(f"gpu_study: prompt token ids differ from the reference for {', '.join(differing)}; stopped", file=sys.stderr)
        return 3
    work = Path(args.work)
    command = [sys.executable, "-m", "jaxicl.cli", "study", "--models", args.model, "--tasks", ",".join(tasks),
               "--k", str(args.k), "--n-eval", str(args.n_eval), "--out", str(work), "--batch-runs", "on",
               *(["--n-runs", str(args.n_runs)] if args.n_runs else []),
               *(["--adopt", str(reference / SELECTION_FILE)] if reference else []), *args.study_args]  # fmt: skip
    from jaxicl.studies.models import model_dir

    where = model_dir(work, args.model)
    with open(out_dir / "study.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = started + args.minutes * 60
        while child.poll() is None:
            time.sleep(min(args.every, max(0.5, deadline - time.time())))
            write_json_atomic(out_dir / "progress.json", progress(where, reference, started))
            if time.time() > deadline and child.poll() is None:
                child.send_signal(signal.SIGTERM)  # finished cells stay; the one in progress is lost
                deadline = float("inf")
    write_json_atomic(out_dir / "progress.json", progress(where, reference, started) | {"study_rc": child.returncode})
    with tarfile.open(out_dir / "cells.tgz", "w:gz") as tar:
        if (where / "grid" / CELLS).is_dir():
            tar.add(where / "grid" / CELLS, arcname=CELLS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
