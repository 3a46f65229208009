"""The arguments of `jaxicl run`, `tune` and `eval`, checked before a model loads or a file is
written.

Each check raises an InputError (a setting) or DataError (a task or its files) that names the
argument and the values it may take, so a refused command costs seconds and leaves nothing behind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from jaxicl.data.tasks import N_PERM_DRAWS, Task, check_split_file, get_task, split_path
from jaxicl.engine.finetune import METHODS
from jaxicl.engine.transforms import VARIANTS
from jaxicl.errors import InputError, ModelNotFoundError
from jaxicl.io import registry


def check_model(model: str) -> None:
    """A registry name, hf:org/name[@rev] (fetched at load) or an existing path."""
    if model in registry.REGISTRY or model.startswith(registry.HUB_PREFIX) or Path(model).expanduser().exists():
        return
    raise ModelNotFoundError(f"--model {model!r} is neither a registry name ({', '.join(registry.REGISTRY)}), "
                             "'hf:org/name[@revision]', nor an existing .gguf file or Hugging Face directory")


def check_tasks(names: Sequence[str]) -> list[Task]:
    """The tasks named (DataError for an unknown one, listing the known), none twice."""
    if not names:
        raise InputError("--tasks names no task; known: sst2, sst5, mr, subj, agnews, cb, or a JSON spec file")
    tasks = [get_task(name) for name in names]
    seen = [t.name for t in tasks]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise InputError(f"--tasks names {', '.join(repeated)} more than once")
    return tasks


def check_choices(flag: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    """A non-empty list of allowed values, none twice."""
    if not values:
        raise InputError(f"{flag} is empty; choose from {', '.join(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InputError(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise InputError(f"{flag} repeats a value: {', '.join(values)}")


def check_methods(methods: Sequence[str]) -> None:
    check_choices("--methods", methods, tuple(METHODS))


def check_variants(variants: Sequence[str]) -> None:
    check_choices("--variants", variants, VARIANTS)


def check_count(flag: str, value, minimum: int = 1, allow_none: bool = True) -> None:
    """An integer >= minimum (or None where that means "all" or "the default")."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{flag} must be an integer >= {minimum}, got {value!r}")


def check_runs(runs: Sequence[tuple[int, int]] | None, n_runs: int | None) -> None:
    """(seed, perm) pairs: seeds >= 0 (a shuffle seed), perms in 0..N_PERM_DRAWS-1 (the authors'
    permutation draws); --n-runs >= 1."""
    check_count("--n-runs", n_runs)
    for seed, perm in runs or ():
        check_count("--seeds", seed, minimum=0, allow_none=False)
        if isinstance(perm, bool) or not isinstance(perm, int) or not 0 <= perm < N_PERM_DRAWS:
            raise InputError(f"--perms: perm must be in 0..{N_PERM_DRAWS - 1} (the paper's permutation draws), "
                             f"got {perm!r} for seed {seed}")  # fmt: skip


def check_batch_size(value) -> None:
    if value != "auto":
        check_count("--batch-size (or 'auto')", value, allow_none=False)


def check_rate(rate, where: str) -> None:
    """A positive finite learning rate."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"learning rate {rate!r} {where} is not a positive finite number")


def check_model_and_window(model: str, max_len: int | None, window: int | None = None) -> None:
    """The model exists, and --max-len is within its context window: `window` when the model is
    loaded already, else read from the checkpoint's config alone (a Hub model's needs the network)."""
    check_count("--max-len", max_len, minimum=2)
    if window is not None:  # a loaded model: its name is only a label
        if max_len is not None and max_len > window:
            raise InputError(f"--max-len {max_len} exceeds {model}'s context window of {window} tokens")
        return
    check_model(model)
    if max_len is None or model.startswith(registry.HUB_PREFIX):
        return
    from jaxicl.api import read_config

    window = read_config(model).max_positions
    if max_len > window:
        raise InputError(f"--max-len {max_len} exceeds {model}'s context window of {window} tokens")


def check_data(tasks: Sequence[Task], data_dir: str | None, k: int | None = None) -> None:
    """Each task's demonstration and eval files exist (where they are local, not the Hub's), and
    its demonstration split has at least k rows."""
    for task in tasks:
        for split in (task.demo_split, task.eval_split):
            path = split_path(task, split, data_dir)
            if path is None:  # from the Hub at load time
                continue
            check_split_file(path, task, split)
            if k is not None and split == task.demo_split:
                with path.open("rb") as f:
                    rows = sum(1 for line in f if line.strip())
                if k > rows:
                    raise InputError(f"--k {k} exceeds the {rows} rows of {task.name}'s {split} split ({path})")


def parse_checkpoints(text: str) -> tuple[str, ...]:
    """`REV1,REV2,...`, or `@FILE` with one revision per line (blank lines and # comments skipped)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise InputError(f"--checkpoints {text}: no such file {path}")
        items = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    else:
        items = [item.strip() for item in text.split(",")]
    revisions = tuple(item for item in items if item)
    if not revisions:
        raise InputError(f"--checkpoints {text!r} names no revision")
    if len(set(revisions)) != len(revisions):
        raise InputError(f"--checkpoints repeats a revision: {list(revisions)}")
    for rev in revisions:
        if "/" in rev or rev in (".", ".."):
            raise InputError(f"--checkpoints: {rev!r} is not a revision name (no '/')")
    return revisions


def revision_source(model: str, revision: str) -> str:
    """What `jaxicl.load` reads for a revision: hf:org/name@REV, or DIR/REV for a local directory."""
    if model.startswith(registry.HUB_PREFIX):
        if "@" in model:
            raise InputError(f"--checkpoints with --model {model}: the model already names a revision")
        return f"{model}@{revision}"
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser() / revision)
    raise InputError(f"--checkpoints needs --model hf:org/name or a local directory of revisions, got {model!r}")


def check_checkpoints(model: str, revisions: Sequence[str] | None) -> None:
    """Every revision of a local directory exists (a Hub revision is checked when it loads)."""
    for rev in revisions or ():
        source = revision_source(model, rev)
        if not source.startswith(registry.HUB_PREFIX) and not Path(source).is_dir():
            raise ModelNotFoundError(f"--checkpoints: revision {rev!r} of {model}: no directory {source}")
