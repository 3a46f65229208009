"""Names shared by every module of the report: methods, metrics, tasks, variants and runner
stages, with the labels report.md shows for them."""

from __future__ import annotations

from jaxicl.engine.metrics import TABLE_METRICS  # noqa: F401  (required in every cell)
from jaxicl.runner.plan import METHODS  # noqa: F401  (the report's methods are the runner's)

METHOD_LABELS = {"gd": "GD", "lcgd": "LCGD"}
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
TASK_LABELS = {"sst2": "SST2", "sst5": "SST5", "mr": "MR", "subj": "Subj", "agnews": "AGNews", "cb": "CB"}
VARIANTS = ("trained", "trained-embeddings", "no-training", "no-training-keep-norms")
VARIANT_LABELS = {
    "trained": "Trained",
    "trained-embeddings": "Trained Embeddings",
    "no-training": "No Training",
    "no-training-keep-norms": "No Training (keep norms)",
}
ACCURACY_KEYS = ("zs", "icl", "ft")
TABLE1_METRICS = ("simaou", "simam_delta", "simaou_norm")  # the last one is extra (docs/method.md#ambiguities-and-choices)


# ----------------------------------------------------------------------------- runner stages

# (report column, CSV stage, the runner's stopwatch keys summed into it; see runner.group.run_group)
STAGES = (
    ("prompts", "prompts", ("prompts",)),
    ("zero-shot", "zero_shot", ("zero_shot",)),
    ("ICL", "icl", ("icl",)),
    ("finetune GD", "finetune_gd", ("finetune_gd",)),
    ("finetune LCGD", "finetune_lcgd", ("finetune_lcgd",)),
    ("evaluate GD-finetuned", "evaluate_gd", ("ftzs_gd",)),
    ("evaluate LCGD-finetuned", "evaluate_lcgd", ("ftzs_lcgd",)),
    ("metrics", "metrics", ("metrics_gd", "metrics_lcgd")),
    ("stability check", "stability", ("stability_gd", "stability_lcgd")),
)
STAGE_KEYS = frozenset(k for _, _, keys in STAGES for k in keys)
TIMING_KEYS = ("load_s", "total_s")
