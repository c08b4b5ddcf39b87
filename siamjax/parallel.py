"""Devices, mesh and shardings for data parallelism, and multi-host start-up. Never pmap.

One mesh axis, `data`: batches are split along it, parameters and optimiser state are replicated.
Under `jax.jit` with these shardings XLA inserts the gradient all-reduce itself, and BatchNorm sees
the global batch, so N devices compute exactly what one device would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from siamjax.errors import UserError

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several": a launcher set them.
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when launched as one of several processes.

    Detected from JAX's own variables, SLURM (SLURM_NTASKS > 1) or a multi-worker Cloud TPU
    (TPU_WORKER_HOSTNAMES with several hosts); a lone process on a laptop skips it.
    """
    multi = any(os.environ.get(k) for k in _MULTI_PROCESS_ENV)
    multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1
    multi |= "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if multi and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


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
