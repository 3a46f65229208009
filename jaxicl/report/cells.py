"""Reading and validating the files of a run directory, so that nothing malformed reaches a number.

Input: RUN_DIR/run.json (the run's config, opaque here) and RUN_DIR/cells/**/*.json, one results
file per (task, variant, method, seed, perm) in the schema of docs/experiments.md#the-grid-jaxicl-run; for the time per stage, the
runner's RUN_DIR/seconds/**/*.json and RUN_DIR/timing.json when present; `jaxicl tune`'s
RUN_DIR/lr_selection.json when present.

- A cell file that is not valid JSON, lacks a required key, holds a malformed or non-finite value,
  disagrees with its path, duplicates another cell, or has another layer count than the run's
  other cells is listed under "Problems" and excluded from every number.
- A seconds file or timing.json that is not valid JSON, holds an unknown stage or a value that is
  not a finite number ≥ 0, or (seconds) lies off the runner's path layout is listed under
  "Problems" too and left out of the time per stage.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxicl.engine.metrics import PER_EXAMPLE_METRICS, PER_LAYER_KEYS, TOKENWISE_KEY
from jaxicl.report.names import ACCURACY_KEYS, METHODS, STAGE_KEYS, TABLE_METRICS, TIMING_KEYS
from jaxicl.runner.layout import CELL_FILE, CELLS, CONTROLS, ORDER_DIR, SECONDS, SELECTION_FILE

# ----------------------------------------------------------------------------- results cells

CELL_METRICS = (*PER_LAYER_KEYS, TOKENWISE_KEY)  # the last only in cells of a --token-wise run


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
    per_example: Mapping[str, np.ndarray] = field(default_factory=dict)  # metric -> [n_eval], when kept
    lr: float | None = None
    stability: Mapping[str, float] | None = None  # metric -> |Δ scalar| of a second finetuning, when checked

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
    out = {key: _num_list(raw[key], f"per_layer.{key}") for key in CELL_METRICS if key in raw}
    lengths = {key: len(v) for key, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise CellError(f"per_layer lists differ in length: {lengths}")
    return out


def _parse_scalar(obj: Mapping[str, Any]) -> dict[str, float | None]:
    raw = _dict_field(obj, "scalar")
    for key in TABLE_METRICS:
        _need(raw, key, "scalar.")
    out: dict[str, float | None] = {}
    for key in (*CELL_METRICS, "rec2ftp"):
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


def _parse_per_example(obj: Mapping[str, Any], n_eval: int | None) -> dict[str, np.ndarray]:
    """{metric: [n_eval] values} (cells written before it existed have none: {})."""
    raw = obj.get("per_example")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CellError("'per_example' must be an object")
    out = {key: np.asarray(_num_list(raw[key], f"per_example.{key}")) for key in PER_EXAMPLE_METRICS if key in raw}
    lengths = {key: len(v) for key, v in out.items()}
    if len(set(lengths.values())) > 1 or (n_eval is not None and any(n != n_eval for n in lengths.values())):
        raise CellError(f"per_example lists must each have n_eval = {n_eval} values, got {lengths}")
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
        per_example=_checked_per_example(obj),
        lr=_float_field(obj, "lr"),
        stability=_parse_stability(obj),
    )


def _float_field(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CellError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _parse_stability(obj: Mapping[str, Any]) -> dict[str, float] | None:
    """The stability check's |Δ| of each Tables 1-2 scalar (`jaxicl run --stability-check`), if the cell has one."""
    record = obj.get("stability")
    if record is None:
        return None
    scalar = record.get("scalar") if isinstance(record, dict) else None
    if not isinstance(scalar, dict):
        raise CellError("stability must hold a 'scalar' object")
    out = {}
    for key in TABLE_METRICS:
        value = scalar.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
            raise CellError(f"stability.scalar.{key} must be a finite number >= 0, got {value!r}")
        out[key] = float(value)
    return out


def _checked_per_example(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The per-example values, which must average to the cell's own scalar (the bootstrap resamples
    them in its place)."""
    out = _parse_per_example(obj, _int_field(obj, "n_eval", required=False))
    scalar = _parse_scalar(obj)
    for key, values in out.items():
        want = scalar.get(key)
        if want is not None and abs(float(np.mean(values)) - want) > 1e-9 * max(1.0, abs(want)):
            raise CellError(f"per_example.{key} averages to {np.mean(values)!r}, not scalar.{key} = {want!r}")
    return out


def _check_path(cell: Cell, root: tuple[str, ...] = (CELLS,)) -> None:
    """<root>/<task>/<variant>/<method>-seed<s>-perm<p>.json must agree with the file's content."""
    parts = Path(cell.path).parts
    at_root = len(parts) == len(root) + 3 and parts[: len(root)] == root
    match = CELL_FILE.match(parts[-1]) if at_root else None
    if match is None:
        return
    expected = {"task": parts[-3], "variant": parts[-2], "method": match["method"],
                "seed": int(match["seed"]), "perm": int(match["perm"])}
    wrong = [f"{k}={getattr(cell, k)!r} but path says {v!r}" for k, v in expected.items() if getattr(cell, k) != v]
    if wrong:
        raise CellError("content disagrees with path: " + "; ".join(wrong))


def _read_cell(path: Path, rel: str, root: tuple[str, ...] = (CELLS,)) -> Cell:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CellError(f"not valid JSON ({type(e).__name__}: {e})") from e
    cell = parse_cell(obj, rel)
    _check_path(cell, root)
    if root[0] == "controls" and obj.get("control") != root[1]:
        raise CellError(f"a control cell under controls/{root[1]}/ says control={obj.get('control')!r}")
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


def load_cells(run_dir: str | Path, root: tuple[str, ...] = (CELLS,)) -> tuple[list[Cell], list[Problem]]:
    """Every usable cell under RUN_DIR/cells (any depth), sorted by path, and the files left out.
    root: another tree of cells, e.g. ("controls", "shuffled-gd") (`load_controls`).

    Nothing that fails validation is returned, so no table can average a broken file in."""
    run_dir = Path(run_dir)
    cells: list[Cell] = []
    problems: list[Problem] = []
    seen: dict[tuple, str] = {}
    for path in sorted(run_dir.joinpath(*root).glob("**/*.json"), key=lambda p: p.relative_to(run_dir).as_posix()):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_file():
            continue
        try:
            cell = _read_cell(path, rel, root)
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


def load_cells_csv(path: str | Path) -> list[Cell]:
    """Cells rebuilt from a report's cells.csv (one layer-mean per metric, no per-layer lists and no
    per-example values): for a run whose cell files are not at hand, e.g. the committed reproduction."""
    def num(text: str | None) -> float | None:
        return float(text) if text not in ("", None) else None

    cells = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            scalar = {m: v for m in CELL_METRICS if (v := num(row.get(m))) is not None}
            cells.append(Cell(
                path=row["path"], task=row["task"], variant=row["variant"], method=row["method"],
                seed=int(row["seed"]), perm=int(row["perm"]), model=None, n_eval=None,
                k_icl=int(row["k_icl"]) if row.get("k_icl") else None,
                accuracy={k: float(row[k]) for k in ACCURACY_KEYS},
                per_layer={m: (v,) for m, v in scalar.items()},
                scalar=scalar | {"rec2ftp": num(row.get("rec2ftp"))}, alpha=num(row.get("alpha")),
                alpha_per_layer=None, grad_norms=None,
            ))  # fmt: skip
    return cells


def load_controls(run_dir: str | Path) -> tuple[dict[str, list[Cell]], list[Problem]]:
    """control → its usable cells (RUN_DIR/controls/<control>/..., `jaxicl run --controls`), kept
    apart from `load_cells` so no control can enter Table 1 or Table 2."""
    run_dir = Path(run_dir)
    out, problems = {}, []
    root = run_dir / CONTROLS
    for control in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        cells, found = load_cells(run_dir, ("controls", control))
        problems += found
        if cells:
            out[control] = cells
    return out, problems


@dataclass(frozen=True)
class OrderCell:
    """One run's order sensitivity (`jaxicl run --order-permutations P`): each method's mean std
    across the P orders of the predicted class distribution."""

    path: str
    task: str
    variant: str
    seed: int
    perm: int
    n_orders: int
    mean_std: Mapping[str, float]  # "icl", "gd", "lcgd" → mean over examples of the per-example std


def load_order(run_dir: str | Path) -> tuple[list[OrderCell], list[Problem]]:
    """The order cells under RUN_DIR/order/<task>/<variant>/, and the files left out."""
    run_dir = Path(run_dir)
    cells, problems = [], []
    for path in sorted((run_dir / ORDER_DIR).glob("*/*/*.json")):
        rel = path.relative_to(run_dir).as_posix()
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            methods = _dict_field(obj, "methods")
            if "icl" not in methods or len(methods) < 2:
                raise CellError("'methods' must hold icl and at least one finetuning method")
            mean_std = {}
            for name, entry in methods.items():
                value = _need(entry, "mean_std", f"methods.{name}.")
                if not _is_num(value) or value < 0:
                    raise CellError(f"methods.{name}.mean_std must be a finite number >= 0, got {value!r}")
                mean_std[name] = float(value)
            orders = _need(obj, "permutations")
            if not isinstance(orders, list) or len(orders) < 2:
                raise CellError("'permutations' must list at least two orders")
            cells.append(OrderCell(rel, _str_field(obj, "task"), _str_field(obj, "variant"), _int_field(obj, "seed"),
                                   _int_field(obj, "perm"), len(orders), mean_std))  # fmt: skip
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, CellError) as e:
            problems.append(Problem(rel, f"order cell left out: {e}"))
    return cells, problems


# ----------------------------------------------------------------------------- run.json


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


# ----------------------------------------------------------------------------- time per stage

Group = tuple[str, str, int, int]  # (task, variant, seed, perm)


def _read_seconds(path: Path, rel: str) -> tuple[Group, dict[str, float]]:
    """seconds/<task>/<variant>/<method>-seed<S>-perm<P>.json → its group and stopwatch dict."""
    parts = Path(rel).parts
    match = CELL_FILE.match(parts[-1]) if len(parts) == 4 and parts[0] == SECONDS else None
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
    for path in sorted((run_dir / SECONDS).glob("**/*.json"), key=lambda p: p.relative_to(run_dir).as_posix()):
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


# ----------------------------------------------------------------------------- learning-rate selection


def load_lr_selection(run_dir: Path) -> tuple[dict | None, list[Problem]]:
    """RUN_DIR/lr_selection.json (`jaxicl tune`), or None when the run has none."""
    path = run_dir / SELECTION_FILE
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
