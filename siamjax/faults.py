"""What the training loop does when the world misbehaves: SIGTERM, and NaN/Inf in a step.

Preemption: `PreemptionWatcher` turns SIGTERM into a flag; the loop finishes the step it is in,
checkpoints it, flushes its writers and raises `errors.Preempted` (exit code 143 from train.py).
With several processes the flag is agreed on at log steps, so that all of them save the same step.

Numerical faults: the jitted step computes one on-device flag, `finite` (the loss and every
gradient finite), and applies the update only where it holds (`keep_if_finite`), so a non-finite
value never enters the state and so never reaches a checkpoint. The flags are summed on the device
and fetched only where the loop fetches anyway (log steps) and before every save
(`NonFiniteGuard.check`): the cost is one reduction over the gradients and one select over the
state per step, and no extra host-device synchronisation. The guard then stops training with
`NonFiniteError` naming the first bad step, or (config.skip_nonfinite_steps) counts and logs the
skipped steps.

Not for: checkpoint damage and storage errors (siamjax.checkpointing owns those).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from siamjax.errors import NonFiniteError

NONFINITE = "nonfinite"  # Step metric: 1 where the step was not finite (summed).
FIRST_NONFINITE = "first_nonfinite_step"  # Step metric: the step if not finite, else a sentinel.
_NO_STEP = np.iinfo(np.int32).max


# ---------------------------------------------------------------------------------------------
# Inside the jitted step


def all_finite(*trees: Any) -> jax.Array:
    """One boolean scalar: every floating leaf of `trees` is finite."""
    flags = [
        jnp.all(jnp.isfinite(x))
        for t in trees
        for x in jax.tree.leaves(t)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def keep_if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `finite`, else `old`, leaf by leaf (same structure)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def step_flags(finite: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """The two metrics a step adds; `step` is the 1-based step it ran as."""
    return {
        NONFINITE: jnp.where(finite, 0, 1).astype(jnp.int32),
        FIRST_NONFINITE: jnp.where(finite, _NO_STEP, step).astype(jnp.int32),
    }


# ---------------------------------------------------------------------------------------------
# In the loop


class NonFiniteGuard:
    """Keeps the steps' flags (on the device); `check` fetches them (a sync) and acts.

    The flags are kept as the steps returned them, not summed as they come: a sum is an eager
    dispatch per step, host time that XLA:CPU does not overlap with the next step. `check` runs
    at least every `log_every_steps`, so the list stays short.
    """

    def __init__(self, skip: bool, skipped_before: int = 0):
        self.skip = skip
        self.skipped = int(skipped_before)
        self._pending: list[dict[str, jax.Array]] = []

    def add(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Takes the flags out of a step's metrics (asynchronously); returns the rest."""
        flags = {k: metrics[k] for k in (NONFINITE, FIRST_NONFINITE)}
        self._pending.append(flags)
        return {k: v for k, v in metrics.items() if k not in flags}

    def check(self, step: int, last_saved: int | None, directory: str) -> None:
        """Raises NonFiniteError (stop mode) or logs and counts (skip mode) the bad steps since
        the last check; `step` is the current step, `last_saved` the newest saved step."""
        if not self._pending:
            return
        pending, self._pending = jax.device_get(self._pending), []
        n = sum(int(p[NONFINITE]) for p in pending)
        first = min(int(p[FIRST_NONFINITE]) for p in pending)
        if not n:
            return
        if not self.skip:
            kept = (
                f"step {last_saved} in {directory} stays the latest checkpoint"
                if last_saved
                else "no checkpoint was saved"
            )
            raise NonFiniteError(
                f"step {first}: the loss or a gradient is NaN or Inf ({n} such step(s) up to step "
                f"{step}); training stopped and {kept}. Lower config.learning_rate, or set "
                "config.skip_nonfinite_steps=True to skip such steps."
            )
        self.skipped += n
        logging.warning(
            "skipped %d step(s) whose loss or gradients were NaN or Inf (first: step "
            "%d; %d skipped in all)",
            n,
            first,
            self.skipped,
        )


class PreemptionWatcher:
    """A context manager that turns SIGTERM into `requested` for the duration of the loop.

    The previous handler comes back on exit. Outside the main thread signals cannot be caught;
    the watcher then does nothing (and says so).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        else:
            logging.warning("not in the main thread: SIGTERM will not checkpoint before exiting")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if not self._event.is_set():
            logging.warning(
                "received signal %d: finishing this step, saving a checkpoint, then exiting", signum
            )
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def should_stop(self, at_log_step: bool) -> bool:
        """Whether to checkpoint and stop after this step. One process: as soon as the signal
        came. Several: at log steps, if any process got it (all then stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        if not at_log_step:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))
