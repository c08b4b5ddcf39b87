"""glibc malloc settings that let XLA:CPU reuse its buffers from one step to the next.

Why: XLA:CPU allocates every execution's outputs and temporaries anew and frees them when it ends.
glibc serves blocks that large with fresh memory maps and unmaps them on free (or, from a thread's
own arena, gives the pages back), so each train step page-faults its whole working set in again
and the kernel zeroes it (`bench/train_step.py` prints the page faults and system CPU per step).
With one arena, no memory maps and no trimming, freed blocks stay in the process and the next
step reuses them: no page faults, and more pairs/s.

The cost: memory freed by the process is kept for its later allocations rather than returned to
the system, so the resident set stays at its peak, and that peak grows; and all threads share one
arena's lock, which can slow XLA's compilation. The measurements, both ways, are in
bench/README.md ("CPU levers", the glibc malloc row; "Figures the code's comments rely on").
`SIAMJAX_MALLOC_TUNING=0` leaves malloc as it is.

Only glibc (Linux) has these knobs; elsewhere `apply` does nothing, and so on accelerators, where
there is nothing to gain. They must be set before the threads that allocate exist (an arena, once
a thread has one, stays): the entry points call `apply` through `siamjax.entry.prepare_process`,
before TensorFlow and JAX start.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
from collections.abc import Mapping

ENV_SWITCH = "SIAMJAX_MALLOC_TUNING"  # "0": leave malloc as it is.
# mallopt(3) parameters (glibc's malloc.h) and the values siamjax sets.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = (
    # Every thread allocates from the main arena, which can grow without limit. A thread arena's
    # heaps are at most 64 MiB and are unmapped once empty, whatever the settings below: with two
    # arenas, SigNet's steps still faulted 58,000-117,000 pages each.
    (_M_ARENA_MAX, 1),
    (_M_MMAP_MAX, 0),  # Large blocks come from the arena, not from maps unmapped on free.
    (_M_TRIM_THRESHOLD, 2**31 - 1),  # Freed memory at the arena's top is kept (mallopt's max).
)


# Modules whose presence means JAX will likely run on an accelerator (found, not imported).
_ACCELERATOR_MODULES = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")


def _runs_on_cpu(env: Mapping[str, str]) -> bool:
    """Whether JAX will compute on the CPU: $JAX_PLATFORMS says so, or no accelerator plugin is
    installed. On an accelerator XLA's step buffers live in device memory, and these settings
    would only cost host memory."""
    platforms = env.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(m) for m in _ACCELERATOR_MODULES)


def apply(environ: Mapping[str, str] | None = None) -> bool:
    """Sets SETTINGS with mallopt; True when glibc took them all. Nothing (False) off glibc,
    when JAX will run on an accelerator, or when $SIAMJAX_MALLOC_TUNING is "0"."""
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "1") == "0" or not _runs_on_cpu(env):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
