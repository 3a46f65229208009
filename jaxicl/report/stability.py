"""Which Tables 1-2 entries rest on cells that float rounding alone moves.

A cell checked with `jaxicl run --stability-check` carries, per Tables 1-2 metric, how far its
scalar moved when it was finetuned again under other rounding. An entry whose cells include one
that moved by more than `UNSTABLE` is marked with `MARK`; the tables' CSVs count such cells, and
the uncertainty section counts them per variant, method and learning rate. A run without checked
cells gets none of this, and its report is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxicl.analyses.stability import UNSTABLE
from jaxicl.report.cells import Cell
from jaxicl.report.fmt import md_table, variant_label
from jaxicl.report.names import METHOD_LABELS, METRIC_LABELS, TABLE_METRICS

MARK = "†"
Key = tuple[str, str, str, str]  # (metric, variant, method, task)


def stability_counts(cells: Sequence[Cell]) -> dict[Key, tuple[int, int]]:
    """(unstable, checked) cells of each (metric, variant, method, task); empty when none was checked."""
    counts: dict[Key, tuple[int, int]] = {}
    for cell in cells:
        if cell.stability is None:
            continue
        for metric in TABLE_METRICS:
            key = (metric, cell.variant, cell.method, cell.task)
            unstable, checked = counts.get(key, (0, 0))
            counts[key] = (unstable + (cell.stability[metric] > UNSTABLE), checked + 1)
    return counts


def mark(counts: Mapping[Key, tuple[int, int]] | None, key: Key) -> str:
    """MARK after a table entry that has an unstable cell."""
    return MARK if (counts or {}).get(key, (0, 0))[0] else ""


def csv_columns(counts: Mapping[Key, tuple[int, int]] | None, key: Key) -> list[int | None]:
    """[unstable_cells, checked_cells] of a table CSV row ([] when the run checked no cell)."""
    if not counts:
        return []
    unstable, checked = counts.get(key, (0, 0))
    return [unstable, checked] if checked else [None, None]


CSV_HEADER = ["unstable_cells", "checked_cells"]


def table_note(counts: dict[Key, tuple[int, int]]) -> list[str]:
    """The line under Table 1 or 2 that explains the mark."""
    if not counts:
        return []
    if not any(unstable for unstable, _ in counts.values()):
        checked = max(n for _, n in counts.values())
        return [f"No entry moved by more than {UNSTABLE} when its cells were finetuned again with other float "
                f"rounding (`--stability-check`, up to {checked} cells an entry); see the uncertainty section."]
    return [f"{MARK}: at least one of the entry's cells moved by more than {UNSTABLE} when finetuned again with "
            "other float rounding (`--stability-check`); see the uncertainty section."]


def stability_lines(cells: Sequence[Cell]) -> list[str]:
    """How many checked cells are unstable, per variant, method and learning rate, and how far the
    largest move of each metric went (for the uncertainty section)."""
    checked = [c for c in cells if c.stability is not None]
    if not checked:
        return []
    groups: dict[tuple[str, str, float | None], list[Cell]] = {}
    for cell in checked:
        groups.setdefault((cell.variant, cell.method, cell.lr), []).append(cell)
    header = ["variant", "method", "lr", "checked", f"unstable (> {UNSTABLE})",
              *(f"largest Δ {METRIC_LABELS[m]}" for m in TABLE_METRICS)]  # fmt: skip
    rows = []
    for (variant, method, lr), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        unstable = sum(max(c.stability.values()) > UNSTABLE for c in group)
        rows.append([variant_label(variant), METHOD_LABELS[method], "—" if lr is None else f"{lr:g}", str(len(group)),
                     str(unstable), *(f"{max(c.stability[m] for c in group):.1e}" for m in TABLE_METRICS)])  # fmt: skip
    n_unstable = sum(max(c.stability.values()) > UNSTABLE for c in checked)
    return ["", f"Numerical stability (`--stability-check`): {len(checked)} of {len(cells)} cells were finetuned "
            f"again with the demonstrations padded to another length (the same maths, other float rounding); "
            f"{n_unstable} moved by more than {UNSTABLE} on a Tables 1-2 metric (marked {MARK} there).",
            ""] + md_table(header, rows)  # fmt: skip
