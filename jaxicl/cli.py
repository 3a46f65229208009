"""The `jaxicl` command."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from jaxicl.errors import JaxiclError


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
    lm = jaxicl.load(args.model)
    run = run_eval(
        lm, task, seed=args.seed, perm=args.perm, k=args.k, n_eval=args.n_eval, max_len=args.max_len,
        separator=args.separator.encode().decode("unicode_escape"), data_dir=args.data_dir,
        options=EvalOptions(batch_size=args.batch_size, probe=args.probe, records=()),
    )  # fmt: skip
    record = eval_record(run, args.model)
    acc = record["accuracy"]
    print(f"{task.name}  model={args.model}  seed={args.seed} perm={args.perm}  k={args.k} (k_icl={run.prompts.k_icl})"
          f"  n_eval={run.prompts.n_eval}")
    print(f"zero-shot accuracy: {acc['zs']:.4f}")
    print(f"ICL accuracy:       {acc['icl']:.4f}")
    if args.out:
        record.update(versions=versions(), machine=machine())
        write_json_atomic(args.out, record)
        print(f"wrote {args.out}")


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
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--data-dir", default=None, help="directory of <task>/<split>.jsonl (else $JAXICL_DATA_DIR, else the Hub)")
    ev.add_argument("--out", default=None, help="write the results JSON here")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except JaxiclError as e:
        print(f"jaxicl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
