"""jaxicl/runtime/stage_clock.py: a stage's wall time splits into device (waiting), compile and host."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import pytest

from jaxicl.runtime.stage_clock import StageClock, waiting


def test_waiting_counts_as_device_the_rest_as_host():
    clock = StageClock()
    with clock("stage"):
        with waiting():
            time.sleep(0.05)
        time.sleep(0.03)
    with clock("stage"):  # a stage entered twice adds up
        time.sleep(0.01)
    split = clock.split["stage"]
    assert split["device"] == pytest.approx(0.05, abs=0.02)
    assert split["host"] == pytest.approx(0.04, abs=0.02)
    assert split["compile"] == 0.0 and split["programs"] == 0
    assert split["wall"] == pytest.approx(split["device"] + split["compile"] + split["host"], abs=1e-9)
    assert clock.seconds["stage"] == split["wall"]


def test_a_compilation_inside_a_wait_is_compile_not_device():
    clock = StageClock()
    fn = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.5)  # a fresh function: compiled here
    with clock("first call"):
        with waiting():
            jax.block_until_ready(fn(jnp.ones(7)))
    split = clock.split["first call"]
    assert split["compile"] > 0 and split["programs"] >= 1
    assert split["device"] >= 0 and split["device"] + split["compile"] <= split["wall"] + 1e-9


def test_merge_and_rounded_dict():
    a, b = StageClock(), StageClock()
    a.add("icl", {"wall": 1.0, "device": 0.6, "compile": 0.1, "host": 0.3})
    b.add("icl", {"wall": 2.0, "device": 1.5, "compile": 0.0, "host": 0.5})
    b.add("zero_shot", {"wall": 0.12345, "device": 0.1, "compile": 0.0, "host": 0.02345})
    a.merge(b)
    assert a.as_dict() == {"icl": {"wall": 3.0, "device": 2.1, "compile": 0.1, "host": 0.8},
                           "zero_shot": {"wall": 0.123, "device": 0.1, "compile": 0.0, "host": 0.023}}
