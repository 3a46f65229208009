"""Argument types and the flags several subcommands share, defined once."""

from __future__ import annotations

import argparse
import os

from jaxicl.errors import DataError, InputError
from jaxicl.io.registry import DEFAULT_MODEL, cache_dir
from jaxicl.runner.plan import BATCH_RUNS, PAPER_TASKS


def batch_rows(text: str) -> int | str:
    """--batch-size: a positive integer, or "auto" (sized to the device's free memory)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def csv(text: str | None, cast=str) -> tuple | None:
    """`a,b,c` → ("a", "b", "c") (each through `cast`); None stays None."""
    return None if text is None else tuple(cast(x) for x in text.split(",") if x)


def pairs(text: str | None) -> tuple[tuple[str, str], ...] | None:
    """`A:B,C:D` → (("A", "B"), ("C", "D")); a malformed item is an error naming it."""
    if text is None:
        return None
    out = []
    for item in csv(text):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise InputError(f"--cross-task takes A:B pairs, got {item!r}")
        out.append((a, b))
    return tuple(out)


def unescape(text: str) -> str:
    """Backslash escapes (\\n, \\t, \\u2192) decoded; any other character kept as it is."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise DataError(f"--separator {text!r}: invalid backslash escape ({e.reason})") from e


def default_compile_cache() -> str:
    """The persistent compilation cache of `run` and `tune`: $JAXICL_COMPILE_CACHE, else
    <jaxicl cache>/xla."""
    return os.environ.get("JAXICL_COMPILE_CACHE", str(cache_dir() / "xla"))


def enable_compile_cache(flag: str | None) -> None:
    """--compile-cache DIR|off: turn XLA's persistent compilation cache on (default directory
    unless given) or leave it off."""
    from jaxicl.runtime import compile_cache

    cache = flag or default_compile_cache()
    if cache != "off":
        compile_cache.enable(cache)


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registry name, .gguf file, HF directory or hf:org/name")


def add_data(parser: argparse.ArgumentParser, k_help: str | None = None) -> None:
    """--k, --batch-size and --data-dir: how prompts are built and scored."""
    parser.add_argument("--k", type=int, default=32, help=k_help)
    parser.add_argument("--batch-size", type=batch_rows, default=16, help="query rows per batch, or auto")
    parser.add_argument(
        "--data-dir", default=None, help="directory of <task>/<split>.jsonl (else $JAXICL_DATA_DIR, else the Hub)"
    )


def add_grid(parser: argparse.ArgumentParser) -> None:
    """--tasks, --n-runs and --loss-tokens: which tasks and runs, and the finetuning loss."""
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS))
    parser.add_argument("--n-runs", type=int, default=None, help="only the first N (seed, perm) runs of each task")
    parser.add_argument("--loss-tokens", choices=("all", "label"), default="all",
                        help="finetuning loss over every token after BOS (the authors') or the label tokens only")  # fmt: skip


def add_finetuning(parser: argparse.ArgumentParser) -> None:
    """How finetuning departs from the authors' code, one factor each (the LCGD ablations' flags)."""
    parser.add_argument("--lcgd-readout", default="block",
                        help="LCGD's per-layer readout: block (the authors' code) or attn (the paper's formula)")
    parser.add_argument("--layer-reduction", default="sum",
                        help="LCGD's per-layer losses: sum (the authors' code) or mean")
    parser.add_argument("--finetune-dtype", default="float32",
                        help="finetuning's compute dtype: float32 or bfloat16 (float32 master weights either way)")
    parser.add_argument("--stepped", default="kv",
                        help="the attention projections finetuning steps: kv (keys and values), k or v")  # fmt: skip


def add_run_dir(parser: argparse.ArgumentParser, out_help: str, batch_runs_help: str) -> None:
    """--out, --force, --batch-runs and --compile-cache: the resumable directory and the engine."""
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--force", action="store_true", help="reuse a directory written by another config")
    parser.add_argument("--batch-runs", default="auto", choices=BATCH_RUNS, help=batch_runs_help)
    parser.add_argument("--compile-cache", default=None, metavar="DIR|off",
                        help="XLA's persistent compilation cache (default: $JAXICL_COMPILE_CACHE, else ~/.cache/jaxicl/xla)")  # fmt: skip
