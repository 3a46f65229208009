"""Where SimAM_Δ lives, per layer, from a run directory's cached evaluations (jaxicl/analyses/map_updates.py):
ICL's and each method's change of the attention logits, their ratio, SimAM_Δ, the share of positive
per-head cosines and the mean |cosine|; SimAM_Δ with each head's uniform shift over the query taken
out (centered), the shift's share of the update and the share of heads that shift upward.

Reads RUN_DIR/evals/<task>/<variant>/{zs.npz, seed<S>-perm<P>/{icl,gd-ft,lcgd-ft}.npz} (the trained
model's zs.npz sits one level up) of each RUN_DIR; writes OUT/simam_anatomy.csv (task, variant, seed,
perm, quantity, layer, value), OUT/simam_anatomy.png, OUT/summary.md (per task and method, the means
over layers and groups) and prints the layer means per group.

    python experiments/simam_anatomy.py RUN_DIR [RUN_DIR ...] --out DIR
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from jaxicl.analyses.map_updates import layer_profile  # noqa: E402
from jaxicl.report.figures import METHOD_COLORS, _save  # noqa: E402
from jaxicl.report.stats import order_tasks  # noqa: E402
from jaxicl.runner.rundir import load_eval  # noqa: E402

METHODS = ("gd", "lcgd")


SUMMARY = (  # (quantity, column): the summary's columns, each averaged over layers (NaN layers left out) and groups
    ("simam_delta", "SimAM_Δ"),
    ("simam_delta_centered", "centered SimAM_Δ"),
    ("update_over_icl", "update / ICL's"),
    ("shift_share", "shift share"),
    ("shift_up", "shifted up"),
    ("shift_agreement", "shift sign as ICL's"),
)


def summary(found: list[tuple[tuple, dict]]) -> list[str]:
    """A markdown table: per task (groups in brackets) and method (ICL too, where a quantity is its),
    the SUMMARY quantities' means over layers and groups."""
    rows = ["| task (runs) | method | " + " | ".join(col for _, col in SUMMARY) + " |", "|---|---|" + "---|" * len(SUMMARY)]
    for task in order_tasks({key[0] for key, _ in found}):
        for method in ("icl", *METHODS):
            groups = [p for key, p in found if key[0] == task and f"{method}_shift_share" in p]
            if not groups:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cells = [f"{np.nanmean([g[f'{method}_{q}'] for g in groups]):.3f}" if f"{method}_{q}" in groups[0] else "—"
                         for q, _ in SUMMARY]  # fmt: skip
            rows.append(f"| {task} ({len(groups)}) | {method.upper()} | " + " | ".join(cells) + " |")
    return rows


def profiles(run_dir: Path) -> list[tuple[tuple, dict]]:
    """((task, variant, seed, perm), layer profile) of every group with ICL and finetuned evaluations."""
    out = []
    for group in sorted((run_dir / "evals").glob("*/*/seed*-perm*")):
        task, variant = group.parent.parent.name, group.parent.name
        zs = load_eval(group.parent / "zs.npz") if variant == "trained" else load_eval(group / "zs.npz")
        icl = load_eval(group / "icl.npz")
        finetuned = {m: r for m in METHODS if (r := load_eval(group / f"{m}-ft.npz")) is not None}
        if zs is None or icl is None or not finetuned:
            continue
        seed, perm = (int(x) for x in group.name.removeprefix("seed").split("-perm"))
        out.append(((task, variant, seed, perm), layer_profile(zs, icl, finetuned)))
    return out


PANELS = (  # (profile key, title, reference line, log scale)
    ("simam_delta", "SimAM_Δ (mean over heads)", 0.0, False),
    ("simam_delta_centered", "SimAM_Δ, uniform shifts taken out", 0.0, False),
    ("update_over_icl", "‖m_FT − m_ZS‖ / ‖m_ICL − m_ZS‖", 1.0, True),
    ("shift_share", "uniform shift's share of ‖update‖²", None, False),
    ("shift_up", "share of heads shifted upward", 0.5, False),
)


def plot(found: list[tuple[tuple, dict]], path: Path) -> None:
    """One panel per PANELS entry, per method the mean over groups per layer (ICL's too where it has one)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * len(PANELS), 3.4))
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, title, line, log) in zip(axes, PANELS):
        for method, color in (("icl", "black"), *((m, METHOD_COLORS[m]) for m in METHODS)):
            rows = [p[f"{method}_{key}"] for _, p in found if f"{method}_{key}" in p]
            if rows:
                with warnings.catch_warnings():  # rotary layer 0 has no ratio in any group
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ax.plot(np.nanmean(rows, axis=0), marker=".", color=color, label=method.upper())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer")
        if line is not None:
            ax.axhline(line, color="grey", linewidth=0.6)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    merged: dict[tuple, dict] = {}  # a group in several directories: its methods from each (ICL's is the same)
    for run_dir in args.run_dirs:
        for key, profile in profiles(run_dir):
            merged[key] = merged.get(key, {}) | profile
    found = sorted(merged.items())
    if not found:
        sys.exit(f"{', '.join(map(str, args.run_dirs))}: no group with cached zero-shot, ICL and finetuned evaluations under evals/")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "simam_anatomy.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "variant", "seed", "perm", "quantity", "layer", "value"])
        for key, profile in found:
            for quantity, values in profile.items():
                writer.writerows([*key, quantity, layer, repr(float(v))] for layer, v in enumerate(values))
    plot(found, args.out / "simam_anatomy.png")
    (args.out / "summary.md").write_text("\n".join(summary(found)) + "\n")
    quantities = list(dict.fromkeys(q for _, profile in found for q in profile))  # a group may lack a method
    print("task variant seed perm | layer means: " + ", ".join(quantities))
    with warnings.catch_warnings():  # a layer that is NaN in every group (rotary layer 0's ratio)
        warnings.simplefilter("ignore", RuntimeWarning)
        for key, profile in found:
            print(*key, "|", " ".join(f"{np.nanmean(profile[q]):.3f}" if q in profile else "—" for q in quantities))


if __name__ == "__main__":
    main()
