"""ICL vs GD across training checkpoints: the same grid on each revision of one model.

`jaxicl run --model hf:EleutherAI/pythia-160m --checkpoints step0,step1000,...,step143000` runs
the run's grid once per revision, each in its own run directory:

    RUN_DIR/run.json                    the whole config (its checkpoints list included)
    RUN_DIR/revisions.json              each revision's source and training step, and the
                                        tokenizer fingerprint every revision must share
    RUN_DIR/revisions/<REV>/            a complete run directory of that revision (its run.json
                                        names the revision, so a resumed run never mixes two)

A revision of `hf:org/name` is `hf:org/name@REV`; of a local directory DIR, the directory DIR/REV
(how tests make tiny "revisions"). A revision that does not load is an error naming it, and
nothing is written for it. A revision whose tokenizer differs from the first's is refused: the
prompts, and so the grid, would differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from jaxicl.api import load
from jaxicl.errors import JaxiclError, ModelNotFoundError
from jaxicl.io.results import write_json_atomic
from jaxicl.runner.execute import run
from jaxicl.runner.layout import REVISIONS, REVISIONS_FILE
from jaxicl.runner.rundir import open_run_dir


def parse_checkpoints(text: str) -> tuple[str, ...]:
    """`REV1,REV2,...`, or `@FILE` with one revision per line (blank lines and # comments skipped)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise JaxiclError(f"--checkpoints {text}: no such file {path}")
        items = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    else:
        items = [item.strip() for item in text.split(",")]
    revisions = tuple(item for item in items if item)
    if not revisions:
        raise JaxiclError(f"--checkpoints {text!r} names no revision")
    if len(set(revisions)) != len(revisions):
        raise JaxiclError(f"--checkpoints repeats a revision: {list(revisions)}")
    for rev in revisions:
        if "/" in rev or rev in (".", ".."):
            raise JaxiclError(f"--checkpoints: {rev!r} is not a revision name (no '/')")
    return revisions


def revision_source(model: str, revision: str) -> str:
    """What `jaxicl.load` reads for a revision: hf:org/name@REV, or DIR/REV for a local directory."""
    if model.startswith("hf:"):
        if "@" in model:
            raise JaxiclError(f"--checkpoints with --model {model}: the model already names a revision")
        return f"{model}@{revision}"
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser() / revision)
    raise JaxiclError(f"--checkpoints needs --model hf:org/name or a local directory of revisions, got {model!r}")


def training_step(revision: str) -> int | None:
    """The training step a revision name carries ("step1000" → 1000), for the report's x axis."""
    match = re.fullmatch(r"\D*?(\d+)", revision)
    return int(match.group(1)) if match else None


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary, the special ids and the BOS rule: equal fingerprints give equal prompts."""
    vocab = sorted(tokenizer.backend.get_vocab().items())
    payload = json.dumps([vocab, tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos])
    return hashlib.sha256(payload.encode()).hexdigest()


def run_checkpoints(config, run_dir: Path, *, force: bool = False, only=None, quiet: bool = False,
                    batch_runs: str = "auto") -> dict:
    """Every revision's grid, in the order given; counts summed over revisions (`run`'s keys)."""
    open_run_dir(run_dir, config, force)
    path = run_dir / REVISIONS_FILE
    index = json.loads(path.read_text()) if path.exists() else {"tokenizer": None, "revisions": {}}
    totals = {"done": 0, "skipped": 0, "recomputed": 0, "deferred": 0}
    for rev in config.checkpoints:
        source = revision_source(config.model, rev)
        try:
            lm = load(source)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"revision {rev!r} of {config.model}: {e}") from e
        fingerprint = tokenizer_fingerprint(lm.tokenizer)
        if index["tokenizer"] is None:
            index["tokenizer"] = fingerprint
        elif fingerprint != index["tokenizer"]:
            raise JaxiclError(f"revision {rev!r} of {config.model} has another tokenizer than the run's first "
                              "revision: its prompts would differ, so --checkpoints refuses it")  # fmt: skip
        index["revisions"][rev] = {"source": source, "step": training_step(rev)}
        write_json_atomic(path, index)
        mine = dataclasses.replace(config, model=source, checkpoints=None, revision=rev)
        counts = run(mine, run_dir / REVISIONS / rev, force=force, only=only, lm=lm, quiet=quiet,
                     batch_runs=batch_runs)  # fmt: skip
        totals = {k: totals[k] + counts[k] for k in totals}
        del lm
    return totals
