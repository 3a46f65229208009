"""Multi-host helpers: start JAX's distributed runtime, shard an eval set, gather results, write once.

An experiment that runs on every host of a TPU pod slice calls `initialize()` first (before any
other JAX call), evaluates `process_shard(items)`, merges with `gather_to_host0(...)`, and saves
with `write_once(...)`. On one process every helper degrades to the obvious single-host behaviour,
so the same script runs unchanged on a laptop.

`jaxicl.engine.across_hosts.evaluate_across_hosts` is scoring in that pattern.

`on_host0` / `broadcast_from_host0` make decisions that read process 0's files (is a stage cached,
is a cell done?) the same on every process, so no host skips a collective the others enter.
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from jaxicl.io.results import write_json_atomic

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_COORDINATOR = "JAXICL_COORDINATOR"
ENV_NUM_PROCESSES = "JAXICL_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXICL_PROCESS_ID"
# "1": call jax.distributed.initialize() and let JAX detect the cluster (Cloud TPU, Slurm, Open MPI,
# Kubernetes); "0": never initialize. Unset: initialize when configured explicitly or on a Cloud TPU VM.
ENV_DISTRIBUTED = "JAXICL_DISTRIBUTED"

# PCI ids of Cloud TPU chips (Google vendor 0x1ae0), as in jax/_src/hardware_utils.py. Checking the
# device id matters: gVNIC and local NVMe on ordinary GCE VMs carry the same vendor id.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def on_cloud_tpu_vm(pci_root: str = "/sys/bus/pci/devices") -> bool:
    """True when a TPU chip is attached over PCI: the cue that JAX can detect a TPU cluster."""
    for vendor_path in glob.glob(os.path.join(pci_root, "*", "vendor")):
        try:
            vendor = Path(vendor_path).read_text().strip()
            if vendor != _GOOGLE_PCI_VENDOR:
                continue
            device = (Path(vendor_path).parent / "device").read_text().strip()
        except OSError:
            continue
        if device in _TPU_PCI_DEVICES:
            return True
    return False


def _use_gloo_on_cpu() -> None:
    """Older JAX defaults CPU collectives to 'none', which breaks process_allgather on CPU."""
    import jax

    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option: nothing to fix
        pass


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start JAX's distributed runtime if this is one of several processes; return whether it runs.

    Arguments win over $JAXICL_COORDINATOR / $JAXICL_NUM_PROCESSES / $JAXICL_PROCESS_ID. With none
    of them, $JAXICL_DISTRIBUTED=1 or a Cloud TPU VM lets JAX detect the cluster itself (on a pod
    slice every worker finds the others through the TPU metadata). A single process is a no-op.
    Safe to call twice. Must run before anything that creates a JAX backend (jax.devices(), ...).
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    mode = os.environ.get(ENV_DISTRIBUTED, "").strip()
    if mode not in ("", "0", "1"):
        raise ValueError(f"${ENV_DISTRIBUTED} must be 0 or 1, got {mode!r}")

    if mode == "0" or num_processes == 1:
        return False
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if explicit:
        missing = [n for n, v in (("coordinator", coordinator), ("num_processes", num_processes),
                                  ("process_id", process_id)) if v is None]
        if missing and not on_cloud_tpu_vm() and mode != "1":
            raise ValueError(f"multi-process run needs {', '.join(missing)} too "
                             f"(arguments or ${ENV_COORDINATOR}/${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID})")
    elif mode != "1" and not on_cloud_tpu_vm():
        return False

    _use_gloo_on_cpu()
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of this process's contiguous block; the first n % count blocks get one extra."""
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def process_shard(items: Sequence[T], process_index: int | None = None,
                  process_count: int | None = None) -> list[T]:
    """This host's contiguous slice of `items`: the shards are disjoint, ordered and cover every item.

    Contiguous blocks keep global order, so concatenating the shards in process order
    (`gather_to_host0`) gives back the original sequence.
    """
    import jax

    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    items = list(items)
    start, stop = shard_bounds(len(items), index, count)
    return items[start:stop]


def gather_to_host0(local_results: Sequence[Any]) -> list[Any]:
    """Concatenate every process's results in process order; every process gets the full list.

    Items may be any picklable objects (dicts of metrics, numbers, arrays). They travel as pickled
    bytes through `process_allgather`, padded to the longest shard since collectives need equal
    shapes; all processes must call this the same number of times.
    """
    import jax

    local = list(local_results)
    if jax.process_count() == 1:
        return local
    from jax.experimental.multihost_utils import process_allgather

    blob = np.frombuffer(pickle.dumps(local, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
    sizes = np.asarray(process_allgather(np.array([blob.size], dtype=np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), dtype=np.uint8)
    padded[: blob.size] = blob
    stacked = np.asarray(process_allgather(padded))
    out: list[Any] = []
    for row, size in zip(stacked, sizes):
        out.extend(pickle.loads(row[: int(size)].tobytes()))
    return out


def broadcast_from_host0(value: T) -> T:
    """Process 0's `value` (any picklable object) on every process; on one process, `value` itself.

    The other processes' `value` is ignored. It travels as pickled bytes through
    `broadcast_one_to_all`; all processes must call this the same number of times."""
    import jax

    if jax.process_count() == 1:
        return value
    from jax.experimental.multihost_utils import broadcast_one_to_all

    blob = np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) if is_writer() else b"", np.uint8)
    high, low = broadcast_one_to_all(np.array(divmod(blob.size, 2**30), dtype=np.int32))  # int32: no x64
    size = int(high) * 2**30 + int(low)
    buffer = blob if is_writer() else np.zeros(size, dtype=np.uint8)
    return pickle.loads(np.asarray(broadcast_one_to_all(buffer)).tobytes())


def on_host0(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run on process 0 only; every process returns its result or raises its
    exception. For decisions that read process 0's files (skip a cached stage, refuse a run
    directory): every process then takes the same branch and enters the same collectives, even a
    host that cannot see those files. On one process it is a plain call."""
    import jax

    if jax.process_count() == 1:
        return fn(*args, **kwargs)
    outcome: tuple[bool, Any] | None = None
    error: Exception | None = None
    if is_writer():
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as e:  # sent to the others, so that they raise it too
            error = e
            try:
                pickle.loads(pickle.dumps(e))
                outcome = (False, e)
            except Exception:
                outcome = (False, RuntimeError(f"on process 0: {type(e).__name__}: {e}"))
    ok, value = broadcast_from_host0(outcome)
    if error is not None:
        raise error
    if not ok:
        raise value
    return value


def is_writer() -> bool:
    """Process 0 owns the shared outputs, so files are written once, not once per host."""
    import jax

    return jax.process_index() == 0


def write_once(path: str | os.PathLike, payload: Any) -> Path | None:
    """Write JSON atomically on process 0 only; return the path there and None elsewhere."""
    if not is_writer():
        return None
    return write_json_atomic(path, payload)
