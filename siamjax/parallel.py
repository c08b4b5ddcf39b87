"""Devices, mesh and shardings for data parallelism, and multi-host start-up. Never pmap.

One mesh axis, `data`: batches are split along it, parameters and optimiser state are replicated.
Under `jax.jit` with these shardings XLA inserts the gradient all-reduce itself, and BatchNorm sees
the global batch, so N devices compute exactly what one device would.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import logging

from siamjax.errors import UserError

DATA_AXIS = "data"

# An explicit launch: every process gets all three (any launcher, any platform).
COORDINATOR_ENV = "SIAMJAX_COORDINATOR_ADDRESS"  # host:port where process 0 listens.
NUM_PROCESSES_ENV = "SIAMJAX_NUM_PROCESSES"
PROCESS_ID_ENV = "SIAMJAX_PROCESS_ID"  # 0 .. NUM_PROCESSES - 1; 0 is the coordinator.
_EXPLICIT_ENV = (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
# Or "1": call jax.distributed.initialize() and let JAX find the cluster (TPU VM metadata, ...).
AUTO_ENV = "SIAMJAX_DISTRIBUTED"


def _explicit_process_env() -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the SIAMJAX_* variables, if any is set."""
    values = {k: os.environ.get(k, "") for k in _EXPLICIT_ENV}
    if not any(values.values()):
        return None
    missing = [k for k, v in values.items() if not v]
    if missing:
        given = ", ".join(f"{k}={v}" for k, v in values.items() if v)
        raise UserError(
            f"{', '.join(missing)} unset while {given}: a multi-process launch "
            f"sets all of {', '.join(_EXPLICIT_ENV)} on every process."
        )
    try:
        n, pid = int(values[NUM_PROCESSES_ENV]), int(values[PROCESS_ID_ENV])
    except ValueError as e:
        raise UserError(
            f"{NUM_PROCESSES_ENV}={values[NUM_PROCESSES_ENV]!r} and "
            f"{PROCESS_ID_ENV}={values[PROCESS_ID_ENV]!r} must be integers."
        ) from e
    if n < 1 or not 0 <= pid < n:
        raise UserError(
            f"{NUM_PROCESSES_ENV}={n}, {PROCESS_ID_ENV}={pid}: the process id must "
            f"be in 0..{n - 1} (and there must be at least one process)."
        )
    if ":" not in values[COORDINATOR_ENV]:
        raise UserError(
            f"{COORDINATOR_ENV}={values[COORDINATOR_ENV]!r} must be host:port, e.g. "
            "10.0.0.1:12345 (process 0's address, reachable from every process)."
        )
    return values[COORDINATOR_ENV], n, pid


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when this process is one of several; else nothing.

    Must run before anything touches a JAX device (train_and_evaluate calls it first). Several
    processes are recognised from:
      - SIAMJAX_COORDINATOR_ADDRESS (host:port of process 0, reachable from every process),
        SIAMJAX_NUM_PROCESSES and SIAMJAX_PROCESS_ID, set on every process by any launcher: one
        process per GPU, or several CPU processes on one host (`cpu_process_env`);
      - SIAMJAX_DISTRIBUTED=1: JAX finds the cluster itself (a Cloud TPU VM slice from its
        metadata server, SLURM, Open MPI, Kubernetes); set it on every host of a TPU pod slice;
      - without it, the clusters that say so in the environment: SLURM (SLURM_NTASKS > 1), GKE
        TPU (TPU_WORKER_HOSTNAMES lists several hosts), or JAX_COORDINATOR_ADDRESS set.
    A lone process (a laptop, one host with all its GPUs, SIAMJAX_NUM_PROCESSES=1) skips it.
    Processes on CPU run their collectives over gloo (JAX's default
    `jax_cpu_collectives_implementation`).
    """
    if jax.distributed.is_initialized():
        return
    explicit = _explicit_process_env()
    if explicit and explicit[1] == 1:
        return
    if explicit:
        coordinator, n, pid = explicit
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)
    elif (
        os.environ.get(AUTO_ENV, "0") not in ("", "0")
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    ):
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "jax.distributed: process %d of %d, %d local devices of %d",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def cpu_process_env(
    coordinator: str, num_processes: int, process_id: int, devices_per_process: int
) -> dict[str, str]:
    """Environment variables for process `process_id` of a cluster simulated on this host's CPU,
    `devices_per_process` CPU devices each (to update a copy of os.environ with)."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    return {
        COORDINATOR_ENV: coordinator,
        NUM_PROCESSES_ENV: str(num_processes),
        PROCESS_ID_ENV: str(process_id),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(flags),
    }


def run_cpu_processes(
    argv: Sequence[str], num_processes: int, devices_per_process: int, timeout: float = 600
) -> list[str]:
    """Runs `argv` as `num_processes` processes of one simulated CPU cluster on this host
    (coordinator on a free loopback port) and returns each one's output (stdout + stderr).

    For tests and benchmarks of the multi-process path without a cluster; `argv` must call
    `maybe_initialize_distributed` before it touches JAX. Raises RuntimeError with every
    process's output tail if any fails or the time runs out.
    """
    with socket.socket() as s:  # Free now; the coordinator binds it a moment later.
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    # Output to files, not pipes: a process blocked on a full pipe would stall the collectives.
    outs = [tempfile.TemporaryFile("w+") for _ in range(num_processes)]
    procs = [
        subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(
                os.environ, **cpu_process_env(coordinator, num_processes, pid, devices_per_process)
            ),
        )
        for pid, out in enumerate(outs)
    ]
    deadline = time.monotonic() + timeout
    try:  # Until all end, the time runs out, or one fails (the others would wait for it).
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = []
    for out in outs:
        out.seek(0)
        logs.append(out.read())
        out.close()
    if any(p.returncode for p in procs):  # Killed ones: a negative code.
        tails = "\n".join(
            f"--- process {i} (exit {p.returncode}):\n{log[-3000:]}"
            for i, (p, log) in enumerate(zip(procs, logs, strict=True))
        )
        raise RuntimeError(
            f"{' '.join(argv)} as {num_processes} x {devices_per_process} CPU "
            f"devices failed:\n{tails}"
        )
    return logs


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading (batch) axis split over `data`."""
    return jax.sharding.NamedSharding(mesh, jax.P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.P())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, what: str = "batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise UserError(f"config.{what}={batch_size} must be a multiple of the {n} devices.")


def local_rows(global_batch: int) -> slice:
    """The rows of a global batch that this process feeds (equal contiguous shares)."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded along `data` (one call for all processes)."""
    sharding = data_sharding(mesh)
    out = {}
    for k, v in batch.items():
        global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out


class GlobalBatches:
    """`to_global` of each local batch, made `size` batches ahead in a background thread.

    Why a thread: on the CPU backend XLA runs a jitted step in the calling thread, so the call
    returns only when most of the step is done, and the next batch's host work (tf.data's
    iterator, `make_array_from_process_local_data`) waits for it in the loop's thread. The step
    releases the GIL, so this thread works meanwhile (bench/README.md, "Host side"). On
    accelerators the dispatch returns at once; the thread only moves the same work off the
    loop's thread. The order of the batches is that of `batches`; `close()` (or leaving the
    `with`) stops the thread, so a preempted or failed loop leaves nothing running. An
    exception in the thread is raised by `next`.
    """

    _END = object()

    def __init__(
        self,
        batches: Iterator[dict[str, np.ndarray]],
        mesh: jax.sharding.Mesh,
        size: int = 2,
    ):
        if size < 1:
            raise ValueError(f"size={size}: at least one batch ahead.")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(batches, mesh), name="GlobalBatches", daemon=True
        )
        self._thread.start()

    def _fill(self, batches: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh) -> None:
        try:
            for batch in batches:
                if not self._put(to_global(batch, mesh)):
                    return
            self._put(self._END)
        except BaseException as e:  # Raised again in the consumer's thread.
            self._put(e)
        finally:  # A generator's cleanup (tf.data's iterator) in the thread that ran it.
            if hasattr(batches, "close"):
                batches.close()

    def _put(self, item: object) -> bool:
        """Waits for room; False once closed (the consumer will not take it)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self) -> GlobalBatches:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stops the thread and drops the batches made ahead."""
        self._stop.set()
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> GlobalBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
