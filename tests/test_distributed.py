"""jaxicl.runtime.distributed: sharding arithmetic, single-process behaviour, and real 2-process CPU runs.

The 2-process tests start two Python processes that join through jax.distributed on localhost
(gloo CPU collectives), the same code path a TPU pod slice takes with one process per host.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxicl.engine.across_hosts import evaluate_across_hosts, merge_results
from jaxicl.engine.scoring import EvalOptions, evaluate
from jaxicl.runtime import distributed
from jaxicl.runtime.distributed import gather_to_host0, initialize, is_writer, process_shard, shard_bounds, write_once

REPO = Path(__file__).resolve().parent.parent
# One worker runs the whole module, so its two-process launch (module-scoped) runs once.
pytestmark = pytest.mark.xdist_group("distributed")


def run_processes(argvs: list[list[str]], envs: list[dict], timeout: float) -> list:
    """Run one Python process per argv (with its env, in the repo), wait for all (killing any left
    at the timeout), assert each exited 0 and return the JSON each printed after "RESULT "."""
    procs = [subprocess.Popen([sys.executable, *argv], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for argv, env in zip(argvs, envs)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    return [json.loads(text.split("RESULT ", 1)[1]) for text in outputs]


# ---- sharding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("count", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 17, 100, 1001])
def test_shards_cover_every_item_once_in_order(count, n):
    items = [f"item{i}" for i in range(n)]
    shards = [process_shard(items, process_index=i, process_count=count) for i in range(count)]
    assert [x for shard in shards for x in shard] == items  # disjoint, complete, global order
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_bounds_examples():
    assert [shard_bounds(10, i, 4) for i in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert [shard_bounds(2, i, 3) for i in range(3)] == [(0, 1), (1, 2), (2, 2)]


def test_process_shard_accepts_any_iterable_and_defaults_to_this_process():
    assert process_shard(range(5)) == [0, 1, 2, 3, 4]  # one process here: everything
    assert process_shard(iter("abcde"), process_index=1, process_count=2) == ["d", "e"]


@pytest.mark.parametrize("index, count", [(2, 2), (-1, 2), (0, 0)])
def test_process_shard_rejects_bad_positions(index, count):
    with pytest.raises(ValueError):
        process_shard([1, 2, 3], process_index=index, process_count=count)


# ---- single process ----------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    """No distributed configuration in the environment, and no TPU attached."""
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
                 distributed.ENV_DISTRIBUTED):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    return calls


def test_initialize_single_process_is_a_noop(clean_env):
    assert initialize() is False
    assert initialize() is False  # idempotent
    assert clean_env == [] and not jax.distributed.is_initialized()
    assert jax.process_count() == 1 and is_writer()


@pytest.mark.parametrize("env", [
    {"JAXICL_NUM_PROCESSES": "1", "JAXICL_COORDINATOR": "10.0.0.1:1234", "JAXICL_PROCESS_ID": "0"},
    {"JAXICL_DISTRIBUTED": "0", "JAXICL_NUM_PROCESSES": "4"},
])
def test_initialize_respects_single_process_settings(clean_env, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert initialize() is False and clean_env == []


def test_initialize_passes_explicit_settings_to_jax(clean_env, monkeypatch):
    monkeypatch.setenv("JAXICL_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("JAXICL_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAXICL_PROCESS_ID", "3")
    assert initialize(process_id=2) is True  # the argument wins over the environment
    assert clean_env == [((), {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2})]


def test_initialize_lets_jax_detect_a_tpu_cluster(clean_env, monkeypatch):
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
    assert initialize() is True
    assert clean_env == [((), {"coordinator_address": None, "num_processes": None, "process_id": None})]
    monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
    monkeypatch.setenv("JAXICL_DISTRIBUTED", "1")  # e.g. Slurm: JAX's own detection
    assert initialize() is True and len(clean_env) == 2


@pytest.mark.parametrize("env, message", [
    ({"JAXICL_NUM_PROCESSES": "2"}, "coordinator, process_id"),
    ({"JAXICL_NUM_PROCESSES": "two"}, "must be an integer"),
    ({"JAXICL_DISTRIBUTED": "yes"}, "must be 0 or 1"),
])
def test_initialize_rejects_incomplete_settings(clean_env, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        initialize()
    assert clean_env == []


def fake_pci(root: Path, devices: list[tuple[str, str]]) -> str:
    for i, (vendor, device) in enumerate(devices):
        d = root / f"0000:00:0{i}.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
    return str(root)


def test_tpu_detection_reads_pci_ids(tmp_path):
    gvnic_and_nvme = [("0x1ae0", "0x0042"), ("0x1ae0", "0x001f"), ("0x10de", "0x2330")]
    assert not distributed.on_cloud_tpu_vm(fake_pci(tmp_path / "gce", gvnic_and_nvme))
    assert distributed.on_cloud_tpu_vm(fake_pci(tmp_path / "v4", [("0x1ae0", "0x0042"), ("0x1ae0", "0x005e")]))
    assert not distributed.on_cloud_tpu_vm(str(tmp_path / "missing"))


def test_gather_single_process_returns_local_results():
    local = [{"i": 1}, 2.5, "x"]
    out = gather_to_host0(local)
    assert out == local and out is not local


def test_broadcast_and_on_host0_single_process_are_plain():
    value = {"a": [1, 2]}
    assert distributed.broadcast_from_host0(value) is value
    assert distributed.on_host0(lambda x, y=0: x + y, 1, y=2) == 3
    with pytest.raises(ZeroDivisionError):
        distributed.on_host0(lambda: 1 / 0)


def test_write_once_writes_on_process_zero_only(tmp_path, monkeypatch):
    path = tmp_path / "out" / "result.json"
    assert write_once(path, {"acc": 0.5}) == path
    assert json.loads(path.read_text()) == {"acc": 0.5}
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    assert not is_writer()
    other = tmp_path / "out" / "other.json"
    assert write_once(other, {"acc": 0.7}) is None
    assert not other.exists() and json.loads(path.read_text()) == {"acc": 0.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp files left


# ---- evaluation across hosts, one process -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_eval():
    """A tiny random Llama-like model and the ICL test's prompts (queries of 1..14 tokens)."""
    from tests.test_icl import CONFIGS, ICL_PREFIX, MULTI, QUERIES, _random_params

    config = CONFIGS["llama"]
    return config, _random_params(config), ICL_PREFIX, QUERIES, MULTI


def test_evaluate_across_hosts_on_one_process_is_evaluate(tiny_eval):
    config, params, prefix, queries, cands = tiny_eval
    options = EvalOptions(batch_size=4)
    got = evaluate_across_hosts(params, config, prefix, queries, cands, options)
    want = evaluate(params, config, prefix, queries, cands, options)
    for field in ("scores", "predictions", "map_lengths"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert got.prefix_len == want.prefix_len and got.records.keys() == want.records.keys()
    for name in want.records:
        np.testing.assert_array_equal(got.records[name], want.records[name])


def test_merged_blocks_equal_one_evaluation(tiny_eval):
    """What the hosts' gather does, here by hand: blocks of different map widths are re-padded."""
    config, params, prefix, queries, cands = tiny_eval
    options = EvalOptions(batch_size=4)
    want = evaluate(params, config, prefix, queries, cands, options)
    blocks = [process_shard(queries, i, 3) for i in range(3)]  # the longest query (14) is in block 0
    got = merge_results([evaluate(params, config, prefix, b, cands, options) for b in blocks])
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.map_lengths, want.map_lengths)
    for name, a, b in [("scores", got.scores, want.scores)] + [(k, got.records[k], want.records[k]) for k in want.records]:
        assert a.shape == b.shape, name
        scale = max(1.0, float(np.abs(b).max()))  # other batches: float32 rounding, relative to magnitude
        assert float(np.abs(a - b).max()) <= 1e-5 * scale, name
    with pytest.raises(ValueError, match="no results"):
        merge_results([])


# ---- two real processes on CPU -----------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys
    from jaxicl.runtime import distributed as d
    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if process_id == 0:  # one process configured by arguments, the other by environment
        assert d.initialize(f"localhost:{port}", 2, 0)
    else:
        assert d.initialize()
    assert d.initialize() is True  # idempotent once running
    import jax, numpy as np
    from jaxicl.errors import InputError
    from jaxicl.engine.across_hosts import evaluate_across_hosts
    from jaxicl.engine.scoring import EvalOptions, evaluate
    from jaxicl.runtime.sharding import make_mesh
    from tests.test_icl import CONFIGS, ICL_PREFIX, MULTI, QUERIES, _random_params

    # shard, gather, write once, broadcast
    items = list(range(11))
    mine = d.process_shard(items)
    rows = d.gather_to_host0([{"item": i, "square": i * i, "by": jax.process_index()} for i in mine])
    tiny = d.gather_to_host0(d.process_shard(["only"]))  # process 1 contributes nothing
    d.write_once(out, {"writer": jax.process_index(), "rows": rows})
    told = d.broadcast_from_host0({"from": jax.process_index(), "text": "x" * 100 * (1 + jax.process_index())})
    decided = d.on_host0(lambda: jax.process_index())  # runs on process 0 only
    try:
        d.on_host0(lambda: 1 / 0)
        raised = ""
    except ZeroDivisionError as e:  # process 0's exception, raised on every process
        raised = type(e).__name__

    # evaluation across hosts, each on a data mesh of its own 2 devices
    config = CONFIGS["llama"]
    params = _random_params(config)
    options = EvalOptions(batch_size=4)
    mesh = make_mesh()  # this process's 2 devices
    got = evaluate_across_hosts(params, config, ICL_PREFIX, QUERIES, MULTI, options, mesh)
    want = evaluate(params, config, ICL_PREFIX, QUERIES, MULTI, options)  # all queries, one device
    try:  # a mesh over both hosts' devices is refused before anything runs
        evaluate_across_hosts(params, config, ICL_PREFIX, QUERIES, MULTI, options,
                                make_mesh(devices=jax.devices()))
        refused = ""
    except InputError as e:
        refused = str(e)
    diff = lambda a, b: float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
    scale = lambda a: max(1.0, float(np.abs(a).max()))  # float32 rounding grows with magnitude
    print("RESULT " + json.dumps({
        "index": jax.process_index(), "count": jax.process_count(), "mine": mine, "rows": rows, "tiny": tiny,
        "writer": d.is_writer(), "told": told, "decided": decided, "raised": raised,
        "devices": [jax.local_device_count(), jax.device_count()], "mesh": dict(mesh.shape), "refused": refused,
        "n": len(got.scores), "local": len(d.process_shard(QUERIES)),
        "same_predictions": bool(np.array_equal(got.predictions, want.predictions)),
        "same_map_lengths": bool(np.array_equal(got.map_lengths, want.map_lengths)),
        "shapes": all(got.records[k].shape == want.records[k].shape for k in want.records),
        "scores": diff(got.scores, want.scores) / scale(want.scores),
        "records": max(diff(got.records[k], want.records[k]) / scale(want.records[k]) for k in want.records),
    }))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One launch of two processes with two CPU devices each; every test below reads its results."""
    tmp = tmp_path_factory.mktemp("two-processes")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    out = tmp / "run" / "result.json"
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXICL_")}
    flags = base.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    base.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=flags.strip())
    envs = [base, {**base, "JAXICL_COORDINATOR": f"localhost:{port}", "JAXICL_NUM_PROCESSES": "2",
                   "JAXICL_PROCESS_ID": "1"}]
    results = run_processes([[str(script), str(i), str(port), str(out)] for i in range(2)], envs, timeout=300)
    return results, out


def test_two_cpu_processes_shard_gather_and_write_once(two_processes):
    results, out = two_processes
    expected_rows = [{"item": i, "square": i * i, "by": 0 if i < 6 else 1} for i in range(11)]
    assert [r["index"] for r in results] == [0, 1] and all(r["count"] == 2 for r in results)
    assert [r["mine"] for r in results] == [list(range(6)), list(range(6, 11))]
    assert all(r["rows"] == expected_rows and r["tiny"] == ["only"] for r in results)
    assert [r["writer"] for r in results] == [True, False]
    assert all(r["told"] == {"from": 0, "text": "x" * 100} and r["decided"] == 0 for r in results)
    assert all(r["raised"] == "ZeroDivisionError" for r in results)
    assert json.loads(out.read_text()) == {"writer": 0, "rows": expected_rows}
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]


def test_two_cpu_processes_evaluate_their_shards_and_gather(two_processes):
    """Two hosts with two devices each: a local data mesh per host, queries split 4 / 3."""
    results, _ = two_processes
    assert [r["local"] for r in results] == [4, 3]
    for r in results:
        assert r["devices"] == [2, 4] and r["mesh"] == {"data": 2, "model": 1} and r["n"] == 7
        assert r["same_predictions"] and r["same_map_lengths"] and r["shapes"]
        assert r["scores"] <= 1e-5 and r["records"] <= 1e-5, r  # relative to the largest |value|
        assert "mesh spans other processes' devices" in r["refused"]
