"""How report.md and the CSVs spell things: numbers, mean ± std, emphasis, markdown tables, labels,
and CSV files (full precision, fixed spelling, so that they diff cleanly)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxicl.io.atomic import write_bytes_atomic
from jaxicl.report.names import TASK_LABELS, VARIANT_LABELS

if TYPE_CHECKING:
    from jaxicl.report.stats import Stat

MISSING = "n/a"
NO_STD = "—"


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


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
    """A tidy CSV, written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([v if isinstance(v, str) else csv_num(v) for v in row])
    write_bytes_atomic(path, text.getvalue().encode("utf-8"))


def stat_cols(stat: Stat | None) -> list[Any]:
    return [None, None, None] if stat is None else [stat.n, stat.mean, stat.std]
