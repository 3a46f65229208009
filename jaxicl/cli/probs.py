"""`jaxicl probs`: label-word probabilities of a model for one prompt."""

from __future__ import annotations

import argparse

import numpy as np

from jaxicl.api import load, logits
from jaxicl.cli.args import add_model
from jaxicl.errors import JaxiclError


def label_logprobs(lm, prompt: str, words: list[str]) -> np.ndarray:
    """Summed log-probability of each label word's tokens after `prompt` (words get a leading space)."""
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


def main(args: argparse.Namespace) -> None:
    lm = load(args.model)
    words = [w.strip() for w in args.labels.split(",") if w.strip()]
    scores = label_logprobs(lm, args.prompt, words)
    norm = np.exp(scores - np.logaddexp.reduce(scores))
    print(f"model: {args.model}  prompt: {args.prompt!r}")
    print(f"{'label':>16}  {'log p':>9}  {'p':>8}  {'p | labels':>10}")
    for word, s, p in zip(words, scores, norm):
        print(f"{word:>16}  {s:9.4f}  {np.exp(s):8.4f}  {p:10.4f}")


def add(sub) -> None:
    parser = sub.add_parser("probs", help="label-word probabilities of a model for one prompt")
    add_model(parser)
    parser.add_argument("--prompt", default="Sentence: a gorgeous, witty, seductive movie. Label:")
    parser.add_argument("--labels", default="Negative,Positive", help="comma-separated label words")
    parser.set_defaults(func=main)
