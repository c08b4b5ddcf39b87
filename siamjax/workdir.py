"""A trained workdir as a model: what makes a checkpoint fit a config (the fingerprint), the
restore of a checkpoint's parameters and BatchNorm statistics, and the calibration saved beside
them (the threshold chosen on validation, the training prior).

The one owner of a workdir's checkpoints-to-model contract: the trainer writes the fingerprint and
checks it before resuming, and `eval.py`, `siamjax-verify`, the export and the service restore
through `restore`. Restoring reads `params` and `batch_stats` alone: no optimiser, no learning-rate
schedule, no train state is built (nothing here imports `siamjax.train_state`). Not for: scoring
(`siamjax.inference`), writing checkpoints (`siamjax.checkpointing`, the only module that talks to
orbax) or the train state itself.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from siamjax.errors import UserError, one_line

if TYPE_CHECKING:
    import jax
    import ml_collections

    from siamjax.models import SiameseNet

# JAX, orbax and the model are imported when a checkpoint is restored, not with this module:
# `siamjax-verify` reads a workdir's config and reports a bad input file before they load.

# Config keys that define the network and its input: a checkpoint is only valid under the same.
MODEL_KEYS = ("model", "image_height", "image_width")
COMPUTE_ONLY_MODEL_KEYS = ("conv_impl",)
# Model keys added after runs were made: at these values they leave the fingerprint unchanged, so
# workdirs written before the key existed still restore.
LATER_MODEL_KEY_DEFAULTS = {"norm": "batch", "pool": "flatten", "writer_classes": 0, "members": 1}
# The parts of a saved train state that inference reads (the rest is the optimiser's and RNG's).
VARIABLE_KEYS = ("params", "batch_stats")


# ---- The config a workdir was trained with ----------------------------------------------------


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The ConfigDict a workdir was trained with, from the config.json that train.py writes."""
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        raise UserError(f"--workdir {workdir} {what}: pass the workdir of a training run.")
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UserError(
            f"{path} not found: --workdir must be the workdir of a training run "
            "(train.py writes config.json there)."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the training config ({one_line(e)}).") from e
    if not isinstance(doc, dict) or not set(MODEL_KEYS) <= doc.keys():
        raise UserError(
            f"{path} is not a siamjax training config (no image_height, image_width "
            "and model keys)."
        )
    import ml_collections

    return ml_collections.ConfigDict(doc)


# ---- The fingerprint ---------------------------------------------------------------------------


def model_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config keys that make a checkpoint fit a model (stored with every checkpoint)."""
    d = json.loads(config.to_json_best_effort())
    out = {k: d[k] for k in MODEL_KEYS}
    # How convolutions are computed does not change the model (siamjax.conv).
    out["model"] = {
        k: v
        for k, v in out["model"].items()
        if k not in COMPUTE_ONLY_MODEL_KEYS
        and not (k in LATER_MODEL_KEY_DEFAULTS and v == LATER_MODEL_KEY_DEFAULTS[k])
    }
    # The ink mode changes what the model sees; 'raw' (and runs from before the key) add nothing,
    # so the fingerprints of older workdirs are unchanged.
    ink = ink_of(d)
    if ink != "raw":
        out["ink"] = ink
    return out


def ink_of(config: Any) -> str:
    """The ink mode (`config.real.ink`, see siamjax.preprocess) a config or its JSON dict names;
    configs from before the key: 'raw'."""
    real = config.get("real") or {}
    return str(real.get("ink", "raw"))


def check_model_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises if `workdir` holds a run of another model than `config.model` (or of unknown one)."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    mine = model_fingerprint(config)
    if os.path.exists(path):
        with open(path) as f:
            theirs = model_fingerprint(ml_collections.ConfigDict(json.load(f)))
        diffs = [
            f"{k}: {theirs.get(k, 'raw')} there, {mine.get(k, 'raw')} now"
            for k in sorted(theirs.keys() | mine.keys())
            if theirs.get(k) != mine.get(k)
        ]
        if diffs:
            raise UserError(
                f"workdir {workdir} holds a checkpoint of a different model ("
                + "; ".join(diffs)
                + "): use another --workdir."
            )
    elif os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
        os.path.join(workdir, "checkpoints")
    ):
        raise UserError(
            f"workdir {workdir} holds checkpoints but no config.json: cannot tell "
            "which model they are of; use another --workdir."
        )


# ---- Restore -----------------------------------------------------------------------------------


class Restored(NamedTuple):
    """A checkpoint ready for inference, with the calibration saved beside it."""

    model: SiameseNet
    variables: Any  # {"params", "batch_stats"}, replicated on the mesh.
    step: int
    meta: dict[str, Any]  # As train_lib saved it: val_threshold, prior_positive, val_metrics, ...

    @property
    def threshold(self) -> float | None:
        """The threshold chosen on the validation split at this step; None if not validated."""
        t = self.meta.get("val_threshold")
        return None if t is None else float(t)

    @property
    def prior_positive(self) -> float | None:
        """The share of genuine pairs the model was trained on (for log-likelihood ratios)."""
        p = self.meta.get("prior_positive")
        return None if p is None else float(p)


def abstract_variables(
    model: SiameseNet, input_shape: tuple[int, ...], sharding: jax.sharding.Sharding
) -> dict[str, Any]:
    """The shapes (no values) of `model`'s {"params", "batch_stats"} on `sharding`."""
    import jax

    from siamjax import checkpointing, models

    shapes = jax.eval_shape(
        lambda rng: models.init_variables(model, rng, input_shape), jax.random.key(0)
    )
    # A model without BatchNorm has no statistics to read (an empty subtree is not restorable).
    present = {k: shapes[k] for k in VARIABLE_KEYS if jax.tree.leaves(shapes[k])}
    return checkpointing.abstract_with_sharding(present, sharding)


def restore(
    config: ml_collections.ConfigDict, workdir: str, step: int | None, mesh: jax.sharding.Mesh
) -> Restored:
    """The best checkpoint by validation EER (else the newest good one, or `step`) of `workdir`,
    read-only, its parameters and BatchNorm statistics replicated on `mesh`. Another model's
    workdir, or one without checkpoints, is a UserError."""
    from siamjax import checkpointing, models, parallel

    check_model_matches(config, workdir)
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        if step is None and ckpt.latest_step() is None:
            raise UserError(f"{ckpt.directory} holds no checkpoint.")
        model = models.create_model(config.model)
        abstract = abstract_variables(model, models.input_shape(config), parallel.replicated(mesh))
        if step is None:  # A damaged best checkpoint gives way to the newest good one (warned).
            step, variables, meta = ckpt.restore_latest_good(
                abstract, prefer=ckpt.best_step(), partial=True
            )
        else:  # An explicit step is that step or an error.
            variables, meta = ckpt.restore(step, abstract, partial=True)
    finally:
        ckpt.close()
    return Restored(model, {k: variables.get(k, {}) for k in VARIABLE_KEYS}, int(step), meta)
