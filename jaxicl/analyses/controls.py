"""Task-specificity controls: is the ICL-vs-GD similarity about the task at all?

Each control is one more kind of cell of a run (`jaxicl run --controls ...`), resumable like the
others, written under RUN_DIR/controls/<control>/ so it can never mix into Table 1 / Table 2:

- "cross-task": the ICL updates of task A (A's queries, A's demonstrations in the prompt) against
  GD updates from the demonstrations of another task B, the finetuned model scored with A's
  template and label words. B is the next task of the grid by default (`--cross-task A:B`).
- "shuffled-gd": GD on A's demonstrations with their labels permuted (seeded), against real ICL.
- "shuffled-icl": ICL with the permuted labels, against GD with the permuted labels.

GD only: the question is whether real GD beats the controls (the report's controls table).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxicl.errors import DataError, InputError

CONTROLS = ("cross-task", "shuffled-gd", "shuffled-icl")
SHUFFLE_SEED = 20240516  # mixed with the run's (seed, perm): each run gets its own permutation
MAX_SHUFFLE_DRAWS = 1000


def check_controls(controls: Sequence[str], tasks: Sequence[str], cross_task: Sequence[tuple[str, str]] | None,
                   methods: Sequence[str]) -> None:
    """Refuse an unknown control, a cross-task partner outside the grid, or controls without GD."""
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise InputError(f"unknown control(s) {unknown}; known: {', '.join(CONTROLS)}")
    if controls and "gd" not in methods:
        raise InputError("the controls compare against GD: add gd to --methods")
    for a, b in cross_task or ():
        for name in (a, b):
            if name not in tasks:
                raise InputError(f"--cross-task {a}:{b}: task {name!r} is not in the grid ({', '.join(tasks)})")
        if a == b:
            raise InputError(f"--cross-task {a}:{b}: a task cannot be its own cross-task partner")
    if "cross-task" in controls and len(tasks) < 2:
        raise InputError("the cross-task control needs at least two tasks in the grid")


def partner(task: str, tasks: Sequence[str], cross_task: Sequence[tuple[str, str]] | None) -> str:
    """Task B whose demonstrations finetune the cross-task control of task A: the configured one,
    else the next task of the grid (the last task's partner is the first)."""
    given = dict(cross_task or ())
    if task in given:
        return given[task]
    i = list(tasks).index(task)
    return tasks[(i + 1) % len(tasks)]


def shuffled_labels(labels: Sequence[int], seed: int, perm: int) -> tuple[int, ...]:
    """A seeded permutation of the demonstrations' labels that differs from them on at least one
    demonstration (redrawn until it does); an error when every label is the same."""
    original = np.asarray(labels)
    if len(set(original.tolist())) < 2:
        raise DataError(f"cannot shuffle the labels of demonstrations that all have label {original[0]}")
    rng = np.random.default_rng([SHUFFLE_SEED, seed, perm])
    for _ in range(MAX_SHUFFLE_DRAWS):
        shuffled = rng.permutation(original)
        if np.any(shuffled != original):
            return tuple(int(y) for y in shuffled)
    raise DataError(f"no permutation of the labels differed from them in {MAX_SHUFFLE_DRAWS} draws")
