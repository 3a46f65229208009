"""Tasks, their data, and the paper's selection of demonstrations and evaluation examples.

A `Task` is everything needed to turn rows of a dataset into prompts: where the rows come from,
which split supplies demonstrations and which is evaluated, the template, the label words, and
the per-task (seed, perm) runs and learning rate of the paper (docs/method.md#tasks-and-prompts).

Selection reproduces Hugging Face `datasets` exactly, without needing it at run time:
`Dataset.shuffle(seed=s)` takes `np.random.default_rng(s).permutation(n)` (checked against the
installed `datasets` in tests/test_data.py), so the paper's demonstrations and evaluation set are
kept whether rows come from the Hub or from the local JSONL copies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxicl.errors import DataError

DATA_DIR_ENV = "JAXICL_DATA_DIR"
EVAL_SEED = 1  # the authors' `get_dataset_valid`: data.shuffle(seed=1)
EVAL_POOL = 2000  # ... then the first 2000 rows if longer
N_PERM_DRAWS = 5  # the authors draw 5 permutations and index one of them
DEFAULT_RUNS = ((1, 0), (2, 1), (3, 2))
PAPER_TASKS = ("sst2", "sst5", "mr", "subj", "agnews", "cb")  # the paper's six tasks, in its order

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_fields(template: str) -> tuple[str, ...]:
    """The `{field}` placeholders of a template, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _FIELD.finditer(template):
        seen.setdefault(match.group(1), None)
    return tuple(seen)


def fill_template(template: str, row: Mapping[str, Any]) -> str:
    """The template with every `{field}` replaced by `row[field]`, in one pass.

    One pass (not one `str.replace` per field) so that a value that itself contains `{other}`
    is never substituted again; any other braces in the template stay literal.
    """
    return _FIELD.sub(lambda m: str(row[m.group(1)]), template)


@dataclasses.dataclass(frozen=True)
class Task:
    """A text-classification task: data source, splits, template, label words, paper runs.

    `label_words[i]` verbalises class id `i` of `label_field`; the answer the model reads or
    scores is `" " + label_words[i]`. `runs` are the paper's (train-shuffle seed, permutation
    index) pairs; `lr` its SGD learning rate (None for a user task that does not set one).
    `data_files` (split -> path) pins a task to its own files; otherwise rows come from
    `<data_dir>/<name>/<split>.jsonl` or the Hub dataset `hf_path`/`hf_config`.
    """

    name: str
    template: str
    label_words: tuple[str, ...]
    label_field: str = "label"
    input_fields: tuple[str, ...] = ()  # derived from the template when empty
    demo_split: str = "train"
    eval_split: str = "validation"
    hf_path: str | None = None
    hf_config: str | None = None
    data_files: tuple[tuple[str, str], ...] = ()
    runs: tuple[tuple[int, int], ...] = DEFAULT_RUNS
    lr: float | None = None
    eval_seed: int = EVAL_SEED
    eval_pool: int = EVAL_POOL

    def __post_init__(self) -> None:
        _check_runs(self.name, self.runs)
        if isinstance(self.label_words, str):
            raise DataError(f"task {self.name!r}: label_words must be a sequence of words, not one string")
        files = self.data_files.items() if isinstance(self.data_files, Mapping) else self.data_files
        for key, value in (
            ("label_words", tuple(self.label_words)),
            ("input_fields", tuple(self.input_fields)),
            ("runs", tuple((seed, perm) for seed, perm in self.runs)),
            ("data_files", tuple((str(split), str(path)) for split, path in files)),
        ):
            object.__setattr__(self, key, value)  # lists from a spec become hashable tuples
        fields = template_fields(self.template)
        if not fields:
            raise DataError(f"task {self.name!r}: template {self.template!r} has no {{field}} placeholder")
        if not self.input_fields:
            object.__setattr__(self, "input_fields", fields)
        elif set(self.input_fields) != set(fields):
            raise DataError(
                f"task {self.name!r}: input_fields {list(self.input_fields)} do not match the template's "
                f"placeholders {list(fields)}"
            )
        _check_label_words(self.name, self.label_words)
        if self.lr is not None and not (_is_number(self.lr) and self.lr > 0):
            raise DataError(f"task {self.name!r}: lr must be a positive number, got {self.lr!r}")
        for key, least in (("eval_seed", 0), ("eval_pool", 1)):
            value = getattr(self, key)
            if not (_is_int(value) and value >= least):
                raise DataError(f"task {self.name!r}: {key} must be an integer >= {least}, got {value!r}")

    @property
    def n_classes(self) -> int:
        return len(self.label_words)

    def input_text(self, row: Mapping[str, Any]) -> str:
        """The filled template of a row: the model's input, without the answer."""
        return fill_template(self.template, row)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_label_words(name: str, words: Sequence[str]) -> None:
    if len(words) < 2:
        raise DataError(f"task {name!r}: needs at least 2 label words, got {list(words)}")
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise DataError(f"task {name!r}: label words must be non-empty strings, got {word!r}")
    if len(set(words)) != len(words):
        raise DataError(f"task {name!r}: label words must be distinct, got {list(words)}")


def _check_runs(name: str, runs: Sequence[Sequence[int]]) -> None:
    if not isinstance(runs, (tuple, list)) or not runs:
        raise DataError(f"task {name!r}: runs must be a non-empty sequence of (seed, perm) pairs")
    for run in runs:
        ok = isinstance(run, (tuple, list)) and len(run) == 2 and all(_is_int(v) for v in run)
        if not ok or not 0 <= run[1] < N_PERM_DRAWS:
            raise DataError(
                f"task {name!r}: each run must be (seed, perm) with integer seed and 0 <= perm < "
                f"{N_PERM_DRAWS}, got {run!r}"
            )


# The six tasks of the paper, exactly as docs/method.md#tasks-and-prompts (templates: the code's
# temp_index=0) and #runs-and-learning-rates (the LRs are Dai et al.'s 1.3B choices, reused for LCGD).
TASKS: Mapping[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="sst2",
            hf_path="glue",
            hf_config="sst2",
            template="Sentence: {sentence} Label:",
            label_words=("Negative", "Positive"),
            eval_split="validation",
            runs=((2, 0), (3, 1), (4, 2)),
            lr=0.0005,
        ),
        Task(
            name="sst5",
            hf_path="SetFit/sst5",
            template="Sentence: {text} Label:",
            label_words=("terrible", "bad", "neutral", "good", "great"),
            eval_split="validation",
            runs=((5, 0), (6, 1), (7, 2)),
            lr=0.00016,
        ),
        Task(
            name="mr",
            hf_path="rotten_tomatoes",
            template="Review: {text} Sentiment:",
            label_words=("Negative", "Positive"),
            eval_split="validation",
            runs=((5, 0), (6, 1), (7, 2)),
            lr=0.003,
        ),
        Task(
            name="subj",
            hf_path="SetFit/subj",
            template="Input: {text} Type:",
            label_words=("objective", "subjective"),
            eval_split="test",
            runs=((4, 0), (5, 1), (6, 2)),
            lr=0.003,
        ),
        Task(
            name="agnews",
            hf_path="ag_news",
            template=(
                "Classify the news articles into the categories of World, Sports, Business, and "
                "Technology. Article: {text} Answer:"
            ),
            label_words=("World", "Sports", "Business", "Technology"),
            eval_split="test",
            runs=((3, 0), (4, 1), (5, 2)),
            lr=0.2,
        ),
        Task(
            name="cb",
            hf_path="super_glue",
            hf_config="cb",
            template="{premise} Question: {hypothesis}. True, False, or Neither? Answer:",
            label_words=("True", "False", "Neither"),
            eval_split="validation",
            runs=((3, 0), (4, 1), (5, 2)),
            lr=0.08,
        ),
    )
}

# --- user tasks from JSON spec files -----------------------------------------------------------

_REQUIRED_KEYS = {"name", "template", "label_words"}
_OPTIONAL_KEYS = {
    "description",
    "label_field",
    "input_fields",
    "demo_split",
    "eval_split",
    "hf_dataset",
    "hf_config",
    "data_files",
    "runs",
    "lr",
    "eval_seed",
    "eval_pool",
}


def get_task(name_or_spec: str | os.PathLike[str]) -> Task:
    """A registered task by name, or a user task from a JSON spec file (see `task_from_spec`)."""
    key = str(name_or_spec)
    if key in TASKS:
        return TASKS[key]
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        return load_task_spec(path)
    raise DataError(
        f"unknown task {key!r}; known tasks: {', '.join(sorted(TASKS))} "
        "(or pass the path of a JSON task spec, e.g. experiments/tasks/trec.json)"
    )


def load_task_spec(path: str | os.PathLike[str]) -> Task:
    """Read a JSON task spec; relative `data_files` resolve against the spec's own folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read task spec {path}: {e.strerror or e}") from e
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"task spec {path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    return task_from_spec(spec, base_dir=path.parent, origin=str(path))


def task_from_spec(spec: Mapping[str, Any], base_dir: Path | None = None, origin: str = "spec") -> Task:
    """A `Task` from a spec mapping (the JSON schema of experiments/tasks/*.json).

    Keys: name, template, label_words (required); label_field ("label"), input_fields (from the
    template), demo_split ("train"), eval_split ("validation"), hf_dataset, hf_config,
    data_files ({split: path}), runs ([[seed, perm], ...]), lr, eval_seed (1), eval_pool (2000),
    description. Unknown keys are refused so a typo cannot silently fall back to a default.
    """
    if not isinstance(spec, Mapping):
        raise DataError(f"task spec {origin}: expected a JSON object, got {type(spec).__name__}")
    missing = sorted(_REQUIRED_KEYS - set(spec))
    if missing:
        raise DataError(f"task spec {origin}: missing required key(s) {missing}")
    unknown = sorted(set(spec) - _REQUIRED_KEYS - _OPTIONAL_KEYS)
    if unknown:
        raise DataError(
            f"task spec {origin}: unknown key(s) {unknown}; allowed: {sorted(_REQUIRED_KEYS | _OPTIONAL_KEYS)}"
        )
    for key in ("name", "template"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise DataError(f"task spec {origin}: {key!r} must be a non-empty string")
    if not isinstance(spec["label_words"], list):
        raise DataError(f"task spec {origin}: 'label_words' must be a list of strings")
    kwargs: dict[str, Any] = {
        "name": spec["name"],
        "template": spec["template"],
        "label_words": tuple(spec["label_words"]),
    }
    for key in ("label_field", "demo_split", "eval_split", "hf_config", "eval_seed", "eval_pool", "lr"):
        if key in spec:
            kwargs[key] = spec[key]
    if "hf_dataset" in spec:
        kwargs["hf_path"] = spec["hf_dataset"]
    if "input_fields" in spec:
        kwargs["input_fields"] = tuple(spec["input_fields"])
    if "runs" in spec:
        kwargs["runs"] = _spec_runs(spec["runs"], origin)
    if "data_files" in spec:
        kwargs["data_files"] = _spec_data_files(spec["data_files"], base_dir, origin)
    return Task(**kwargs)


def _spec_runs(runs: Any, origin: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(runs, list) or not runs or not all(isinstance(r, list) and len(r) == 2 for r in runs):
        raise DataError(f"task spec {origin}: 'runs' must be a non-empty list of [seed, perm] pairs")
    return tuple((r[0], r[1]) for r in runs)


def _spec_data_files(files: Any, base_dir: Path | None, origin: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(files, Mapping) or not all(isinstance(v, str) for v in files.values()):
        raise DataError(f"task spec {origin}: 'data_files' must map split names to file paths")
    base = base_dir or Path.cwd()
    return tuple((split, str((base / p) if not Path(p).is_absolute() else Path(p))) for split, p in files.items())


# --- loading ----------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The local data root: the explicit argument, else $JAXICL_DATA_DIR, else None (the Hub)."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def split_path(task: Task, split: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The JSONL file a split is read from, or None when it comes from the Hugging Face Hub.

    A task's own `data_files` come first (they are part of its definition); otherwise
    `<data_dir>/<task>/<split>.jsonl` with `data_dir` from `resolve_data_dir`.
    """
    if task.data_files:
        files = dict(task.data_files)
        if split not in files:
            raise DataError(f"task {task.name!r} has no data file for split {split!r}; it has {sorted(files)}")
        return Path(files[split])
    root = resolve_data_dir(data_dir)
    return None if root is None else root / task.name / f"{split}.jsonl"


def load_split(task: Task, split: str, data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every row of a split, in file (= HF) order, each checked against the task.

    Source order: the task's `data_files`; else `data_dir`; else $JAXICL_DATA_DIR; else the Hub
    through `datasets.load_dataset`. Raises `DataError` for a missing file, a malformed line, a
    row without a template field or the label field, or a label outside the label words.
    """
    path = split_path(task, split, data_dir)
    if path is None:
        rows = _load_hub(task, split)
        where = [f"{_hub_name(task)} split {split!r} row {i}" for i in range(len(rows))]
    else:
        rows, lines = _read_jsonl(path, task, split)
        where = [f"{path} line {n} (row {i})" for i, n in enumerate(lines)]
    for row, loc in zip(rows, where):
        check_row(task, row, loc)
    return rows


def check_split_file(path: Path, task: Task, split: str) -> None:
    """A DataError naming a missing split file and what its folder holds instead."""
    if not path.is_file():
        listing = sorted(p.name for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
        raise DataError(
            f"missing split file {path} (task {task.name!r}, split {split!r}; "
            f"{'present there: ' + ', '.join(listing) if listing else 'no .jsonl files in that folder'})"
        )


def _read_jsonl(path: Path, task: Task, split: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a JSONL file and their 1-based line numbers; blank lines are skipped."""
    check_split_file(path, task, split)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                rows.append(_parse_line(line, path, lineno))
                lines.append(lineno)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return rows, lines


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _hub_name(task: Task) -> str:
    return f"hf:{task.hf_path}" + (f"/{task.hf_config}" if task.hf_config else "")


def _load_hub(task: Task, split: str) -> list[dict[str, Any]]:
    hint = f"pass --data-dir DIR (or set ${DATA_DIR_ENV}) holding DIR/{task.name}/{split}.jsonl"
    if task.hf_path is None:
        raise DataError(f"task {task.name!r} names no Hugging Face dataset and no local data; {hint}")
    try:
        import datasets

        dataset = datasets.load_dataset(task.hf_path, task.hf_config, split=split)
        return [dict(row) for row in dataset]
    except Exception as e:  # noqa: BLE001 - any Hub/network/cache failure means the same to the user
        raise DataError(
            f"could not load {_hub_name(task)} split {split!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {e}); {hint}"
        ) from e


def check_row(task: Task, row: Mapping[str, Any], where: str) -> None:
    """Refuse a row the task cannot turn into a prompt and a gold label."""
    for field in task.input_fields:
        if field not in row:
            raise DataError(
                f"{where}: field {field!r} used by the template of task {task.name!r} is missing "
                f"(row has {sorted(row)})"
            )
        if not isinstance(row[field], str):
            raise DataError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
    if task.label_field not in row:
        raise DataError(f"{where}: label field {task.label_field!r} is missing (row has {sorted(row)})")
    label = row[task.label_field]
    if not _is_int(label):
        raise DataError(f"{where}: label {task.label_field!r} must be an integer class id, got {label!r}")
    if not 0 <= label < task.n_classes:
        raise DataError(
            f"{where}: label value {label} out of range 0..{task.n_classes - 1} "
            f"(task {task.name!r} has {task.n_classes} label words {list(task.label_words)})"
        )


# --- selection --------------------------------------------------------------------------------


def hf_shuffle_indices(n: int, seed: int) -> np.ndarray:
    """Row order of HF `Dataset.shuffle(seed=seed)` on `n` rows: `default_rng(seed).permutation(n)`."""
    return np.random.default_rng(seed).permutation(n)


def demo_permutation(m: int, seed: int, perm: int) -> np.ndarray:
    """The order applied to the first `m` shuffled demonstrations (docs/method.md#runs-and-learning-rates).

    perm 0: no permutation. perm p in 1..4: the authors' code (LMOps `fewshot_task.py`, kept in
    their fork) seeds numpy's global RNG with the run seed (`np.random.seed(seed)` in the task
    constructor; `Dataset.shuffle(seed=)` does not touch that RNG), draws 5 times
    `np.random.permutation(m)` with m = min(k, n_train) and takes `permutation_set[p]`: "the
    perm-th of 5 draws" is a 0-based list index, so draw 0 is never used. A private
    `RandomState(seed)` gives the same stream without touching numpy's global state. perm >= 5
    would be an IndexError there and is refused here. The same order is used for ICL and FT
    (their FT run drew 5 fresh permutations, a mismatch we do not reproduce; docs/method.md#ambiguities-and-choices).
    """
    if not _is_int(perm) or not 0 <= perm < N_PERM_DRAWS:
        raise DataError(f"perm must be in 0..{N_PERM_DRAWS - 1}, got {perm!r}")
    if perm == 0:
        return np.arange(m)
    rng = np.random.RandomState(seed)
    draws = [rng.permutation(m) for _ in range(N_PERM_DRAWS)]
    return draws[perm]


def select_demos(n_rows: int, seed: int, k: int, perm: int = 0) -> list[int]:
    """Indices into the demonstration split, in prompt order.

    The first `min(k, n_rows)` rows of `split.shuffle(seed=seed)`, then `demo_permutation`.
    No class balancing (as the paper).
    """
    if not (_is_int(k) and k >= 0):
        raise DataError(f"k must be an integer >= 0, got {k!r}")
    if not (_is_int(seed) and seed >= 0):
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    first = hf_shuffle_indices(n_rows, seed)[: min(k, n_rows)]
    order = demo_permutation(len(first), seed, perm)
    return [int(first[j]) for j in order]


def select_eval(n_rows: int, n_eval: int | None = None, seed: int = EVAL_SEED, pool: int = EVAL_POOL) -> list[int]:
    """Indices into the evaluation split: `split.shuffle(seed=1)`, first <= 2000, then first n_eval."""
    if n_eval is not None and n_eval < 1:
        raise DataError(f"n_eval must be >= 1, got {n_eval}")
    chosen = hf_shuffle_indices(n_rows, seed)[:pool]
    if n_eval is not None:
        chosen = chosen[:n_eval]
    return [int(i) for i in chosen]
