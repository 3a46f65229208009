"""`jaxicl ablate`: what LCGD's SimAM_Δ depends on, one finetuning factor changed at a time.

Each factor is one resumable run directory OUT/<factor>/ of the trained model. The baseline is the
authors' setting (LCGD's block readout, losses summed over layers, loss on every token, keys and
values stepped) at GD's selected rates, computed in float32. Every other factor changes one
RunConfig field, or LCGD's rate (its own selection by `jaxicl tune --method lcgd`, in
OUT/tune-lcgd/). A factor that changes LCGD alone runs LCGD alone; its GD is the baseline's.

The zero-shot and ICL evaluations do not depend on the factor, nor does GD's in an LCGD-only factor;
they are copied from the baseline's directory instead of recomputed. The last step writes the table,
the CSV and the per-layer figure (`jaxicl.report.ablation`) to OUT/summary, or to `publish` with
each factor's cells and run.json beside them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxicl.api import load
from jaxicl.errors import InputError
from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.io.registry import DEFAULT_MODEL
from jaxicl.io.results import write_json_atomic
from jaxicl.report.ablation import write_ablation
from jaxicl.runner import checks
from jaxicl.runner.execute import run
from jaxicl.runner.layout import CELLS, EVALS, RUN_FILE, SELECTION_FILE
from jaxicl.runner.plan import RunConfig, check_config
from jaxicl.runner.tune import TuneConfig, rates_for, tune

ABLATION_FILE = "ablation.json"  # the config and the seconds per factor (summed over invocations)
BASELINE = "baseline"
LCGD_RATE = "lcgd-rate"
PAPER_RATE = "paper-rate"
# LCGD sums one loss per layer, so its steps are larger than GD's at a rate: its grid is GD's (Dai's)
# two decades lower, {1..9} x {1e-3..1e-6}.
LCGD_GRID = tuple(float(f"{m}e-{e}") for e in (3, 4, 5, 6) for m in range(1, 10))


@dataclasses.dataclass(frozen=True)
class Factor:
    """One change against the baseline: RunConfig fields, or LCGD's own rate; `methods`: those it touches."""

    name: str
    what: str
    changes: tuple[tuple[str, Any], ...] = ()
    methods: tuple[str, ...] = ("gd", "lcgd")
    rate_scale: float = 1.0  # both methods at GD's rates times this (rate-x<S>)
    paper_rates: bool = False  # both methods at the paper's rate for each task


FACTORS = (
    Factor(BASELINE, "the authors' LCGD (block readout, layer losses summed, every token, keys and values) "
           "at GD's rate, float32"),
    Factor(LCGD_RATE, "LCGD at its own selected rate (`jaxicl tune --method lcgd`)", methods=("lcgd",)),
    Factor(PAPER_RATE, "GD and LCGD at the paper's rate for each task, the setting of its Table 2",
           paper_rates=True),
    Factor("readout-attn", "LCGD reads each attention output, the paper's formula", (("lcgd_readout", "attn"),),
           ("lcgd",)),
    Factor("layer-mean", "LCGD's layer losses averaged instead of summed", (("layer_reduction", "mean"),), ("lcgd",)),
    Factor("label-loss", "the loss on the label tokens only", (("loss_tokens", "label"),)),
    Factor("bfloat16", "finetuning computed in bfloat16 with float32 master weights (the authors ran fp16)",
           (("finetune_dtype", "bfloat16"),)),
    Factor("keys-only", "only the keys stepped", (("stepped", "k"),)),
    Factor("values-only", "only the values stepped", (("stepped", "v"),)),
)  # fmt: skip
FACTOR_NAMES = tuple(f.name for f in FACTORS)
RATE_SCALE = "rate-x"  # rate-x<S>: GD and LCGD at S times GD's selected rates (e.g. rate-x10, rate-x0.1)
COMBINE = "+"  # a+b: both factors' changes at once (e.g. paper-rate+layer-mean)


def rate_factor(name: str) -> Factor | None:
    """The factor `rate-x<S>` names, None for any other name; an InputError for a bad S."""
    if not name.startswith(RATE_SCALE):
        return None
    try:
        scale = float(name.removeprefix(RATE_SCALE))
    except ValueError:
        scale = float("nan")
    if not (scale > 0 and scale != float("inf")):
        raise InputError(f"--factors: {name}: the scale after {RATE_SCALE} must be a positive number, e.g. {RATE_SCALE}10")
    return Factor(name, f"GD and LCGD at {scale:g} times GD's selected rate", rate_scale=scale)


def named_factor(name: str) -> Factor:
    """The factor `name` names: one of FACTORS, rate-x<S>, or factors joined by '+'; an InputError
    naming what is unknown or cannot be combined."""
    if COMBINE in name:
        return combined(name, [named_factor(part) for part in name.split(COMBINE)])
    found = rate_factor(name) or (FACTORS[FACTOR_NAMES.index(name)] if name in FACTOR_NAMES else None)
    if found is None:
        raise InputError(f"--factors: unknown {name}; known: {', '.join(FACTOR_NAMES)}, {RATE_SCALE}<S>, "
                         f"and factors joined by '{COMBINE}'")  # fmt: skip
    return found


def combined(name: str, parts: Sequence[Factor]) -> Factor:
    """Several factors' changes at once; GD is rerun if any part reruns it."""
    alone = [f.name for f in parts if f.name in (BASELINE, LCGD_RATE)]
    if alone:
        raise InputError(f"--factors: {name}: {', '.join(alone)} cannot be combined with another factor")
    changes = dict(c for f in parts for c in f.changes)
    if len(changes) < sum(len(f.changes) for f in parts):
        raise InputError(f"--factors: {name}: two parts change the same setting")
    paper = any(f.paper_rates for f in parts)
    scale = math.prod(f.rate_scale for f in parts)
    if paper and scale != 1.0:
        raise InputError(f"--factors: {name}: paper-rate and {RATE_SCALE}<S> cannot be combined")
    methods = tuple(m for m in ("gd", "lcgd") if any(m in f.methods for f in parts))
    return Factor(name, "; ".join(f.what for f in parts), tuple(changes.items()), methods, scale, paper)


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """gd_rates: GD's selected rates (an lr_selection.json, or a file of {task: rate}); the
    baseline and every factor but `lcgd-rate` finetune both methods at them."""

    gd_rates: str
    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = ("sst2", "subj", "cb")
    n_runs: int | None = None  # each task's three paper runs
    factors: tuple[str, ...] = FACTOR_NAMES
    tune_runs: int | None = 1  # the LCGD tune's runs per task: LCGD steps cost about five of GD's
    lcgd_grid: tuple[float, ...] = LCGD_GRID
    search: str = "coarse-to-unimodal"
    k: int = 32
    n_eval: int | None = 200
    batch_size: int | str = 16
    data_dir: str | None = None

    def factor(self, name: str) -> Factor:
        return named_factor(name)

    def tune_config(self) -> TuneConfig:
        return TuneConfig(model=self.model, tasks=self.tasks, n_runs=self.tune_runs, method="lcgd",
                          grid=self.lcgd_grid, search=self.search, k=self.k, batch_size=self.batch_size,
                          data_dir=self.data_dir)  # fmt: skip

    def run_config(self, factor: Factor, rates: dict[str, float] | None, source: str | None) -> RunConfig:
        """rates None: each task's paper rate."""
        return RunConfig(model=self.model, tasks=self.tasks, n_runs=self.n_runs, methods=factor.methods, k=self.k,
                         n_eval=self.n_eval, batch_size=self.batch_size, data_dir=self.data_dir,
                         lrs=None if rates is None else tuple(sorted(rates.items())), lrs_source=source,
                         **dict(factor.changes))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def check_ablation(config: AblationConfig) -> dict[str, float]:
    """Every setting, before a model loads or a directory is written; returns GD's rates."""
    for name in config.factors:
        named_factor(name)
    if BASELINE not in config.factors:
        raise InputError(f"--factors must include {BASELINE}: every factor is compared with it")
    tasks = [t.name for t in checks.check_tasks(config.tasks)]
    if config.gd_rates in ("paper", "selected"):
        raise InputError(f"--gd-rates must be GD's lr_selection.json (or a {{task: rate}} file), got {config.gd_rates!r}")
    rates = rates_for(config.gd_rates, tasks, None)
    for name in config.factors:
        if name != LCGD_RATE:
            factor = config.factor(name)
            check_config(config.run_config(factor, *scaled(rates, factor, config.gd_rates)))
    config.tune_config()  # its own checks
    return rates


def ablate(config: AblationConfig, out: str | Path, *, publish: str | Path | None = None, lm=None,
           batch_runs: str = "auto") -> dict:
    """Every factor's run directory (the baseline first), then the summary; returns ablation.json."""
    gd_rates = check_ablation(config)
    out = Path(out)
    lm = lm or load(config.model)
    for name in sorted(config.factors, key=lambda n: n != BASELINE):
        factor = config.factor(name)
        start = time.perf_counter()
        try:
            if name == LCGD_RATE:
                tune(config.tune_config(), out / "tune-lcgd", lm=lm, batch_runs=batch_runs)
                source = f"tune-lcgd/{SELECTION_FILE}"  # relative to OUT: results do not name a machine's path
                rates = rates_for(str(out / source), list(gd_rates), None)
            else:
                rates, source = scaled(gd_rates, factor, config.gd_rates)
            run_config = config.run_config(factor, rates, source)
            if name != BASELINE:
                reuse_evaluations(out / BASELINE, out / name, factor)
            run(run_config, out / name, lm=lm, batch_runs=batch_runs)
        finally:
            record = add_seconds(out, config, name, time.perf_counter() - start)
    write_ablation(out, [config.factor(n) for n in config.factors], Path(publish or out / "summary"))
    if publish is not None:
        publish_cells(out, config.factors, Path(publish))
    return record


def add_seconds(out: Path, config: AblationConfig, name: str, seconds: float) -> dict:
    """Add a factor's seconds to OUT/ablation.json, read and written under a file lock, so that two
    processes may split one ablation's factors (each factor's run directory has its own lock).
    The config recorded is the union of their factors."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ABLATION_FILE
    with open(out / (ABLATION_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = json.loads(path.read_text()) if path.exists() else {"seconds": {}}
        known = record.get("config", {}).get("factors", [])
        record["config"] = config.to_json()
        record["config"]["factors"] = list(dict.fromkeys([*known, *config.factors]))
        record["seconds"][name] = record["seconds"].get(name, 0.0) + seconds
        write_json_atomic(path, record)
    return record


def publish_cells(out: Path, factors: Sequence[str], dest: Path) -> None:
    """Beside the summary: ablation.json, each factor's run.json and cells, and LCGD's own rates
    (the large cached evaluations stay in OUT)."""
    shutil.copyfile(out / ABLATION_FILE, dest / ABLATION_FILE)
    for name in factors:
        if (out / name / RUN_FILE).exists():
            (dest / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / name / RUN_FILE, dest / name / RUN_FILE)
            shutil.copytree(out / name / CELLS, dest / name / CELLS, dirs_exist_ok=True)
    if (out / "tune-lcgd" / SELECTION_FILE).exists():
        (dest / "tune-lcgd").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "tune-lcgd" / SELECTION_FILE, dest / "tune-lcgd" / SELECTION_FILE)


def scaled(rates: dict[str, float], factor: Factor, source: str) -> tuple[dict[str, float] | None, str | None]:
    """GD's rates under `factor`, and where they came from (the cells' lr_source); (None, None) for
    the paper's rates."""
    if factor.paper_rates:
        return None, None
    if factor.rate_scale == 1.0:
        return rates, source
    return {t: float(f"{r * factor.rate_scale:.6g}") for t, r in rates.items()}, f"{source} x{factor.rate_scale:g}"


def reuse_evaluations(baseline: Path, target: Path, factor: Factor) -> int:
    """Copy the baseline's evaluations that `factor` does not change into its directory: zero-shot,
    ICL, and GD's finetuned model where the factor touches LCGD alone. Returns how many."""
    keep = {"zs.npz", "icl.npz"} | ({"gd-ft.npz"} if "gd" not in factor.methods else set())
    copied = 0
    for path in sorted((baseline / EVALS).rglob("*.npz")):
        dest = target / EVALS / path.relative_to(baseline / EVALS)
        if path.name in keep and not dest.exists():
            write_bytes_atomic(dest, path.read_bytes())
            copied += 1
    return copied
