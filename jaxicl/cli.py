"""The `jaxicl` command."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np

from jaxicl.errors import DataError, JaxiclError


def label_logprobs(lm, prompt: str, words: list[str]) -> np.ndarray:
    """Summed log-probability of each label word's tokens after `prompt` (words get a leading space)."""
    from jaxicl.api import logits

    prompt_ids = lm.tokenizer.prompt_ids(prompt)
    scores = []
    for word in words:
        word_ids = lm.tokenizer.encode(" " + word)
        if not word_ids:
            raise JaxiclError(f"label word {word!r} tokenizes to nothing")
        out = logits(lm, prompt_ids + word_ids, add_bos=False)
        logp = out - np.logaddexp.reduce(out, axis=-1, keepdims=True)
        rows = np.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(word_ids))
        scores.append(float(logp[rows, word_ids].sum()))
    return np.asarray(scores)


def _probs(args: argparse.Namespace) -> None:
    import jaxicl

    lm = jaxicl.load(args.model)
    words = [w.strip() for w in args.labels.split(",") if w.strip()]
    scores = label_logprobs(lm, args.prompt, words)
    norm = np.exp(scores - np.logaddexp.reduce(scores))
    print(f"model: {args.model}  prompt: {args.prompt!r}")
    print(f"{'label':>16}  {'log p':>9}  {'p':>8}  {'p | labels':>10}")
    for word, s, p in zip(words, scores, norm):
        print(f"{word:>16}  {s:9.4f}  {np.exp(s):8.4f}  {p:10.4f}")


def _eval(args: argparse.Namespace) -> None:
    import jaxicl
    from jaxicl.data.tasks import get_task
    from jaxicl.evaluation import eval_record, run_eval
    from jaxicl.icl import EvalOptions
    from jaxicl.io.results import machine, versions, write_json_atomic

    task = get_task(args.task)
    separator = _unescape(args.separator)
    lm = jaxicl.load(args.model)
    run = run_eval(
        lm, task, seed=args.seed, perm=args.perm, k=args.k, n_eval=args.n_eval, max_len=args.max_len,
        separator=separator, data_dir=args.data_dir,
        options=EvalOptions(batch_size=args.batch_size, probe=args.probe, records=()),
    )  # fmt: skip
    record = eval_record(run, args.model)
    acc = record["accuracy"]
    print(f"{task.name}  model={args.model}  seed={args.seed} perm={args.perm}  k={args.k} (k_icl={run.prompts.k_icl})"
          f"  n_eval={run.prompts.n_eval}")
    print(f"zero-shot accuracy: {acc['zs']:.4f}")
    print(f"ICL accuracy:       {acc['icl']:.4f}")
    print("seconds: " + ", ".join(f"{name} {s:.1f}" for name, s in run.seconds.items()))
    if args.out:
        record.update(versions=versions(), machine=machine())
        write_json_atomic(args.out, record)
        print(f"wrote {args.out}")


def _unescape(text: str) -> str:
    """Backslash escapes (\\n, \\t, \\u2192) decoded; any other character kept as it is."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise DataError(f"--separator {text!r}: invalid backslash escape ({e.reason})") from e


def _batch_rows(text: str) -> int | str:
    """--batch-size: a positive integer, or "auto" (sized to the device's free memory)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def _csv(text: str | None, cast=str) -> tuple | None:
    return None if text is None else tuple(cast(x) for x in text.split(",") if x)


def _pairs(text: str | None) -> tuple[tuple[str, str], ...] | None:
    """`A:B,C:D` → (("A", "B"), ("C", "D")); a malformed item is an error naming it."""
    if text is None:
        return None
    pairs = []
    for item in _csv(text):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise JaxiclError(f"--cross-task takes A:B pairs, got {item!r}")
        pairs.append((a, b))
    return tuple(pairs)


def default_compile_cache() -> str:
    """`jaxicl run`'s persistent compilation cache: $JAXICL_COMPILE_CACHE, else <jaxicl cache>/xla."""
    from jaxicl.io.registry import cache_dir

    return os.environ.get("JAXICL_COMPILE_CACHE", str(cache_dir() / "xla"))


def _run(args: argparse.Namespace) -> int | None:
    from jaxicl import compile_cache, distributed
    from jaxicl.data.tasks import get_task
    from jaxicl.experiment import RunConfig, RunInterrupted, parse_only, run
    from jaxicl.revisions import parse_checkpoints
    from jaxicl.tune import rates_for

    distributed.initialize()  # joins the other processes of a multi-host run; else a no-op
    cache = args.compile_cache or default_compile_cache()
    if cache != "off":
        compile_cache.enable(cache)

    runs = None
    if args.seeds:
        seeds = _csv(args.seeds, int)
        perms = _csv(args.perms, int) if args.perms else tuple(range(len(seeds)))
        if len(perms) != len(seeds):
            raise JaxiclError(f"--perms has {len(perms)} values for {len(seeds)} seeds")
        runs = tuple(zip(seeds, perms))
    tasks = _csv(args.tasks)
    rates = rates_for(args.lrs, [get_task(t).name for t in tasks], args.out)
    config = RunConfig(
        model=args.model, tasks=tasks, runs=runs, n_runs=args.n_runs, methods=_csv(args.methods),
        variants=_csv(args.variants), k=args.k, n_eval=args.n_eval, max_len=args.max_len,
        batch_size=args.batch_size, data_dir=args.data_dir, loss_tokens=args.loss_tokens,
        lrs=None if rates is None else tuple(sorted(rates.items())),
        lrs_source=None if rates is None else ("selected" if args.lrs == "selected" else str(args.lrs)),
        token_wise=args.token_wise, controls=_csv(args.controls) or (),
        cross_task=_pairs(args.cross_task), order_permutations=args.order_permutations,
        checkpoints=None if args.checkpoints is None else parse_checkpoints(args.checkpoints),
    )  # fmt: skip
    try:
        counts = run(config, args.out, force=args.force, only=parse_only(args.only), profile_dir=args.profile,
                     batch_runs=args.batch_runs)
    except RunInterrupted as stop:
        lost = f"lost the {len(stop.lost)} cells in progress ({'; '.join(stop.lost)})" if stop.lost else "lost nothing"
        print(f"jaxicl: interrupted after {stop.done} cells this run; {lost}; resume with: "
              f"jaxicl {shlex.join(args.argv)}", file=sys.stderr)
        return 130  # the shell's code for a run stopped by SIGINT
    print(f"{args.out}: {counts['done']} cells run, {counts['skipped']} already done, "
          f"{counts['recomputed']} corrupt cell files recomputed, {counts['deferred']} left for a run without --only")


def _tune(args: argparse.Namespace) -> int | None:
    from jaxicl import compile_cache
    from jaxicl.tune import DAI_GRID, TuneConfig, tune

    cache = args.compile_cache or default_compile_cache()
    if cache != "off":
        compile_cache.enable(cache)
    config = TuneConfig(
        model=args.model, tasks=_csv(args.tasks), n_runs=args.n_runs, method=args.method,
        grid=_csv(args.grid, float) if args.grid else DAI_GRID, search=args.search, select_on=args.select_on,
        selection_size=args.selection_size, k=args.k, batch_size=args.batch_size, data_dir=args.data_dir,
        loss_tokens=args.loss_tokens,
    )  # fmt: skip
    try:
        result = tune(config, args.out, batch_runs=args.batch_runs, force=args.force)
    except KeyboardInterrupt:
        print(f"jaxicl: tune interrupted; finished rates are kept; resume with: jaxicl {shlex.join(args.argv)}",
              file=sys.stderr)  # fmt: skip
        return 130
    for name, entry in result["tasks"].items():
        chosen = entry["chosen"]
        print(f"{name}: lr {chosen['lr']:g} (paper {entry['paper_lr']}), selection accuracy {chosen['accuracy']:.3f}, "
              f"zero-shot {chosen['zero_shot']:.3f}" + ("" if chosen["finetuning_helps"] else
              " -- finetuning does not help here"))  # fmt: skip
    print(f"{args.out}/lr_selection.json: {len(result['tasks'])} tasks in {result['seconds']:.0f} s "
          f"({result['engine']}, {config.search} search, selected on the {config.select_on} set)")


def _models(args: argparse.Namespace) -> None:
    """`jaxicl models`: the registry names and the supported families with their sources."""
    import json

    from jaxicl.io.registry import supported_models

    models = supported_models()
    if args.json:
        print(json.dumps(models, indent=1))
        return
    print("Registry names (jaxicl.load(name); the default first):")
    for entry in models["registry"]:
        mark = " (default)" if entry.get("default") else ""
        print(f"  {entry['name']}{mark}: {entry['description']} [{entry['family']}, {entry['format']}; needs {entry['needs']}]")
    print("\nFamilies (a Hugging Face directory, hf:org/name[@revision], or a GGUF file where listed):")
    for entry in models["families"]:
        gguf = ", ".join(entry["gguf_architectures"]) or "none"
        print(f"  {entry['family']}: HF model_type {', '.join(entry['hf_model_types'])}; GGUF architecture {gguf}; "
              f"sources: {'; '.join(entry['sources'])}")


def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from jaxicl.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "cells").is_dir() and not (run_dir / "revisions.json").is_file():
        raise JaxiclError(f"{args.run_dir} is not a run directory (no cells/ or revisions.json in it); "
                          "create one with `jaxicl run`")  # fmt: skip
    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxicl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    probs = sub.add_parser("probs", help="label-word probabilities of a model for one prompt")
    probs.add_argument("--model", default="gemma3-270m")
    probs.add_argument("--prompt", default="Sentence: a gorgeous, witty, seductive movie. Label:")
    probs.add_argument("--labels", default="Negative,Positive", help="comma-separated label words")
    probs.set_defaults(func=_probs)

    ev = sub.add_parser("eval", help="zero-shot and ICL accuracy of a model on a task")
    ev.add_argument("--model", default="gemma3-270m")
    ev.add_argument("--task", required=True, help="a paper task name or a JSON task spec file")
    ev.add_argument("--k", type=int, default=32, help="demonstrations to draw (fewer if the window is full)")
    ev.add_argument("--seed", type=int, required=True, help="train-shuffle seed of the demonstrations")
    ev.add_argument("--perm", type=int, default=0, help="the paper's permutation index (0: none)")
    ev.add_argument("--n-eval", type=int, default=None, help="evaluate the first N of the eval set")
    ev.add_argument("--max-len", type=int, default=None, help="context window (default: the model's)")
    ev.add_argument("--separator", default="\\n", help="between demonstrations; '<eos>' for the EOS token")
    ev.add_argument("--probe", choices=("label", "last"), default="label")
    ev.add_argument("--batch-size", type=_batch_rows, default=16, help="query rows per batch, or auto")
    ev.add_argument("--data-dir", default=None, help="directory of <task>/<split>.jsonl (else $JAXICL_DATA_DIR, else the Hub)")
    ev.add_argument("--out", default=None, help="write the results JSON here")
    ev.set_defaults(func=_eval)

    rn = sub.add_parser("run", help="the paper's protocol over a grid of cells, resumable")
    rn.add_argument("--model", default="gemma3-270m")
    rn.add_argument("--tasks", default="sst2,sst5,mr,subj,agnews,cb")
    rn.add_argument("--seeds", default=None, help="comma-separated seeds (default: each task's paper seeds)")
    rn.add_argument("--perms", default=None, help="permutation index per seed (default: 0, 1, 2, ...)")
    rn.add_argument("--n-runs", type=int, default=None, help="only the first N (seed, perm) runs of each task")
    rn.add_argument("--methods", default="gd,lcgd")
    rn.add_argument("--variants", default="trained",
                    help="trained,trained-embeddings,no-training,no-training-keep-norms")
    rn.add_argument("--k", type=int, default=32)
    rn.add_argument("--n-eval", type=int, default=200)
    rn.add_argument("--max-len", type=int, default=None)
    rn.add_argument("--batch-size", type=_batch_rows, default=16, help="query rows per batch, or auto")
    rn.add_argument("--data-dir", default=None)
    rn.add_argument("--out", required=True, help="the run directory")
    rn.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                       help="run only this slice of the grid now, e.g. method=gd or task=sst2,mr (repeatable; KEY: task, variant, method, seed, perm); rerun without it for the rest")
    rn.add_argument("--force", action="store_true", help="reuse a run directory written by another config")
    rn.add_argument("--batch-runs", default="auto", choices=("auto", "on", "off"),
                    help="run each (task, variant)'s finetuning runs, then their zero-shot evaluations, together under "
                    "vmap (auto: on an accelerator only)")
    rn.add_argument("--loss-tokens", choices=("all", "label"), default="all",
                    help="finetuning loss over every token after BOS (the authors') or the label tokens only")
    rn.add_argument("--lrs", default="paper", metavar="paper|selected|FILE.json",
                    help="learning rates: the paper's, RUN_DIR/lr_selection.json from `jaxicl tune`, or a file")
    rn.add_argument("--controls", default=None, metavar="C1,C2",
                    help="task-specificity controls, GD only: cross-task, shuffled-gd, shuffled-icl "
                    "(cells under RUN_DIR/controls/, never in Tables 1-2)")
    rn.add_argument("--cross-task", default=None, metavar="A:B,...",
                    help="the cross-task control's partner of each task (default: the next task of the grid)")
    rn.add_argument("--checkpoints", default=None, metavar="REV1,REV2|@FILE",
                    help="run the grid on each revision of --model (hf:org/name@REV, or DIR/REV for a local "
                    "directory), e.g. Pythia's step0,step1000,...; one run directory per revision")
    rn.add_argument("--order-permutations", type=int, nargs="?", const=8, default=0, metavar="P",
                    help="order sensitivity (Shen et al.): ICL and GD/LCGD under P >= 2 orders of each run's "
                    "demonstrations (the flag alone: 8; default 0: off)")
    rn.add_argument("--token-wise", action="store_true",
                    help="also record the attention output at every query token and add IA2's token-wise SimAOU "
                    "(larger evaluation files)")
    rn.add_argument("--profile", default=None, metavar="DIR",
                    help="write a JAX profiler trace of the first group run (open with TensorBoard or Perfetto)")
    rn.add_argument("--compile-cache", default=None, metavar="DIR|off",
                    help="XLA's persistent compilation cache (default: $JAXICL_COMPILE_CACHE, else ~/.cache/jaxicl/xla)")
    rn.set_defaults(func=_run)

    tn = sub.add_parser("tune", help="select each task's learning rate (Dai et al.'s grid search), resumable")
    tn.add_argument("--model", default="gemma3-270m")
    tn.add_argument("--tasks", default="sst2,sst5,mr,subj,agnews,cb")
    tn.add_argument("--n-runs", type=int, default=None, help="only the first N (seed, perm) runs of each task")
    tn.add_argument("--method", choices=("gd", "lcgd"), default="gd", help="the paper used GD's rate for both")
    tn.add_argument("--grid", default=None, help="comma-separated rates (default: Dai's {1..9} x {1e-1..1e-4})")
    tn.add_argument("--search", choices=("full", "coarse-to-fine", "coarse-to-unimodal"), default="full",
                    help="coarse-to-fine: each decade's smallest rate, then every rate of the best decade; "
                    "coarse-to-unimodal: then a ternary search of that decade (assumes one peak; ~5 of its 9 rates)")
    tn.add_argument("--select-on", choices=("selection", "eval"), default="selection",
                    help="selection: a train-split set disjoint from demonstrations and eval; eval: Dai's choice")
    tn.add_argument("--selection-size", type=int, default=200)
    tn.add_argument("--k", type=int, default=32)
    tn.add_argument("--loss-tokens", choices=("all", "label"), default="all")
    tn.add_argument("--batch-size", type=_batch_rows, default=16, help="query rows per batch, or auto")
    tn.add_argument("--data-dir", default=None)
    tn.add_argument("--out", required=True, help="the run directory (lr_selection.json goes there)")
    tn.add_argument("--force", action="store_true", help="reuse a directory tuned with another config")
    tn.add_argument("--batch-runs", default="auto", choices=("auto", "on", "off"),
                    help="finetune every (rate, run) together under vmap and score them together (auto: accelerator)")
    tn.add_argument("--compile-cache", default=None, metavar="DIR|off")
    tn.set_defaults(func=_tune)

    md = sub.add_parser("models", help="the registry names and the supported model families, with their sources")
    md.add_argument("--json", action="store_true", help="print the same as JSON")
    md.set_defaults(func=_models)

    rp = sub.add_parser("report", help="tables and plots of a run directory")
    rp.add_argument("run_dir")
    rp.add_argument("--out", default=None, help="default: RUN_DIR/report")
    rp.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed, e.g. for the line that resumes an interrupted run
    try:
        code = args.func(args)
    except JaxiclError as e:
        print(f"jaxicl: error: {e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
