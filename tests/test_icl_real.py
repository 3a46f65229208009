"""The prefix-cached evaluator on the real gemma3-270m against transformers, on SST-2 prompts.

The paper's first SST-2 run (seed 2, perm 0), k = 32 demonstrations, the first 40 eval queries.
transformers loads the same GGUF file (dequantized to float32) and scores the very token ids of our
PromptSet: zero-shot prompts directly, ICL prompts on copies of its own cache of the demonstration
prefix (checked once against a full recompute), in right-padded batches. Both sides score the
label words' first tokens at the last prompt position; the SST-2 label words are single tokens
for Gemma, so that is also our summed log-probability.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxicl.data import get_task  # noqa: E402
from jaxicl.engine.scoring import EvalOptions  # noqa: E402
from jaxicl.runner.evaluation import run_eval  # noqa: E402
from tests.conftest import REAL_MODEL_GROUP  # noqa: E402

pytestmark = [pytest.mark.slow, REAL_MODEL_GROUP]

SEED, K, N_EVAL = 2, 32, 40
SCORE_TOL = 2e-3  # float32 on both sides, different kernels, a ~1000-token prefix
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def ours(data_dir, real_lm):
    lm = real_lm("gemma3-270m")
    start = time.perf_counter()
    run = run_eval(lm, get_task("sst2"), seed=SEED, k=K, n_eval=N_EVAL, data_dir=data_dir, options=EvalOptions())
    print(f"\njaxicl: eval {time.perf_counter() - start:.1f} s {run.seconds}")
    return lm, run


@pytest.fixture(scope="module")
def theirs(ours, hf_model):
    """transformers' first-token log-probs [N, C] for the zero-shot and the ICL prompts."""
    _, run = ours
    p = run.prompts
    model = hf_model("gemma3-270m")
    start = time.perf_counter()

    first = torch.tensor([c[0] for c in p.candidate_ids])

    def last_logp(rows, cache=None, chunk=8):
        """Log-probs of the first candidate tokens after each row, rows batched by length.

        Rows are right-padded; causality keeps the padding out of every real position, and only
        each row's last real position is unembedded. The prefix cache is copied per batch.
        """
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = [None] * len(rows)
        for s in range(0, len(rows), chunk):
            part = order[s : s + chunk]
            width = max(len(rows[i]) for i in part)
            ids = torch.tensor([list(rows[i]) + [0] * (width - len(rows[i])) for i in part])
            last = sorted({len(rows[i]) - 1 for i in part})
            batch_cache = None
            if cache is not None:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(part))
            with torch.no_grad():
                logits = model(
                    input_ids=ids, cache=batch_cache, use_cache=cache is not None, logits_to_keep=torch.tensor(last)
                ).logits
            for b, i in enumerate(part):
                out[i] = torch.log_softmax(logits[b, last.index(len(rows[i]) - 1)].double(), -1)[first].numpy()
        return np.stack(out)

    zs = last_logp([p.zs_sequence(i) for i in range(p.n_eval)])
    with torch.no_grad():
        prefix = model(input_ids=torch.tensor([list(p.prefix_ids)]), use_cache=True, logits_to_keep=1).cache
    icl = last_logp(list(p.query_ids), prefix)
    # The batched reference itself, on one example: an unpadded full recompute of the ICL prompt.
    with torch.no_grad():
        full = model(input_ids=torch.tensor([p.icl_sequence(0)]), logits_to_keep=1).logits[0, -1].double()
    np.testing.assert_allclose(icl[0], torch.log_softmax(full, -1)[first].numpy(), atol=1e-4)
    print(f"transformers: score {time.perf_counter() - start:.1f} s")
    return zs, icl


def test_protocol_is_the_papers_first_sst2_run(ours):
    lm, run = ours
    p = run.prompts
    assert (p.task, p.seed, p.perm, p.k, p.n_eval) == ("sst2", SEED, 0, K, N_EVAL)
    assert p.k_icl == K, "32 SST-2 demonstrations fit Gemma's window"
    assert all(len(c) == 1 for c in p.candidate_ids), "SST-2 label words are single Gemma tokens"
    assert p.prefix_ids[0] == lm.config.bos_token_id and run.icl.prefix_len == len(p.prefix_ids) > 500
    for result in (run.zs, run.icl):
        np.testing.assert_array_equal(result.map_lengths, [len(q) + 1 for q in p.query_ids])
        assert all(np.isfinite(x).all() for x in result.records.values())


@pytest.mark.parametrize("kind", ["zs", "icl"])
def test_predictions_and_scores_match_transformers(ours, theirs, kind):
    _, run = ours
    result = getattr(run, kind)
    ref = dict(zip(("zs", "icl"), theirs))[kind]
    agree = result.predictions == ref.argmax(axis=1)
    delta = np.abs(result.scores - ref)
    gold = np.asarray(run.prompts.gold_labels)
    print(
        f"\n{kind}: agreement {agree.mean():.3f}, max |d score| {delta.max():.2e}, "
        f"accuracy ours {result.accuracy(gold):.3f} / transformers {np.mean(ref.argmax(axis=1) == gold):.3f}"
    )
    assert agree.mean() >= MIN_AGREEMENT, f"disagree on examples {np.flatnonzero(~agree).tolist()}"
    assert delta.max() <= SCORE_TOL, f"max |d score| {delta.max():.2e} at example {int(delta.max(axis=1).argmax())}"
