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
from jaxicl.runner.checks import parse_checkpoints, revision_source  # noqa: F401  (parse_checkpoints: also from here)
from jaxicl.runner.execute import run
from jaxicl.runner.layout import REVISIONS, REVISIONS_FILE
from jaxicl.runner.lock import holding
from jaxicl.runner.plan import check_config
from jaxicl.runner.rundir import open_run_dir


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
    run_dir = Path(run_dir)
    check_config(config, only)
    with holding(run_dir):
        return _run_revisions(config, run_dir, force, only, quiet, batch_runs)


def _run_revisions(config, run_dir: Path, force: bool, only, quiet: bool, batch_runs: str) -> dict:
    """`run_checkpoints` once its arguments are checked and its directory is locked."""
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
