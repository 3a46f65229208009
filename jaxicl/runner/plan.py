"""What a run computes: its config, the grid of cells, the slice to run now, and each cell's
prompts and finetuning settings.

A cell is (task, variant, seed, perm, method). Cells of one (task, variant, seed, perm) form a
group: they share the prompts and the zero-shot and ICL evaluations.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax

from jaxicl.analyses import controls, order
from jaxicl.data.prompts import PromptSet, build_prompts
from jaxicl.data.tasks import PAPER_TASKS, get_task
from jaxicl.engine.finetune import COMPUTE_DTYPES, STEPPED, FinetuneOptions, Objective
from jaxicl.engine.finetune import METHODS as OBJECTIVES
from jaxicl.engine.scoring import RECORD_TAPS, EvalOptions
from jaxicl.errors import InputError
from jaxicl.io.registry import DEFAULT_MODEL
from jaxicl.models.transformer import EVERY_POSITION
from jaxicl.runner import checks
from jaxicl.runner.layout import ANALYSES_DIR, CELLS, CONTROLS, ORDER_DIR, cell_file, run_name

METHODS = tuple(OBJECTIVES)  # ("gd", "lcgd")
CELL_KEYS = ("task", "variant", "method", "seed", "perm", "accuracy", "per_layer", "scalar")
ORDER = "order"  # the order-sensitivity cell of a run (jaxicl/analyses/order.py)
ORDER_KEYS = ("task", "variant", "seed", "perm", "permutations", "methods")
ANALYSES = ("task-vectors", "function-vectors")  # per-run cells of jaxicl/analyses/{task,function}_vectors.py
ANALYSIS_KEYS = ("task", "variant", "seed", "perm", "layers", "methods")
PROBES = ("label", "last")
LOSS_TOKENS = ("all", "label")
LAYER_REDUCTIONS = ("sum", "mean")
LCGD_READOUTS = ("block", "attn")
TOKEN_RECORD = "attn_out" + EVERY_POSITION  # attn_out at every query token (--token-wise)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers; a run directory refuses a different one."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = PAPER_TASKS
    runs: tuple[tuple[int, int], ...] | None = None  # (seed, perm) pairs; None: each task's paper runs
    n_runs: int | None = None  # keep only the first n of those runs
    methods: tuple[str, ...] = METHODS
    variants: tuple[str, ...] = ("trained",)
    k: int = 32
    n_eval: int | None = 200
    max_len: int | None = None  # context window for ICL; None: the model's
    separator: str = "\n"
    probe: str = "label"
    batch_size: int | str = 16  # query rows per batch, or "auto" (sized to the device)
    loss_tokens: str = "all"
    layer_reduction: str = "sum"
    lcgd_readout: str = "block"
    finetune_dtype: str = "float32"  # finetuning's compute dtype; the stepped params stay float32
    stepped: str = "kv"  # the attention projections finetuning steps: "kv" (the paper's), "k" or "v"
    metric_seed: int = 0
    data_dir: str | None = None
    lrs: tuple[tuple[str, float], ...] | None = None  # (task, rate) pairs; None: each task's paper rate
    lrs_source: str | None = None  # where `lrs` came from ("selected", a file); None: the paper
    token_wise: bool = False  # also record attn_out at every query token: IA2's token-wise SimAOU
    order_permutations: int = 0  # P >= 2: order sensitivity over P orders of each run's demos (order.py)
    checkpoints: tuple[str, ...] | None = None  # revisions of `model`: the grid runs on each (revisions.py)
    revision: str | None = None  # set by revisions.py in each revision's own run directory
    controls: tuple[str, ...] = ()  # task-specificity controls (jaxicl/analyses/controls.py), GD only
    cross_task: tuple[tuple[str, str], ...] | None = None  # (A, B): A's cross-task partner; default next task
    stability_check: bool = False  # refinetune each cell with other rounding and record how far its metrics move
    analyses: tuple[str, ...] = ()  # per-run analyses: ANALYSES (task and function vectors, against GD/LCGD)
    cie_queries: int = 32  # function vectors: the eval queries (the first ones) each head's CIE is averaged over

    def eval_options(self) -> EvalOptions:
        """The evaluation settings of every zero-shot, ICL and finetuned scoring of the run."""
        records = RECORD_TAPS + ((TOKEN_RECORD,) if self.token_wise else ())
        return EvalOptions(batch_size=self.batch_size, probe=self.probe, records=records)

    def cell_keys(self, cell: "Cell") -> tuple[str, ...]:
        """What a complete results file of `cell` holds under this config (an incomplete one is
        recomputed): a stability check adds its record to the real cells."""
        extra = ("stability",) if self.stability_check and cell.kind is None else ()
        return cell.required_keys + extra

    def learning_rate(self, task) -> tuple[float, str]:
        """(rate, origin) of a task's finetuning: the paper's, or the one `--lrs` gave."""
        if self.lrs is None:
            if task.lr is None:
                raise InputError(f"task {task.name} has no learning rate; add 'lr' to its spec or pass --lrs")
            return task.lr, "paper"
        rates = dict(self.lrs)
        if task.name not in rates:
            raise InputError(f"--lrs: the learning rates from {self.lrs_source} have none for task {task.name}")
        checks.check_rate(rates[task.name], f"for task {task.name} (--lrs {self.lrs_source})")
        return rates[task.name], str(self.lrs_source)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class Cell:
    task: str
    variant: str
    seed: int
    perm: int
    method: str
    kind: str | None = None  # None: a real cell; a control's name (jaxicl/analyses/controls.py); ORDER; or an ANALYSES name

    @property
    def group(self) -> tuple[str, str, int, int]:
        return (self.task, self.variant, self.seed, self.perm)

    def relpath(self) -> Path:
        """cells/... for the real grid; controls/<control>/... and order/... apart, so neither ever
        enters Tables 1-2."""
        if self.kind == ORDER:
            return Path(ORDER_DIR, self.task, self.variant, run_name(self.seed, self.perm) + ".json")
        if self.kind in ANALYSES:
            return Path(ANALYSES_DIR, self.kind, self.task, self.variant, run_name(self.seed, self.perm) + ".json")
        root = (CELLS,) if self.kind is None else (CONTROLS, self.kind)
        return Path(*root, self.task, self.variant, cell_file(self.method, self.seed, self.perm))

    @property
    def required_keys(self) -> tuple[str, ...]:
        """What a complete results file of this cell holds (an incomplete one is recomputed)."""
        if self.kind in ANALYSES:
            return ANALYSIS_KEYS
        return ORDER_KEYS if self.kind == ORDER else CELL_KEYS

    def name(self) -> str:
        kind = "" if self.kind is None else f" [{self.kind}]"
        return f"{self.task}/{self.variant}/{self.method}{kind} seed {self.seed} perm {self.perm}"


def check_config(config: RunConfig, only: dict[str, Sequence[str]] | None = None, window: int | None = None) -> None:
    """Every setting of a run, and the slice `only`, checked before a model loads or a file is
    written (the runner/checks module says what each check allows). window: the context window of
    a model loaded already (else read from its checkpoint when --max-len needs it)."""
    tasks = checks.check_tasks(config.tasks)
    checks.check_runs(config.runs, config.n_runs)
    checks.check_methods(config.methods)
    checks.check_variants(config.variants)
    checks.check_count("--k", config.k, minimum=0, allow_none=False)
    checks.check_count("--n-eval", config.n_eval)
    checks.check_batch_size(config.batch_size)
    for flag, value, allowed in (("--probe", config.probe, PROBES), ("--loss-tokens", config.loss_tokens, LOSS_TOKENS),
                                 ("--layer-reduction", config.layer_reduction, LAYER_REDUCTIONS),
                                 ("--lcgd-readout", config.lcgd_readout, LCGD_READOUTS),
                                 ("--finetune-dtype", config.finetune_dtype, COMPUTE_DTYPES),
                                 ("--stepped", config.stepped, tuple(STEPPED))):  # fmt: skip
        checks.check_choices(flag, (value,), allowed)
    for task in tasks:
        config.learning_rate(task)  # a rate for every task: its own, or --lrs's
    controls.check_controls(config.controls, [t.name for t in tasks], config.cross_task, config.methods)
    order.check_permutations(config.order_permutations)
    if config.analyses:
        checks.check_choices("--analyses", config.analyses, ANALYSES)
    checks.check_count("--cie-queries", config.cie_queries, minimum=1, allow_none=False)
    checks.check_checkpoints(config.model, config.checkpoints)
    checks.check_data(tasks, config.data_dir, config.k)
    if only:
        select_cells([], only, grid=cells_of(config))
    first = checks.revision_source(config.model, config.checkpoints[0]) if config.checkpoints else config.model
    checks.check_model_and_window(first, config.max_len, window)


def cells_of(config: RunConfig) -> list[Cell]:
    """The grid, grouped so cells sharing prompts and ICL records run back to back; variant-major,
    so a long run completes the trained model's tables before the untrained baselines'."""
    out = []
    tasks = [get_task(name) for name in config.tasks]
    for variant in config.variants:
        for task in tasks:
            for seed, perm in (config.runs or task.runs)[: config.n_runs]:
                out += [Cell(task.name, variant, seed, perm, m) for m in config.methods]
                out += [Cell(task.name, variant, seed, perm, "gd", control) for control in config.controls]
                if config.order_permutations:
                    out.append(Cell(task.name, variant, seed, perm, "+".join(config.methods), ORDER))
                out += [Cell(task.name, variant, seed, perm, "+".join(config.methods), kind) for kind in config.analyses]
    return out


def groups(cells: Sequence[Cell]) -> Iterator[list[Cell]]:
    current: list[Cell] = []
    for cell in cells:
        if current and cell.group != current[0].group:
            yield current
            current = []
        current.append(cell)
    if current:
        yield current


SELECT_KEYS = ("task", "variant", "method", "seed", "perm")


def parse_only(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`KEY=V1,V2` strings (the `--only` flags) → {key: values}: a slice of the grid to run now."""
    only: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in SELECT_KEYS or not values:
            raise InputError(f"--only takes KEY=V1,V2 with KEY one of {', '.join(SELECT_KEYS)}; got {item!r}")
        only[key] = only.get(key, ()) + tuple(v for v in values.split(",") if v)
    return only


def select_cells(cells: Sequence[Cell], only: dict[str, Sequence[str]], grid: Sequence[Cell]) -> list[Cell]:
    """The cells matching every key of `only`; a value that matches no cell of the `grid` is an
    error, so a typo never silently selects nothing."""
    for key, values in only.items():
        if key not in SELECT_KEYS:
            raise InputError(f"cannot select cells by {key!r}; use one of {', '.join(SELECT_KEYS)}")
        present = {str(getattr(c, key)) for c in grid}
        unknown = [str(v) for v in values if str(v) not in present]
        if unknown:
            raise InputError(f"--only {key}={','.join(unknown)} matches no cell of this config's grid "
                              f"(its {key}s: {', '.join(sorted(present))})")
    return [c for c in cells if all(str(getattr(c, k)) in {str(v) for v in vs} for k, vs in only.items())]


def run_prompts(lm, config: RunConfig, task, seed: int, perm: int) -> PromptSet:
    """The prompts of one (task, seed, perm) run under this config (also `jaxicl tune`'s)."""
    return build_prompts(
        task, lm.tokenizer, seed=seed, perm=perm, k=config.k, n_eval=config.n_eval,
        max_len=config.max_len or lm.config.max_positions, separator=config.separator, data_dir=config.data_dir,
    )  # fmt: skip


def token_wise_bytes(config: RunConfig, model_config, prompts: PromptSet) -> tuple[int, str]:
    """(bytes, formula) of the host memory one group's token-wise records take: n_eval x layers x
    d_model x query tokens x 4 bytes for each evaluation held at once (zero-shot, ICL, and each
    method's finetuned model, twice with --stability-check)."""
    q = max(len(ids) for ids in prompts.query_ids)
    held = 2 + len(config.methods) * (2 if config.stability_check else 1)
    n, layers, d = prompts.n_eval, model_config.n_layers, model_config.d_model
    return n * layers * d * q * 4 * held, f"{n} x {layers} layers x {d} x {q} query tokens x 4 bytes x {held}"


def finetune_options(config: RunConfig, task, method: str):
    """The finetuning settings of a task and method under this config: its rate (`--lrs`), the
    method's objective, the loss tokens, the compute dtype and the stepped projections (also
    `jaxicl tune`'s, with the rate replaced)."""
    lr, _ = config.learning_rate(task)
    objective = Objective() if method == "gd" else Objective(
        readout=config.lcgd_readout, causal=True, layer_reduction=config.layer_reduction)
    return FinetuneOptions(lr=lr, objective=objective, loss_tokens=config.loss_tokens,
                           compute_dtype=config.finetune_dtype, stepped=config.stepped)  # fmt: skip


BATCH_RUNS = ("auto", "on", "off")


def batch_runs_enabled(batch_runs: str) -> bool:
    """`--batch-runs`: "auto" batches on an accelerator only (on a 2-core CPU one task's grid ran
    slower batched than one by one: experiments/bench_grid.py, docs/benchmarks.md)."""
    if batch_runs not in BATCH_RUNS:
        raise InputError(f"--batch-runs must be one of {', '.join(BATCH_RUNS)}; got {batch_runs!r}")
    return batch_runs == "on" or (batch_runs == "auto" and jax.default_backend() != "cpu")
