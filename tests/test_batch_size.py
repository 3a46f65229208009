"""Query batches sized to the device ("auto") and halved on out-of-memory, with the same numbers."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxicl.engine import batch_size
from jaxicl.engine import scoring as icl
from jaxicl.engine.scoring import EvalOptions, evaluate
from jaxicl.errors import InputError
from tests.test_icl import CONFIGS, ICL_PREFIX, MULTI, QUERIES, _random_params

CONFIG = CONFIGS["llama"]
OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB"


@dataclasses.dataclass
class FakeDevice:
    platform: str
    free: int

    def memory_stats(self) -> dict:
        return {"bytes_limit": self.free + 1000, "bytes_in_use": 1000}


def test_auto_rows_is_16_on_cpu_and_grows_with_free_memory_elsewhere():
    args = (CONFIG, 64, 1000, 1)
    assert batch_size.auto_rows(*args) == batch_size.CPU_ROWS == 16  # this machine's CPU
    per_row = batch_size.row_bytes(*args)
    sizes = [batch_size.auto_rows(*args, device=FakeDevice("gpu", 4 * per_row * rows)) for rows in (1, 40, 300, 10**6)]
    assert sizes == [batch_size.MIN_ROWS, 32, 256, batch_size.MAX_ROWS]
    assert batch_size.auto_rows(*args, multiple=24, device=FakeDevice("gpu", 4 * per_row * 40)) == 48
    big_vocab = CONFIG.replace(vocab_size=262144)  # the unembedding logits dominate a Gemma row
    assert batch_size.row_bytes(big_vocab, 64, 1000, 1) > 1.5 * per_row


def test_halving_respects_the_mesh_multiple_and_stops():
    assert batch_size.halved(16) == 8 and batch_size.halved(1) is None
    assert batch_size.halved(12, multiple=4) == 4 and batch_size.halved(4, multiple=4) is None
    assert batch_size.is_out_of_memory(jax.errors.JaxRuntimeError(OOM))
    assert not batch_size.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: something else"))
    assert not batch_size.is_out_of_memory(MemoryError(OOM))


def _oom_above(monkeypatch, rows: int) -> list[int]:
    """score_rows raises XLA's out-of-memory error for batches of more than `rows`; returns the
    batch sizes it was called with."""
    real, seen = icl.score_rows, []

    def limited(params, config, taps, cache, ids, *rest):
        seen.append(ids.shape[0])
        if ids.shape[0] > rows:
            raise jax.errors.JaxRuntimeError(OOM)
        return real(params, config, taps, cache, ids, *rest)

    monkeypatch.setattr(icl, "score_rows", limited)
    return seen


def test_out_of_memory_halves_the_batch_with_the_same_numbers(monkeypatch):
    params = _random_params(CONFIG)
    want = evaluate(params, CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size=4))
    seen = _oom_above(monkeypatch, 4)
    with pytest.warns(UserWarning) as caught:
        got = evaluate(params, CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size=16))
    assert [str(w.message) for w in caught] == [  # the first batch holds the shortest rows (<= 8 tokens)
        "out of device memory at 16 query rows x 8 tokens; scoring with 8",
        "out of device memory at 8 query rows x 8 tokens; scoring with 4",
    ]
    assert seen[:3] == [16, 8, 4] and set(seen[3:]) == {4}  # halved twice, then kept
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    for name in want.records:
        np.testing.assert_allclose(got.records[name], want.records[name], rtol=1e-5, atol=1e-6)


def test_out_of_memory_at_one_row_names_the_stage_and_shapes(monkeypatch):
    _oom_above(monkeypatch, 0)
    with pytest.warns(UserWarning), pytest.raises(InputError, match=r"out of device memory scoring queries: "
                                                  r"a batch of 1 rows x 8 tokens after a 70-token prefix"):
        evaluate(_random_params(CONFIG), CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size=2))


def test_other_runtime_errors_are_not_retried(monkeypatch):
    def broken(*a, **k):
        raise jax.errors.JaxRuntimeError("INTERNAL: a kernel failed")

    monkeypatch.setattr(icl, "score_rows", broken)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        evaluate(_random_params(CONFIG), CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size=4))


def test_auto_on_cpu_equals_16_and_bad_sizes_are_refused():
    params = _random_params(CONFIG)
    got = evaluate(params, CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size="auto"))
    want = evaluate(params, CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size=16))
    np.testing.assert_array_equal(got.scores, want.scores)
    with pytest.raises(InputError, match=r'batch_size must be a positive integer or "auto", got \'big\''):
        evaluate(params, CONFIG, ICL_PREFIX, QUERIES, MULTI, EvalOptions(batch_size="big"))
