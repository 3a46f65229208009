"""GD and LCGD on the demonstrations: optax SGD through a parameter mask.

The protocol is the authors' code's: one demonstration per step, one epoch, the demonstrations ICL
saw in the order ICL saw them; a sequence is [BOS] + input + label; the loss is the mean next-token
cross-entropy over every target after BOS (or the label tokens only); SGD without momentum or
weight decay at the task's learning rate; only the attention keys and values are stepped, but
gradients flow through every layer. LCGD adds `stop_gradient` on every block input and sums the
losses of every layer's readout U(block output).

The files, one job each: `objective` (what the loss reads), `options` (settings and optimizer),
`step` (the jitted step), `demos` (padded demonstration arrays), `result` (a run's records),
`single` (one run), `many` (many runs under vmap) and `cache` (resumable runs saved with orbax).
"""

from jaxicl.engine.finetune.cache import finetune_cached, finetune_many_cached, run_key
from jaxicl.engine.finetune.demos import demo_arrays, demo_batch
from jaxicl.engine.finetune.many import finetune_many
from jaxicl.engine.finetune.objective import GD, LCGD, METHODS, DemoBatch, Objective, objective_loss
from jaxicl.engine.finetune.options import COMPUTE_DTYPES, STEPPED, FinetuneOptions, StepSpec, default_mask, optimizer
from jaxicl.engine.finetune.result import FinetuneResult, stack_trees
from jaxicl.engine.finetune.single import evaluate_finetuned, finetune, finetune_prompts
from jaxicl.engine.finetune.step import StepStats, train_run_many, train_step, train_step_many

__all__ = [
    "COMPUTE_DTYPES", "GD", "LCGD", "METHODS", "STEPPED", "DemoBatch", "FinetuneOptions", "FinetuneResult", "Objective", "StepSpec",
    "StepStats", "default_mask", "demo_arrays", "demo_batch", "evaluate_finetuned", "finetune", "finetune_cached",
    "finetune_many", "finetune_many_cached", "finetune_prompts", "objective_loss", "optimizer", "run_key",
    "stack_trees", "train_run_many", "train_step", "train_step_many",
]  # fmt: skip
