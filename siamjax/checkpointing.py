"""The only module that talks to orbax: save, find and restore training checkpoints.

A checkpoint is a step directory under `<workdir>/checkpoints` holding two items: `state` (the
whole TrainState: params, optimiser state, BatchNorm statistics, RNG, step) and `meta` (JSON:
calibration, validation metrics, the model config). Kept: the latest `keep` steps plus the best by
validation EER. Saves are asynchronous; `wait()` before the process exits.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from siamjax.errors import UserError, one_line

BEST_METRIC = "val_eer"  # Lower is better.


def _best_fn(metrics: dict[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


class Checkpointer:
    """A CheckpointManager configured for siamjax's layout and preservation rules."""

    def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if read_only and not os.path.isdir(self.directory):
            raise UserError(f"{workdir} holds no checkpoints ({self.directory} does not exist): "
                            "train first, or pass the workdir of a training run.")
        keep_policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=_best_fn, reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            read_only=read_only, preservation_policy=None if read_only else keep_policy,
            best_fn=_best_fn, best_mode="min", create=not read_only,
            enable_async_checkpointing=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any],
             metrics: dict[str, float] | None = None) -> None:
        """Starts an asynchronous save of `state` and `meta` at `step` (force: every call saves)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores `step` into the shapes, dtypes and shardings of `abstract_state`.

        A checkpoint of another model (other shapes or tree) becomes a UserError naming the folder.
        """
        if step not in self.manager.all_steps():
            raise UserError(f"no checkpoint of step {step} in {self.directory}; there are "
                            f"{sorted(self.manager.all_steps())}.")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            first = one_line(e, lines="first")
            raise UserError(f"the checkpoint in {self.directory} (step {step}) does not fit this "
                            f"model's config: {first[:300]}") from e
        return restored["state"], dict(restored["meta"])

    def restore_meta(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_sharding(state: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of a state with one sharding, for restoring straight onto the mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)
