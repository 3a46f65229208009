"""Paper-style report of a run directory: Tables 1 and 2, accuracies, random baselines, Fig. 2–4.

Input: RUN_DIR/run.json (the run's config, opaque here) and RUN_DIR/cells/**/*.json, one results
file per (task, variant, method, seed, perm) in design.md's schema; for the time per stage, the
runner's RUN_DIR/seconds/**/*.json and RUN_DIR/timing.json when present. Output (default
RUN_DIR/report): report.md, tidy CSVs with every number the tables show, and PNG plots linked from
report.md.

Conventions (paper-spec §8.11, §9):
- A "run" is one (seed, perm); statistics are over runs: mean and sample std (ddof=1); with one
  run the std is undefined and printed "—", never 0.
- "Average" = mean over tasks of the per-task means (the paper's Avg column); it is marked "*"
  when a row lacks some of the table's tasks.
- Bold = the higher of GD/LCGD (Table 2; the paper bolds the higher for every metric, SimAM too)
  or the highest variant (Table 1, where both of the top two are underlined when they are within
  0.01 at 2 decimals, the paper's caption rule). Ties at full precision bold both.
- zs/icl accuracies and the random baselines do not depend on the finetuning method, so the GD and
  LCGD cells of one run are averaged into one value per run before the statistics.
- A cell file that is not valid JSON, lacks a required key, holds a malformed or non-finite value,
  disagrees with its path, duplicates another cell, or has another layer count than the run's
  other cells is listed under "Problems" and excluded from every number.
- A seconds file or timing.json that is not valid JSON, holds an unknown stage or a value that is
  not a finite number ≥ 0, or (seconds) lies off the runner's path layout is listed under
  "Problems" too and left out of the time per stage.
- md and csv output is a pure function of the input files (sorted paths, fixed formats, no
  timestamps); PNGs are written without a software/date stamp.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxicl.metrics import PER_LAYER_KEYS

METHODS = ("gd", "lcgd")
METHOD_LABELS = {"gd": "GD", "lcgd": "LCGD"}
TABLE_METRICS = ("simaou_norm", "simaou", "simam", "simam_delta")  # required in every cell
METRIC_LABELS = {
    "simaou_norm": "SimAOU_norm",
    "simaou": "SimAOU",
    "simam": "SimAM",
    "simam_delta": "SimAM_Δ",
    "zsl_simam": "ZSL SimAM",
    "random_simaou": "Random SimAOU U[0,1)",
    "random_simaou_gauss": "Random SimAOU Gaussian",
}
RANDOM_KEYS = ("random_simaou", "random_simaou_gauss")
PAPER_TASKS = ("sst2", "sst5", "mr", "subj", "agnews", "cb")
TASK_LABELS = {"sst2": "SST2", "sst5": "SST5", "mr": "MR", "subj": "Subj", "agnews": "AGNews", "cb": "CB"}
VARIANTS = ("trained", "trained-embeddings", "no-training", "no-training-keep-norms")
VARIANT_LABELS = {
    "trained": "Trained",
    "trained-embeddings": "Trained Embeddings",
    "no-training": "No Training",
    "no-training-keep-norms": "No Training (keep norms)",
}
ACCURACY_KEYS = ("zs", "icl", "ft")
TABLE1_METRICS = ("simaou", "simam_delta", "simaou_norm")  # the last one is extra (paper-spec §10.3)
PLOT_METRICS = ("simaou_norm", "simaou", "simam_delta")
DEFAULT_GRAD_TASK = "subj"
MISSING = "n/a"
NO_STD = "—"

# ----------------------------------------------------------------------------- paper reference
# P4 Table 2 (paper-spec §9.1): trained 1.3B, 3 runs, (mean, std) per task; Avg as published.
PAPER_TABLE2: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("simaou_norm", "gd"): {"sst2": (0.11, 0.00), "sst5": (0.09, 0.01), "mr": (0.22, 0.01),
                            "subj": (0.18, 0.02), "agnews": (0.31, 0.04), "cb": (0.21, 0.01)},
    ("simaou_norm", "lcgd"): {"sst2": (0.22, 0.01), "sst5": (0.11, 0.00), "mr": (0.33, 0.01),
                              "subj": (0.35, 0.01), "agnews": (0.33, 0.01), "cb": (0.34, 0.00)},
    ("simaou", "gd"): {"sst2": (0.05, 0.01), "sst5": (0.04, 0.02), "mr": (0.17, 0.03),
                       "subj": (0.06, 0.01), "agnews": (0.18, 0.03), "cb": (0.11, 0.01)},
    ("simaou", "lcgd"): {"sst2": (0.13, 0.01), "sst5": (0.11, 0.01), "mr": (0.21, 0.03),
                         "subj": (0.18, 0.00), "agnews": (0.13, 0.01), "cb": (0.24, 0.01)},
    ("simam", "gd"): {"sst2": (0.59, 0.01), "sst5": (0.40, 0.03), "mr": (0.49, 0.01),
                      "subj": (0.45, 0.06), "agnews": (0.48, 0.04), "cb": (0.20, 0.03)},
    ("simam", "lcgd"): {"sst2": (0.58, 0.01), "sst5": (0.39, 0.03), "mr": (0.30, 0.00),
                        "subj": (0.27, 0.01), "agnews": (0.12, 0.00), "cb": (0.04, 0.01)},
    ("simam_delta", "gd"): {"sst2": (0.15, 0.02), "sst5": (0.31, 0.02), "mr": (0.14, 0.05),
                            "subj": (0.25, 0.07), "agnews": (0.50, 0.05), "cb": (0.25, 0.01)},
    ("simam_delta", "lcgd"): {"sst2": (0.30, 0.02), "sst5": (0.33, 0.01), "mr": (0.26, 0.00),
                              "subj": (0.32, 0.01), "agnews": (0.43, 0.02), "cb": (0.38, 0.01)},
}
PAPER_TABLE2_AVG: dict[tuple[str, str], float] = {
    ("simaou_norm", "gd"): 0.187, ("simaou_norm", "lcgd"): 0.279,
    ("simaou", "gd"): 0.102, ("simaou", "lcgd"): 0.167,
    ("simam", "gd"): 0.435, ("simam", "lcgd"): 0.283,
    ("simam_delta", "gd"): 0.267, ("simam_delta", "lcgd"): 0.336,
}
# P4 Table 1 (paper-spec §9.2): vanilla GD, no AGNews; (mean, std) per task.
PAPER_TABLE1: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("simaou", "trained"): {"sst2": (0.05, 0.01), "sst5": (0.04, 0.02), "mr": (0.17, 0.03),
                            "subj": (0.06, 0.01), "cb": (0.11, 0.01)},
    ("simaou", "trained-embeddings"): {"sst2": (0.11, 0.02), "sst5": (0.06, 0.00), "mr": (0.24, 0.00),
                                       "subj": (0.20, 0.00), "cb": (0.01, 0.00)},
    ("simaou", "no-training"): {"sst2": (0.09, 0.00), "sst5": (0.07, 0.03), "mr": (0.18, 0.03),
                                "subj": (0.06, 0.01), "cb": (0.04, 0.01)},
    ("simam_delta", "trained"): {"sst2": (0.15, 0.02), "sst5": (0.31, 0.02), "mr": (0.14, 0.05),
                                 "subj": (0.25, 0.07), "cb": (0.25, 0.01)},
    ("simam_delta", "trained-embeddings"): {"sst2": (0.09, 0.02), "sst5": (0.03, 0.00), "mr": (0.18, 0.02),
                                            "subj": (0.16, 0.02), "cb": (0.05, 0.10)},
    ("simam_delta", "no-training"): {"sst2": (0.11, 0.04), "sst5": (0.05, 0.03), "mr": (0.16, 0.03),
                                     "subj": (0.17, 0.03), "cb": (0.26, 0.05)},
}
# Cells of the garbled CB column that paper-spec §9.2 had to reconstruct (marked ⚑ there).
PAPER_TABLE1_RECONSTRUCTED = frozenset({
    ("simaou", "no-training", "cb"),
    ("simam_delta", "trained", "cb"),
    ("simam_delta", "trained-embeddings", "cb"),
    ("simam_delta", "no-training", "cb"),
})
# Random SimAOU U[0,1), normalized mode, mean over runs, from the authors' result files (§10.1).
PAPER_RANDOM_SIMAOU = {"sst2": 0.002, "sst5": 0.002, "mr": 0.001, "subj": 0.002, "agnews": 0.001, "cb": 0.004}
# Dai et al. GPT 1.3B (paper-spec §9.4); the v4 runs' own accuracies are unknown.
DAI_ACCURACY: dict[str, dict[str, float]] = {
    "zs": {"sst2": 70.5, "sst5": 39.3, "mr": 65.9, "subj": 72.6, "agnews": 46.3, "cb": 37.5},
    "ft": {"sst2": 73.9, "sst5": 39.5, "mr": 73.0, "subj": 77.8, "agnews": 65.3, "cb": 55.4},
    "icl": {"sst2": 92.7, "sst5": 45.0, "mr": 89.0, "subj": 90.0, "agnews": 79.2, "cb": 57.1},
    "rec2ftp": {"sst2": 91.84, "sst5": 66.67, "mr": 97.08, "subj": 87.17, "agnews": 83.08, "cb": 87.50},
}
# Fig. 3 means per layer (24 layers, over tasks and seeds), from the authors' notebook (§10.2).
PAPER_FIG3: dict[tuple[str, str], tuple[float, ...]] = {
    ("simaou_norm", "lcgd"): (0.503, -0.077, 0.239, 0.103, 0.318, 0.250, 0.341, 0.220, 0.288, 0.286, 0.313,
                              0.285, 0.346, 0.307, 0.311, 0.323, 0.270, 0.362, 0.360, 0.457, 0.235, 0.254,
                              0.199, 0.210),
    ("simaou_norm", "gd"): (0.166, 0.012, 0.110, 0.165, 0.193, 0.072, 0.221, 0.203, 0.155, 0.201, 0.213,
                            0.245, 0.273, 0.297, 0.298, 0.257, 0.239, 0.157, 0.204, 0.069, 0.196, 0.099,
                            0.095, 0.294),
    ("simam_delta", "lcgd"): (0.019, 0.213, 0.291, 0.522, 0.580, 0.610, 0.575, 0.451, 0.464, 0.228, 0.354,
                              0.512, 0.381, 0.407, 0.384, 0.250, 0.412, 0.510, 0.500, 0.438, 0.189, -0.039,
                              -0.152, -0.004),
    ("simam_delta", "gd"): (-0.006, -0.211, -0.043, 0.048, 0.088, 0.293, 0.211, 0.220, 0.284, 0.339, 0.316,
                            0.358, 0.466, 0.600, 0.602, 0.492, 0.613, 0.693, 0.483, 0.357, 0.128, -0.003,
                            -0.003, 0.078),
}

# ----------------------------------------------------------------------------- loading


class Problem(NamedTuple):
    """A file the report could not use, and why (shown in report.md)."""

    path: str
    reason: str


class CellError(ValueError):
    """A cell file that must not be averaged in."""


@dataclass(frozen=True)
class Cell:
    """One validated results file; `path` is relative to the run directory."""

    path: str
    task: str
    variant: str
    method: str
    seed: int
    perm: int
    model: str | None
    n_eval: int | None
    k_icl: int | None
    accuracy: Mapping[str, float]
    per_layer: Mapping[str, tuple[float, ...]]
    scalar: Mapping[str, float | None]
    alpha: float | None
    alpha_per_layer: tuple[float, ...] | None
    grad_norms: Mapping[str, np.ndarray] | None

    @property
    def run(self) -> tuple[int, int]:
        return (self.seed, self.perm)

    @property
    def n_layers(self) -> int:
        return len(self.per_layer[TABLE_METRICS[0]])

    def value(self, metric: str) -> float | None:
        """Layer-mean of a metric: the stored scalar, else the mean of its per-layer list."""
        if self.scalar.get(metric) is not None:
            return self.scalar[metric]
        if metric in self.per_layer:
            return float(np.mean(self.per_layer[metric]))
        return None


_CELL_NAME = re.compile(r"^(?P<method>[^/]+)-seed(?P<seed>-?\d+)-perm(?P<perm>-?\d+)\.json$")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _need(obj: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in obj:
        raise CellError(f"missing key {where}{key!r}")
    return obj[key]


def _str_field(obj: Mapping[str, Any], key: str) -> str:
    value = _need(obj, key)
    if not isinstance(value, str) or not value:
        raise CellError(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _int_field(obj: Mapping[str, Any], key: str, required: bool = True) -> int | None:
    if not required and obj.get(key) is None:
        return None
    value = _need(obj, key)
    if not _is_int(value):
        raise CellError(f"{key!r} must be an integer, got {value!r}")
    return value


def _dict_field(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = _need(obj, key)
    if not isinstance(value, dict):
        raise CellError(f"{key!r} must be an object, got {type(value).__name__}")
    return value


def _num_list(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(_is_num(v) for v in value):
        raise CellError(f"{where} must be a non-empty list of finite numbers")
    return tuple(float(v) for v in value)


def _parse_accuracy(obj: Mapping[str, Any]) -> dict[str, float]:
    acc = _dict_field(obj, "accuracy")
    out = {}
    for key in ACCURACY_KEYS:
        value = _need(acc, key, "accuracy.")
        if not _is_num(value) or not 0.0 <= value <= 1.0:
            raise CellError(f"accuracy.{key} must be a fraction in [0, 1], got {value!r}")
        out[key] = float(value)
    return out


def _parse_per_layer(obj: Mapping[str, Any]) -> dict[str, tuple[float, ...]]:
    """Required table metrics plus any known optional ones, all with one value per layer."""
    raw = _dict_field(obj, "per_layer")
    for key in TABLE_METRICS:
        _need(raw, key, "per_layer.")
    out = {key: _num_list(raw[key], f"per_layer.{key}") for key in PER_LAYER_KEYS if key in raw}
    lengths = {key: len(v) for key, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise CellError(f"per_layer lists differ in length: {lengths}")
    return out


def _parse_scalar(obj: Mapping[str, Any]) -> dict[str, float | None]:
    raw = _dict_field(obj, "scalar")
    for key in TABLE_METRICS:
        _need(raw, key, "scalar.")
    out: dict[str, float | None] = {}
    for key in (*PER_LAYER_KEYS, "rec2ftp"):
        if key not in raw:
            continue
        value = raw[key]
        if value is None and key == "rec2ftp":  # undefined when FT fixed no example
            out[key] = None
        elif _is_num(value):
            out[key] = float(value)
        else:
            raise CellError(f"scalar.{key} must be a finite number, got {value!r}")
    rec = out.get("rec2ftp")
    if rec is not None and not 0.0 <= rec <= 100.0:
        raise CellError(f"scalar.rec2ftp must be a percentage in [0, 100], got {rec!r}")
    return out


def _parse_alpha(obj: Mapping[str, Any], n_layers: int) -> tuple[float | None, tuple[float, ...] | None]:
    """α as the brief's {"per_layer": [...], "scalar": x} or alpha_metrics' {"…": {"alpha": …}}."""
    raw = obj.get("alpha")
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise CellError("'alpha' must be an object")
    scalar, per_layer = raw.get("scalar"), raw.get("per_layer")
    scalar = scalar.get("alpha") if isinstance(scalar, dict) else scalar
    per_layer = per_layer.get("alpha") if isinstance(per_layer, dict) else per_layer
    layers = None if per_layer is None else _num_list(per_layer, "alpha.per_layer")
    if layers is not None and len(layers) != n_layers:
        raise CellError(f"alpha.per_layer has {len(layers)} layers, per_layer has {n_layers}")
    if scalar is None:
        if layers is None:
            raise CellError("'alpha' has neither a scalar nor a per-layer list")
        return float(np.mean(layers)), layers
    if not _is_num(scalar):
        raise CellError(f"alpha.scalar must be a finite number, got {scalar!r}")
    return float(scalar), layers


def _parse_grad_norms(obj: Mapping[str, Any], n_layers: int) -> dict[str, np.ndarray] | None:
    """{"kv"|"all": steps × layers} of non-negative norms."""
    raw = obj.get("grad_norms")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise CellError("'grad_norms' must be a non-empty object")
    out = {}
    for key in sorted(raw):
        steps = raw[key]
        if not isinstance(steps, list) or not steps:
            raise CellError(f"grad_norms.{key} must be a non-empty list of steps")
        rows = [_num_list(step, f"grad_norms.{key} step") for step in steps]
        if any(len(r) != n_layers for r in rows) or any(v < 0 for r in rows for v in r):
            raise CellError(f"grad_norms.{key}: every step needs {n_layers} non-negative layer norms")
        out[key] = np.asarray(rows, np.float64)
    return out


def parse_cell(obj: Any, path: str) -> Cell:
    """A validated Cell from one decoded JSON file; CellError says what is wrong."""
    if not isinstance(obj, dict):
        raise CellError(f"top level must be an object, got {type(obj).__name__}")
    method = _str_field(obj, "method")
    if method not in METHODS:
        raise CellError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    model = obj.get("model")
    per_layer = _parse_per_layer(obj)
    n_layers = len(per_layer[TABLE_METRICS[0]])
    alpha, alpha_layers = _parse_alpha(obj, n_layers)
    return Cell(
        path=path,
        task=_str_field(obj, "task"),
        variant=_str_field(obj, "variant"),
        method=method,
        seed=_int_field(obj, "seed"),
        perm=_int_field(obj, "perm"),
        model=model if isinstance(model, str) else None,
        n_eval=_int_field(obj, "n_eval", required=False),
        k_icl=_int_field(obj, "k_icl", required=False),
        accuracy=_parse_accuracy(obj),
        per_layer=per_layer,
        scalar=_parse_scalar(obj),
        alpha=alpha,
        alpha_per_layer=alpha_layers,
        grad_norms=_parse_grad_norms(obj, n_layers),
    )


def _check_path(cell: Cell) -> None:
    """cells/<task>/<variant>/<method>-seed<s>-perm<p>.json must agree with the file's content."""
    parts = Path(cell.path).parts
    match = _CELL_NAME.match(parts[-1]) if len(parts) == 4 and parts[0] == "cells" else None
    if match is None:
        return
    expected = {"task": parts[1], "variant": parts[2], "method": match["method"],
                "seed": int(match["seed"]), "perm": int(match["perm"])}
    wrong = [f"{k}={getattr(cell, k)!r} but path says {v!r}" for k, v in expected.items() if getattr(cell, k) != v]
    if wrong:
        raise CellError("content disagrees with path: " + "; ".join(wrong))


def _read_cell(path: Path, rel: str) -> Cell:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CellError(f"not valid JSON ({type(e).__name__}: {e})") from e
    cell = parse_cell(obj, rel)
    _check_path(cell)
    return cell


def _drop_odd_layer_counts(cells: list[Cell], problems: list[Problem]) -> list[Cell]:
    """Keep the cells with the run's most common layer count (ties: the first seen in path order)."""
    if not cells:
        return cells
    counts = Counter(c.n_layers for c in cells)
    top = max(counts.values())
    majority = next(c.n_layers for c in cells if counts[c.n_layers] == top)
    for c in cells:
        if c.n_layers != majority:
            problems.append(Problem(c.path, f"{c.n_layers} layers, the run's other cells have {majority}"))
    return [c for c in cells if c.n_layers == majority]


def load_cells(run_dir: str | Path) -> tuple[list[Cell], list[Problem]]:
    """Every usable cell under RUN_DIR/cells (any depth), sorted by path, and the files left out.

    Nothing that fails validation is returned, so no table can average a broken file in."""
    run_dir = Path(run_dir)
    cells: list[Cell] = []
    problems: list[Problem] = []
    seen: dict[tuple, str] = {}
    for path in sorted((run_dir / "cells").glob("**/*.json"), key=lambda p: p.relative_to(run_dir).as_posix()):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_file():
            continue
        try:
            cell = _read_cell(path, rel)
        except CellError as e:
            problems.append(Problem(rel, str(e)))
            continue
        key = (cell.task, cell.variant, cell.method, cell.seed, cell.perm)
        if key in seen:
            problems.append(Problem(rel, f"duplicate of {seen[key]} (same task/variant/method/seed/perm)"))
            continue
        seen[key] = rel
        cells.append(cell)
    return _drop_odd_layer_counts(cells, problems), problems


def load_run_config(run_dir: str | Path) -> tuple[dict[str, Any], list[Problem]]:
    """run.json as a dict ({} with a Problem when it is missing or unreadable)."""
    path = Path(run_dir) / "run.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, [Problem("run.json", "missing")]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [Problem("run.json", f"not valid JSON ({type(e).__name__}: {e})")]
    if not isinstance(obj, dict):
        return {}, [Problem("run.json", f"top level must be an object, got {type(obj).__name__}")]
    return obj, []


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; None for a single value) of n values."""

    mean: float
    std: float | None
    n: int


def mean_std(values: Iterable[float]) -> Stat | None:
    """The paper's cross-run aggregation (paper-spec §8.11); None when there is nothing to average."""
    arr = np.asarray(list(values), np.float64)
    if arr.size == 0:
        return None
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else None
    return Stat(float(np.mean(arr)), std, int(arr.size))


def select(cells: Iterable[Cell], **where: str) -> list[Cell]:
    """Cells whose attributes equal every given value, e.g. select(cells, variant="trained")."""
    return [c for c in cells if all(getattr(c, k) == v for k, v in where.items())]


def per_run(cells: Iterable[Cell], get: Callable[[Cell], float | None]) -> list[float]:
    """One value per (seed, perm): the mean over that run's cells (GD and LCGD share zs/icl)."""
    by_run: dict[tuple[int, int], list[float]] = {}
    for c in cells:
        value = get(c)
        if value is not None:
            by_run.setdefault(c.run, []).append(value)
    return [float(np.mean(by_run[r])) for r in sorted(by_run)]


def metric_stat(cells: Sequence[Cell], metric: str) -> Stat | None:
    return mean_std(v for c in cells if (v := c.value(metric)) is not None)


def task_average(stats: Mapping[str, Stat | None]) -> tuple[float | None, int]:
    """Mean over tasks of the per-task means (the paper's Average column), and how many tasks."""
    means = [s.mean for s in stats.values() if s is not None]
    return (float(np.mean(means)) if means else None), len(means)


def order_tasks(tasks: Iterable[str]) -> list[str]:
    """The paper's task order, then any other task alphabetically."""
    tasks = set(tasks)
    return [t for t in PAPER_TASKS if t in tasks] + sorted(tasks - set(PAPER_TASKS))


def order_variants(variants: Iterable[str]) -> list[str]:
    variants = set(variants)
    return [v for v in VARIANTS if v in variants] + sorted(variants - set(VARIANTS))


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


# ----------------------------------------------------------------------------- formatting


def fmt_num(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def fmt_stat(stat: Stat | None, digits: int = 2, scale: float = 1.0) -> str:
    """"mean ± std", with "—" for the std of a single run (undefined, not zero)."""
    if stat is None:
        return MISSING
    std = NO_STD if stat.std is None else f"{stat.std * scale:.{digits}f}"
    return f"{stat.mean * scale:.{digits}f} ± {std}"


def emphasize(text: str, bold: bool = False, underline: bool = False) -> str:
    if underline:
        text = f"<u>{text}</u>"
    return f"**{text}**" if bold else text


def best_flags(values: Mapping[str, float | None]) -> dict[str, bool]:
    """Which entries hold the maximum (ties: all of them); none when fewer than two have values."""
    present = {k: v for k, v in values.items() if v is not None}
    if len(present) < 2:
        return {k: False for k in values}
    top = max(present.values())
    return {k: present.get(k) == top for k in values}


def close_top_two(values: Mapping[str, float | None], tol: float = 0.01) -> dict[str, bool]:
    """Table 1's underline rule: the top two, when within `tol` of each other at 2 decimals."""
    rounded = sorted(((round(v, 2), k) for k, v in values.items() if v is not None), reverse=True)
    if len(rounded) < 2 or rounded[0][0] - rounded[1][0] > tol + 1e-9:
        return {k: False for k in values}
    pair = {rounded[0][1], rounded[1][1]}
    return {k: k in pair for k in values}


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def csv_num(x: float | int | None) -> str:
    """Full precision, fixed spelling: the CSVs are for machines and diffs."""
    if x is None:
        return ""
    return str(x) if isinstance(x, int) else repr(float(x))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([v if isinstance(v, str) else csv_num(v) for v in row])


def stat_cols(stat: Stat | None) -> list[Any]:
    return [None, None, None] if stat is None else [stat.n, stat.mean, stat.std]


# ----------------------------------------------------------------------------- Table 2


def table2_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[tuple[str, str], dict[str, Stat | None]]:
    """(metric, method) → task → Stat over runs, trained variant."""
    trained = select(cells, variant="trained")
    return {
        (metric, method): {t: metric_stat(select(trained, method=method, task=t), metric) for t in tasks}
        for metric in TABLE_METRICS
        for method in METHODS
    }


def _table2_rows(
    means: Callable[[str, str, str], float | None],
    text: Callable[[str, str, str], str],
    average: Callable[[str, str], str],
    tasks: Sequence[str],
) -> list[list[str]]:
    """Rows metric × method with the higher of GD/LCGD bold per task (shared by ours and paper's)."""
    rows = []
    for metric in TABLE_METRICS:
        for method in METHODS:
            cells = []
            for t in tasks:
                bold = best_flags({m: means(metric, m, t) for m in METHODS})[method]
                cells.append(emphasize(text(metric, method, t), bold=bold))
            rows.append([METRIC_LABELS[metric], METHOD_LABELS[method], *cells, average(metric, method)])
    return rows


def render_table2(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str]) -> list[str]:
    def mean(metric: str, method: str, task: str) -> float | None:
        s = stats[(metric, method)][task]
        return None if s is None else s.mean

    def average(metric: str, method: str) -> str:
        avg, n = task_average(stats[(metric, method)])
        return fmt_num(avg, 3) + ("*" if avg is not None and n < len(tasks) else "")

    rows = _table2_rows(mean, lambda m, me, t: fmt_stat(stats[(m, me)][t]), average, tasks)
    return md_table(["metric", "method", *map(task_label, tasks), "Average"], rows)


def render_paper_table2() -> list[str]:
    def mean(metric: str, method: str, task: str) -> float | None:
        return PAPER_TABLE2[(metric, method)][task][0]

    def text(metric: str, method: str, task: str) -> str:
        m, s = PAPER_TABLE2[(metric, method)][task]
        return f"{m:.2f} ± {s:.2f}"

    rows = _table2_rows(mean, text, lambda m, me: f"{PAPER_TABLE2_AVG[(m, me)]:.3f}", PAPER_TASKS)
    return md_table(["metric", "method", *map(task_label, PAPER_TASKS), "Average"], rows)


def table2_csv_rows(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str]) -> list[list]:
    rows = []
    for (metric, method), by_task in stats.items():
        for t in tasks:
            paper = PAPER_TABLE2[(metric, method)].get(t)
            rows.append([metric, method, t, *stat_cols(by_task[t]), *(paper or (None, None))])
        avg, n = task_average(by_task)
        rows.append([metric, method, "average", n if avg is not None else None, avg, None,
                     PAPER_TABLE2_AVG[(metric, method)], None])
    return rows


# ----------------------------------------------------------------------------- Table 1


def table1_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[tuple[str, str], dict[str, Stat | None]]:
    """(metric, variant) → task → Stat over runs, GD only, for the variants present."""
    gd = select(cells, method="gd")
    variants = order_variants(c.variant for c in gd)
    return {
        (metric, variant): {t: metric_stat(select(gd, variant=variant, task=t), metric) for t in tasks}
        for metric in TABLE1_METRICS
        for variant in variants
    }


def _table1_rows(
    table: Mapping[tuple[str, str], Mapping[str, Any]],
    mean: Callable[[Any], float | None],
    text: Callable[[str, str, str], str],
    tasks: Sequence[str],
) -> list[list[str]]:
    """Rows metric × variant; per metric and task the highest variant bold, a close top two underlined."""
    rows = []
    for metric in TABLE1_METRICS:
        variants = [v for (m, v) in table if m == metric]
        flags = {}
        for t in tasks:
            values = {v: mean(table[(metric, v)].get(t)) for v in variants}
            flags[t] = (best_flags(values), close_top_two(values))
        for v in variants:
            cells = [emphasize(text(metric, v, t), flags[t][0][v], flags[t][1][v]) for t in tasks]
            rows.append([METRIC_LABELS[metric], variant_label(v), *cells])
    return rows


def render_table1(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str]) -> list[str]:
    rows = _table1_rows(stats, lambda s: None if s is None else s.mean,
                        lambda m, v, t: fmt_stat(stats[(m, v)][t]), tasks)
    return md_table(["metric", "model", *map(task_label, tasks)], rows)


def render_paper_table1() -> list[str]:
    tasks = [t for t in PAPER_TASKS if t != "agnews"]

    def text(metric: str, variant: str, task: str) -> str:
        m, s = PAPER_TABLE1[(metric, variant)][task]
        flag = " ⚑" if (metric, variant, task) in PAPER_TABLE1_RECONSTRUCTED else ""
        return f"{m:.2f} ± {s:.2f}{flag}"

    rows = _table1_rows(PAPER_TABLE1, lambda x: None if x is None else x[0], text, tasks)
    return md_table(["metric", "model", *map(task_label, tasks)], rows)


def table1_csv_rows(stats: Mapping[tuple[str, str], Mapping[str, Stat | None]], tasks: Sequence[str]) -> list[list]:
    rows = []
    for (metric, variant), by_task in stats.items():
        for t in tasks:
            paper = PAPER_TABLE1.get((metric, variant), {}).get(t)
            rows.append([metric, variant, t, *stat_cols(by_task[t]), *(paper or (None, None))])
    return rows


# ----------------------------------------------------------------------------- accuracy


def _k_icl_text(cells: Sequence[Cell]) -> str:
    values = sorted({c.k_icl for c in cells if c.k_icl is not None})
    if not values:
        return MISSING
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def accuracy_stats(cells: Sequence[Cell]) -> dict[str, Stat | None]:
    """zs/icl (one value per run), FT per method, Rec2FTP per method (runs where it is defined)."""
    out = {
        "zs": mean_std(per_run(cells, lambda c: c.accuracy["zs"])),
        "icl": mean_std(per_run(cells, lambda c: c.accuracy["icl"])),
    }
    for method in METHODS:
        mine = select(cells, method=method)
        out[f"ft_{method}"] = mean_std(c.accuracy["ft"] for c in mine)
        out[f"rec2ftp_{method}"] = mean_std(c.scalar["rec2ftp"] for c in mine if c.scalar.get("rec2ftp") is not None)
    return out


def _rec2ftp_text(stat: Stat | None, cells: Sequence[Cell]) -> str:
    """Rec2FTP with "(k/n runs)" when it is undefined in some runs, so a mean over few is visible."""
    text = fmt_stat(stat, 1)
    if cells and (stat is None or stat.n < len(cells)):
        text += f" ({0 if stat is None else stat.n}/{len(cells)} runs)"
    return text


def render_accuracy(cells: Sequence[Cell], variant: str, tasks: Sequence[str]) -> list[str]:
    header = ["task", "runs (GD/LCGD)", "k_icl", "ZS", "ICL", "FT (GD)", "FT (LCGD)", "Rec2FTP (GD)", "Rec2FTP (LCGD)"]
    rows = []
    for t in tasks:
        mine = select(cells, variant=variant, task=t)
        if not mine:
            continue
        stats = accuracy_stats(mine)
        runs = "/".join(str(len(select(mine, method=m))) for m in METHODS)
        rows.append([
            task_label(t), runs, _k_icl_text(mine),
            *(fmt_stat(stats[k], 1, 100.0) for k in ("zs", "icl", "ft_gd", "ft_lcgd")),
            *(_rec2ftp_text(stats[f"rec2ftp_{m}"], select(mine, method=m)) for m in METHODS),
        ])
    return md_table(header, rows)


def render_dai_accuracy() -> list[str]:
    rows = [[label, *(f"{DAI_ACCURACY[key][t]:.2f}" if key == "rec2ftp" else f"{DAI_ACCURACY[key][t]:.1f}"
                      for t in PAPER_TASKS)]
            for key, label in (("zs", "ZS"), ("icl", "ICL"), ("ft", "FT (GD)"), ("rec2ftp", "Rec2FTP (GD)"))]
    return md_table(["Dai et al., GPT 1.3B", *map(task_label, PAPER_TASKS)], rows)


def accuracy_csv_rows(cells: Sequence[Cell], variants: Sequence[str], tasks: Sequence[str]) -> list[list]:
    rows = []
    for variant in variants:
        for t in tasks:
            mine = select(cells, variant=variant, task=t)
            if not mine:
                continue
            for key, stat in accuracy_stats(mine).items():
                rows.append([variant, t, key, *stat_cols(stat)])
    return rows


# ----------------------------------------------------------------------------- random baselines


def random_stats(cells: Sequence[Cell], tasks: Sequence[str], variant: str) -> dict[str, dict[str, Stat | None]]:
    """key → task → Stat over runs (GD and LCGD cells of a run share the ICL update)."""
    mine = select(cells, variant=variant)
    return {key: {t: mean_std(per_run(select(mine, task=t), lambda c, k=key: c.value(k))) for t in tasks}
            for key in RANDOM_KEYS}


def render_random(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[str]:
    rows = []
    for variant in variants:
        for key, by_task in random_stats(cells, tasks, variant).items():
            if all(s is None for s in by_task.values()):
                continue
            avg, n = task_average(by_task)
            rows.append([f"{METRIC_LABELS[key]}, {variant_label(variant)}",
                         *(fmt_stat(by_task[t], 3) for t in tasks),
                         fmt_num(avg, 3) + ("*" if avg is not None and n < len(tasks) else "")])
    paper = [PAPER_RANDOM_SIMAOU.get(t) for t in tasks]
    known = [p for p in paper if p is not None]
    rows.append(["Random SimAOU U[0,1), paper (authors' files)", *(fmt_num(p, 3) for p in paper),
                 fmt_num(float(np.mean(known)) if known else None, 3)])
    return md_table(["baseline", *map(task_label, tasks), "Average"], rows)


def random_csv_rows(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[list]:
    rows = []
    for variant in variants:
        for key, by_task in random_stats(cells, tasks, variant).items():
            for t in tasks:
                if by_task[t] is None:
                    continue
                comparable = key == "random_simaou" and variant == "trained"
                rows.append([variant, key, t, *stat_cols(by_task[t]),
                             PAPER_RANDOM_SIMAOU.get(t) if comparable else None])
    return rows


# ----------------------------------------------------------------------------- α


def alpha_stats(cells: Sequence[Cell], tasks: Sequence[str]) -> dict[str, Stat | None]:
    """α per task over runs, from the trained LCGD cells that carry it."""
    lcgd = select(cells, variant="trained", method="lcgd")
    return {t: mean_std(c.alpha for c in select(lcgd, task=t) if c.alpha is not None) for t in tasks}


# ----------------------------------------------------------------------------- per-layer curves


def layer_curve(cells: Sequence[Cell], metric: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Mean and std (ddof=1) over runs of a per-layer metric; None when no cell has it."""
    curves = [c.per_layer[metric] for c in cells if metric in c.per_layer]
    if not curves:
        return None
    arr = np.asarray(curves, np.float64)
    return arr.mean(axis=0), (arr.std(axis=0, ddof=1) if len(curves) > 1 else None)


def task_mean_curve(cells: Sequence[Cell], metric: str, tasks: Sequence[str]) -> np.ndarray | None:
    """Mean over tasks of the per-task mean curves (equal task weights, like the Average column)."""
    curves = [c[0] for t in tasks if (c := layer_curve(select(cells, task=t), metric)) is not None]
    return np.mean(np.asarray(curves), axis=0) if curves else None


def per_layer_csv_rows(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[list]:
    rows = []
    for variant in variants:
        for method in METHODS:
            for t in tasks:
                mine = select(cells, variant=variant, method=method, task=t)
                for metric in PER_LAYER_KEYS:
                    curve = layer_curve(mine, metric)
                    if curve is None:
                        continue
                    n = sum(metric in c.per_layer for c in mine)
                    for layer, mean in enumerate(curve[0]):
                        std = None if curve[1] is None else curve[1][layer]
                        rows.append([variant, method, t, metric, layer, n, mean, std])
    return rows


# ----------------------------------------------------------------------------- time per stage

# (report column, CSV stage, the runner's stopwatch keys summed into it; see experiment.run_group)
STAGES = (
    ("prompts", "prompts", ("prompts",)),
    ("zero-shot", "zero_shot", ("zero_shot",)),
    ("ICL", "icl", ("icl",)),
    ("finetune GD", "finetune_gd", ("finetune_gd",)),
    ("finetune LCGD", "finetune_lcgd", ("finetune_lcgd",)),
    ("evaluate GD-finetuned", "evaluate_gd", ("ftzs_gd",)),
    ("evaluate LCGD-finetuned", "evaluate_lcgd", ("ftzs_lcgd",)),
    ("metrics", "metrics", ("metrics_gd", "metrics_lcgd")),
)
STAGE_KEYS = frozenset(k for _, _, keys in STAGES for k in keys)
TIMING_KEYS = ("load_s", "total_s")

Group = tuple[str, str, int, int]  # (task, variant, seed, perm)


def _read_seconds(path: Path, rel: str) -> tuple[Group, dict[str, float]]:
    """seconds/<task>/<variant>/<method>-seed<S>-perm<P>.json → its group and stopwatch dict."""
    parts = Path(rel).parts
    match = _CELL_NAME.match(parts[-1]) if len(parts) == 4 and parts[0] == "seconds" else None
    if match is None:
        raise CellError("path is not seconds/<task>/<variant>/<method>-seed<S>-perm<P>.json")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CellError(f"not valid JSON ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not obj:
        raise CellError("top level must be a non-empty object of stage → seconds")
    for key in sorted(obj):
        if key not in STAGE_KEYS:
            raise CellError(f"unknown stage {key!r} (known: {', '.join(sorted(STAGE_KEYS))})")
        if not _is_num(obj[key]) or obj[key] < 0:
            raise CellError(f"{key!r} must be a finite number of seconds ≥ 0, got {obj[key]!r}")
    return (parts[1], parts[2], int(match["seed"]), int(match["perm"])), {k: float(v) for k, v in obj.items()}


def load_stage_seconds(run_dir: str | Path) -> tuple[dict[Group, dict[str, float]], list[Problem]]:
    """Stopwatch seconds per group, and the files left out ({} when there is no seconds/ folder).

    The runner's stopwatch is cumulative within a group (a group's second file repeats the first
    one's stages), so a group's files are merged by each stage's maximum, never added."""
    run_dir = Path(run_dir)
    groups: dict[Group, dict[str, float]] = {}
    problems: list[Problem] = []
    for path in sorted((run_dir / "seconds").glob("**/*.json"), key=lambda p: p.relative_to(run_dir).as_posix()):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_file():
            continue
        try:
            group, seconds = _read_seconds(path, rel)
        except CellError as e:
            problems.append(Problem(rel, str(e)))
            continue
        merged = groups.setdefault(group, {})
        for key, value in seconds.items():
            merged[key] = max(merged.get(key, 0.0), value)
    return groups, problems


def load_timing(run_dir: str | Path) -> tuple[dict[str, float], list[Problem]]:
    """timing.json's load_s and total_s ({} when absent; {} and a Problem when malformed)."""
    try:
        obj = json.loads((Path(run_dir) / "timing.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [Problem("timing.json", f"not valid JSON ({type(e).__name__}: {e})")]
    if not isinstance(obj, dict) or not all(_is_num(obj.get(k)) and obj[k] >= 0 for k in TIMING_KEYS):
        return {}, [Problem("timing.json", "must be an object with finite numbers ≥ 0 'load_s' and 'total_s'")]
    return {k: float(obj[k]) for k in TIMING_KEYS}, []


def stage_totals(groups: Mapping[Group, Mapping[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """variant → {"groups", each CSV stage (summed over groups; None when no group has it), "total",
    "mean_per_group"}."""
    out = {}
    for variant in order_variants(g[1] for g in groups):
        mine = [s for g, s in groups.items() if g[1] == variant]
        row: dict[str, float | int | None] = {"groups": len(mine)}
        for _, name, keys in STAGES:
            values = [s[k] for s in mine for k in keys if k in s]
            row[name] = math.fsum(values) if values else None
        total = math.fsum(s[k] for s in mine for k in s)
        row.update(total=total, mean_per_group=total / len(mine))
        out[variant] = row
    return out


def time_csv_rows(totals: Mapping[str, Mapping[str, Any]], timing: Mapping[str, float]) -> list[list]:
    rows = [[variant, stage, row["groups"], row[stage]]
            for variant, row in totals.items()
            for stage in (*(name for _, name, _ in STAGES), "total", "mean_per_group")]
    return rows + [["timing.json", key, None, timing[key]] for key in TIMING_KEYS if key in timing]


def _time_section(totals: Mapping[str, Mapping[str, Any]], timing: Mapping[str, float]) -> list[str]:
    lines = ["## Time per stage", ""]
    if not totals:
        lines.append("None recorded: no usable seconds files under seconds/.")
    else:
        rows = [[variant_label(v), str(row["groups"]), *(fmt_num(row[name], 1) for _, name, _ in STAGES),
                 f"{row['total']:.1f} ({row['total'] / 3600:.2f} h)", fmt_num(row["mean_per_group"], 1)]
                for v, row in totals.items()]
        lines += md_table(["variant", "groups", *(label for label, _, _ in STAGES), "total", "mean per group"], rows)
        lines += ["", "Seconds summed over each variant's groups (a group is one task × seed × perm; its GD and "
                  "LCGD share prompts, zero-shot and ICL). The runner's stopwatch is cumulative within a group, "
                  "so a group's files are merged by each stage's maximum. Prompts includes the variant's "
                  "re-initialisation; evaluate = zero-shot evaluation of the finetuned model; metrics = GD + "
                  "LCGD metrics (α and writing files are not timed).",
                  "",
                  "Stages served from cache (evals/, checkpoints/) count their load time only: the trained "
                  "zero-shot is computed once per task and loaded by its other seeds, and a group resumed "
                  "after an interrupt shows near zero for the stages it found cached (unless an earlier file "
                  "of the group recorded them)."]
    lines.append("")
    if timing:
        lines.append(f"Model load: {timing['load_s']:.1f} s; that invocation's total: {timing['total_s']:.1f} s "
                     "(timing.json: the last `jaxicl run` invocation only, a resumed run overwrites it).")
    else:
        lines.append("Model load: not recorded (no usable timing.json; a `jaxicl run` invocation writes it after "
                     "loading the model and after every group).")
    return lines


# ----------------------------------------------------------------------------- plots

METHOD_COLORS = {"gd": "tab:blue", "lcgd": "tab:orange"}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: stable bytes
    return path


def _plot_methods(ax: Any, cells: Sequence[Cell], metric: str, tasks: Sequence[str], band: bool) -> None:
    """GD and LCGD per-layer curves on one axis (band = ±1 std over runs, single-task plots only)."""
    for method in METHODS:
        mine = select(cells, method=method)
        if band:
            curve = layer_curve(mine, metric)
            mean, std = (None, None) if curve is None else curve
        else:
            mean, std = task_mean_curve(mine, metric, tasks), None
        if mean is None:
            continue
        x = np.arange(len(mean))
        ax.plot(x, mean, marker=".", color=METHOD_COLORS[method], label=METHOD_LABELS[method])
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=METHOD_COLORS[method], alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_title(METRIC_LABELS[metric])
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)


def plot_per_layer(cells: Sequence[Cell], tasks: Sequence[str], path: Path, title: str, band: bool) -> Path:
    fig = Figure(figsize=(4.2 * len(PLOT_METRICS), 3.6))
    axes = fig.subplots(1, len(PLOT_METRICS))
    for ax, metric in zip(axes, PLOT_METRICS):
        _plot_methods(ax, cells, metric, tasks, band)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_vs_paper(cells: Sequence[Cell], tasks: Sequence[str], path: Path) -> Path:
    """Our Fig. 3 curves against the paper's (§10.2) on relative depth, since layer counts differ."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("simaou_norm", "simam_delta")):
        for method in METHODS:
            ours = task_mean_curve(select(cells, method=method), metric, tasks)
            paper = np.asarray(PAPER_FIG3[(metric, method)])
            color = METHOD_COLORS[method]
            ax.plot(np.linspace(0, 1, len(paper)), paper, "--", color=color, label=f"{METHOD_LABELS[method]} paper")
            if ours is not None:
                ax.plot(np.linspace(0, 1, len(ours)), ours, "-", marker=".", color=color,
                        label=f"{METHOD_LABELS[method]} ours")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xlabel("relative depth (layer / (L − 1))")
        ax.legend(fontsize=8)
    fig.suptitle("Per-layer means over tasks and seeds: ours vs paper (1.3B, 24 layers)")
    fig.tight_layout()
    return _save(fig, path)


def plot_alpha(stats: Mapping[str, Stat], path: Path) -> Path:
    tasks = list(stats)
    means = [stats[t].mean for t in tasks]
    errs = [stats[t].std or 0.0 for t in tasks]
    fig = Figure(figsize=(1.0 + 0.9 * len(tasks), 3.4))
    ax = fig.subplots()
    ax.bar(range(len(tasks)), means, yerr=errs, capsize=3, color="tab:green")
    ax.set_xticks(range(len(tasks)), [task_label(t) for t in tasks])
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_ylabel("α = SimAM_Δ(LCGD, GD)")
    ax.set_title("α per task (mean ± std over runs)")
    fig.tight_layout()
    return _save(fig, path)


def plot_grad_norms(gd: Cell | None, lcgd: Cell | None, path: Path) -> Path:
    """Steps × layers heatmaps: GD on a linear colour scale, LCGD on a log scale (as in Fig. 4)."""
    pairs = [(c, m) for c, m in ((gd, "gd"), (lcgd, "lcgd")) if c is not None]
    keys = sorted({k for c, _ in pairs for k in c.grad_norms})
    fig = Figure(figsize=(5.2 * len(pairs), 3.8 * len(keys)))
    axes = np.asarray(fig.subplots(len(keys), len(pairs), squeeze=False))
    for row, key in enumerate(keys):
        for col, (cell, method) in enumerate(pairs):
            ax = axes[row, col]
            data = cell.grad_norms.get(key)
            if data is None:
                ax.set_axis_off()
                continue
            positive = data[data > 0]
            log = method == "lcgd" and positive.size > 0
            norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if log else None
            shown = np.where(data > 0, data, np.nan) if log else data
            image = ax.imshow(shown, aspect="auto", origin="upper", interpolation="nearest", norm=norm, cmap="viridis")
            fig.colorbar(image, ax=ax)
            scale = "log" if log else "linear"
            ax.set_title(f"{METHOD_LABELS[method]} {key} grad norm ({scale}), seed {cell.seed} perm {cell.perm}",
                         fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Per-layer gradient norms, {task_label((gd or lcgd).task)}")
    fig.tight_layout()
    return _save(fig, path)


def grad_norm_cells(cells: Sequence[Cell], task: str | None) -> tuple[str | None, Cell | None, Cell | None]:
    """The task to show (the requested one if it has grad norms, else the first that does) and the
    first run's GD and LCGD cells with grad norms (trained variant)."""
    with_norms = [c for c in select(cells, variant="trained") if c.grad_norms is not None]
    tasks = order_tasks(c.task for c in with_norms)
    if not tasks:
        return None, None, None
    chosen = task if task in tasks else tasks[0]
    pick = {m: next(iter(sorted(select(with_norms, task=chosen, method=m), key=lambda c: c.run)), None)
            for m in METHODS}
    return chosen, pick["gd"], pick["lcgd"]


# ----------------------------------------------------------------------------- report


def _header(config: Mapping[str, Any], cells: Sequence[Cell], run_dir: Path) -> list[str]:
    """Model and n_eval from run.json (else from the cells), and what the run contains."""
    models = sorted({c.model for c in cells if c.model})
    n_evals = sorted({c.n_eval for c in cells if c.n_eval is not None})
    model = config.get("model", ", ".join(models) or MISSING)
    n_eval = config.get("n_eval", ", ".join(map(str, n_evals)) or MISSING)
    lines = [
        f"# jaxicl report: {run_dir.name}",
        "",
        f"- model: `{model}` · n_eval: {n_eval}",
        f"- cells used: {len(cells)} · tasks: {', '.join(order_tasks(c.task for c in cells)) or MISSING}"
        f" · variants: {', '.join(order_variants(c.variant for c in cells)) or MISSING}",
    ]
    if len(models) > 1:
        lines.append(f"- **warning**: cells come from several models: {', '.join(models)}")
    if len(n_evals) > 1:
        lines.append(f"- note: cells use different n_eval: {', '.join(map(str, n_evals))}")
    return lines


def _problems_section(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return ["## Problems", "", "None: every input file was used."]
    lines = ["## Problems", "", f"{len(problems)} file(s) skipped; none of their numbers appear anywhere "
             "in this report:", ""]
    lines += [f"- `{p.path}`: {p.reason}" for p in problems]
    return lines


def _runs_line(cells: Sequence[Cell], tasks: Sequence[str]) -> str:
    trained = select(cells, variant="trained")
    parts = [f"{task_label(t)} {'/'.join(str(len(select(trained, task=t, method=m))) for m in METHODS)}"
             for t in tasks]
    return "Runs per task (GD/LCGD): " + ", ".join(parts) + "."


def _table2_section(cells: Sequence[Cell], tasks: Sequence[str]) -> tuple[list[str], dict]:
    stats = table2_stats(cells, tasks)
    lines = ["## Table 2: GD vs LCGD (trained model)", ""]
    if not select(cells, variant="trained"):
        return lines + ["No trained-variant cells."], stats
    lines += render_table2(stats, tasks)
    lines += ["", _runs_line(cells, tasks),
              "Mean ± std over runs (ddof=1; — = one run). Bold: the higher of GD/LCGD. Average: mean over "
              "tasks of the task means (* = not every task has data). SimAOU is unnormalized; SimAOU_norm "
              "is Dai's SimAOU.", "", "Paper (P4 Table 2, fairseq 1.3B, 3 runs):", ""]
    lines += render_paper_table2()
    return lines, stats


def _table1_section(cells: Sequence[Cell], tasks: Sequence[str]) -> tuple[list[str], dict]:
    stats = table1_stats(cells, tasks)
    lines = ["## Table 1: untrained baselines (GD)", ""]
    if not stats:
        return lines + ["No GD cells."], stats
    lines += render_table1(stats, tasks)
    lines += ["", "Rows only for the variants in this run. Bold: highest variant; underlined: top two within "
              "0.01 (paper's rule). SimAOU_norm is extra: the paper's untrained rows may be normalized "
              "(paper-spec §10.3).", "", "Paper (P4 Table 1; ⚑ = CB cell reconstructed from garbled text, "
              "paper-spec §9.2):", ""]
    return lines + render_paper_table1(), stats


def _accuracy_section(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str]) -> list[str]:
    lines = ["## Accuracy", "", "Percent, mean ± std over runs; FT = finetuned zero-shot; Rec2FTP over the "
             "runs where FT fixed at least one example.", ""]
    for variant in variants:
        lines += [f"### {variant_label(variant)}", ""] + render_accuracy(cells, variant, tasks) + [""]
    return lines + ["Reference (the paper's v4 accuracies are unknown; paper-spec §9.4):", ""] + render_dai_accuracy()


def _figures_section(cells: Sequence[Cell], tasks: Sequence[str], out: Path, grad_task: str | None) -> list[str]:
    trained = select(cells, variant="trained")
    lines = ["## Figures", ""]
    if not trained:
        return lines + ["No trained-variant cells to plot."]
    plot_per_layer(trained, tasks, out / "fig3_per_layer.png",
                   "Per-layer, mean over tasks and seeds (trained)", band=False)
    plot_vs_paper(trained, tasks, out / "fig3_vs_paper.png")
    lines += ["### Per layer (Fig. 3)", "", "![per-layer](fig3_per_layer.png)", "",
              "![per-layer vs paper](fig3_vs_paper.png)", ""]
    for t in tasks:
        name = f"per_layer_{t}.png"
        plot_per_layer(select(trained, task=t), [t], out / name, f"{task_label(t)}: mean ± std over runs", band=True)
        lines.append(f"![{t}]({name})")
    alphas = {t: s for t, s in alpha_stats(cells, tasks).items() if s is not None}
    lines += ["", "### α (Fig. 2)", ""]
    if alphas:
        plot_alpha(alphas, out / "fig2_alpha.png")
        lines += md_table(["", *map(task_label, alphas)], [["α", *(fmt_stat(s) for s in alphas.values())]])
        lines += ["", "![alpha](fig2_alpha.png)"]
    else:
        lines.append("No cell carries α (needs GD and LCGD on the same run).")
    chosen, gd, lcgd = grad_norm_cells(cells, grad_task)
    lines += ["", "### Gradient norms (Fig. 4)", ""]
    if chosen is None:
        return lines + ["No cell carries grad_norms."]
    name = f"fig4_grad_norms_{chosen}.png"
    plot_grad_norms(gd, lcgd, out / name)
    return lines + [f"Task {task_label(chosen)}, first run with grad norms; GD linear, LCGD log colour scale.",
                    "", f"![grad norms]({name})"]


def load_lr_selection(run_dir: Path) -> tuple[dict | None, list[Problem]]:
    """RUN_DIR/lr_selection.json (`jaxicl tune`), or None when the run has none."""
    path = run_dir / "lr_selection.json"
    if not path.exists():
        return None, []
    try:
        data = json.loads(path.read_text())
        for name, entry in data["tasks"].items():
            for key in ("rates", "chosen", "zero_shot_accuracy", "selected_on"):
                _need(entry, key, f"task {name}")
        return data, []
    except (OSError, ValueError, KeyError, TypeError, CellError) as e:
        return None, [Problem("lr_selection.json", f"unreadable, left out: {e}")]


def lr_selection_rows(selection: Mapping[str, Any]) -> list[list]:
    """Tidy rows: task, rate, run index (or "mean"), selection accuracy, final demonstration loss."""
    rows = []
    for task, entry in selection["tasks"].items():
        for rate, v in entry["rates"].items():
            for i, (acc, loss) in enumerate(zip(v["accuracy"], v["final_loss"])):
                rows.append([task, float(rate), i, acc, loss])
            rows.append([task, float(rate), "mean", v["mean_accuracy"], v["mean_final_loss"]])  # None: diverged
    return rows


def plot_lr_selection(selection: Mapping[str, Any], path: Path) -> Path:
    """Selection accuracy against the learning rate, per task; the paper's and the chosen rate marked."""
    tasks = list(selection["tasks"])
    fig = Figure(figsize=(3.2 * len(tasks), 3.0))
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        entry = selection["tasks"][task]
        rates = sorted(entry["rates"], key=float)
        finite = [r for r in rates if entry["rates"][r]["mean_accuracy"] is not None]
        ax.plot([float(r) for r in finite], [entry["rates"][r]["mean_accuracy"] for r in finite], "o-", ms=3,
                label="finetuned (mean over runs)")  # fmt: skip
        diverged = [float(r) for r in rates if entry["rates"][r]["mean_accuracy"] is None]
        if diverged:  # drawn on the zero-shot line, as crosses: excluded from the choice
            ax.plot(diverged, [entry["zero_shot_accuracy"]] * len(diverged), "x", color="tab:red", label="diverged")
        ax.axhline(entry["zero_shot_accuracy"], color="gray", ls=":", label="zero-shot")
        if entry.get("paper_lr"):
            ax.axvline(entry["paper_lr"], color="tab:red", ls="--", label="paper's rate")
        ax.plot([entry["chosen"]["lr"]], [entry["chosen"]["accuracy"]], "*", color="tab:green", ms=12, label="chosen")
        ax.set_xscale("log")
        ax.set_title(task_label(task))
        ax.set_xlabel("learning rate")
    axes[0][0].set_ylabel("selection accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _rates_tried(rates: Mapping[str, Mapping]) -> str:
    diverged = [r for r, v in rates.items() if v["mean_accuracy"] is None]
    return f"{len(rates)}" + (f" ({len(diverged)} diverged: {', '.join(diverged)})" if diverged else "")


def _lr_selection_section(selection: Mapping[str, Any] | None, out: Path, plots: bool) -> list[str]:
    lines = ["## Learning-rate selection (`jaxicl tune`)", ""]
    if selection is None:
        return lines + ["None in this run directory (the rates are the paper's unless the cells say otherwise)."]
    rows = []
    for task, entry in selection["tasks"].items():
        chosen = entry["chosen"]
        rows.append([task_label(task), fmt_num(entry.get("paper_lr"), 4), f"{chosen['lr']:g}",
                     fmt_num(chosen["accuracy"], 3), fmt_num(entry["zero_shot_accuracy"], 3),
                     "yes" if chosen["finetuning_helps"] else "**no: finetuning does not help here**",
                     _rates_tried(entry["rates"])])  # fmt: skip
    lines += md_table(["task", "paper's rate", "chosen rate", "selection accuracy", "zero-shot", "beats zero-shot",
                       "rates tried"], rows)  # fmt: skip
    first = next(iter(selection["tasks"].values()))
    lines += ["", f"Selected on the {first['selected_on']}; {first['search']} search; method "
              f"{first['method'].upper()}; engine: {selection.get('engine', '?')}."]
    if plots:
        plot_lr_selection(selection, out / "lr_selection.png")
        lines += ["", "![learning-rate selection](lr_selection.png)"]
    write_csv(out / "lr_selection.csv", ["task", "lr", "run", "selection_accuracy", "final_loss"],
              lr_selection_rows(selection))
    return lines + ["", "- [lr_selection.csv](lr_selection.csv)"]


def _write_csvs(cells: Sequence[Cell], tasks: Sequence[str], variants: Sequence[str], t2: dict, t1: dict,
                times: list[list], out: Path) -> list[str]:
    """Tidy CSVs (one number per row, full precision) of everything the tables and plots show."""
    stat_header = ["n", "mean", "std"]
    paper = ["paper_mean", "paper_std"]
    files = {
        "table2.csv": (["metric", "method", "task", *stat_header, *paper], table2_csv_rows(t2, tasks)),
        "table1.csv": (["metric", "variant", "task", *stat_header, *paper], table1_csv_rows(t1, tasks)),
        "accuracy.csv": (["variant", "task", "quantity", *stat_header], accuracy_csv_rows(cells, variants, tasks)),
        "random_baselines.csv": (["variant", "baseline", "task", *stat_header, "paper_mean"],
                                 random_csv_rows(cells, tasks, variants)),
        "alpha.csv": (["task", *stat_header], [[t, *stat_cols(s)] for t, s in alpha_stats(cells, tasks).items()
                                               if s is not None]),
        "per_layer.csv": (["variant", "method", "task", "metric", "layer", *stat_header],
                          per_layer_csv_rows(cells, tasks, variants)),
        "cells.csv": (["path", "task", "variant", "method", "seed", "perm", "k_icl", *ACCURACY_KEYS,
                       *PER_LAYER_KEYS, "rec2ftp", "alpha"],
                      [[c.path, c.task, c.variant, c.method, c.seed, c.perm, c.k_icl,
                        *(c.accuracy[k] for k in ACCURACY_KEYS), *(c.value(k) for k in PER_LAYER_KEYS),
                        c.scalar.get("rec2ftp"), c.alpha] for c in cells]),
        "time_per_stage.csv": (["variant", "stage", "groups", "seconds"], times),
    }
    for name, (header, rows) in files.items():
        write_csv(out / name, header, rows)
    return list(files)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 grad_norm_task: str | None = DEFAULT_GRAD_TASK, plots: bool = True) -> Path:
    """Write report.md, CSVs and PNGs for a run directory; returns the path of report.md.

    out_dir defaults to RUN_DIR/report. grad_norm_task picks Fig. 4's task (falls back to the
    first task with grad norms). plots=False skips the PNGs (seconds each), e.g. to glance at
    tables of a run in progress."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    config, config_problems = load_run_config(run_dir)
    cells, problems = load_cells(run_dir)
    stage_seconds, seconds_problems = load_stage_seconds(run_dir)
    timing, timing_problems = load_timing(run_dir)
    totals = stage_totals(stage_seconds)
    tasks = order_tasks(c.task for c in cells)
    variants = order_variants(c.variant for c in cells)
    t2_lines, t2 = _table2_section(cells, tasks)
    t1_lines, t1 = _table1_section(cells, tasks)
    csv_files = _write_csvs(cells, tasks, variants, t2, t1, time_csv_rows(totals, timing), out)
    problems = config_problems + problems + seconds_problems + timing_problems
    lines = _header(config, cells, run_dir) + [""] + _problems_section(problems) + [""]
    lines += t2_lines + [""] + t1_lines + [""] + _accuracy_section(cells, tasks, variants) + [""]
    lines += ["## Random baselines", "", "Random SimAOU (normalized mode; U[0,1) is the authors' baseline, "
              "Gaussian the zero-mean one), mean ± std over runs.", ""]
    lines += render_random(cells, tasks, variants) + [""] + _time_section(totals, timing) + [""]
    lines += (_figures_section(cells, tasks, out, grad_norm_task) if plots
              else ["## Figures", "", "Not drawn (plots=False)."]) + [""]
    selection, selection_problems = load_lr_selection(run_dir)
    if selection_problems:
        lines += [f"- `{p.path}`: {p.reason}" for p in selection_problems] + [""]
    lines += _lr_selection_section(selection, out, plots) + [""]
    lines += ["## Files", ""] + [f"- [{name}]({name})" for name in csv_files]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
