"""The inference core: restore a trained model read-only, embed images once, score pairs over the
cached embeddings, fuse the scores of K references. Training's validation, `eval.py` (through
`eval_lib`) and `siamjax-verify` all score through here, so a score means the same everywhere.

Each image's embedding is computed once and pairs are scored by the head over the cached
embeddings, gathered a batch at a time, so time and memory grow with images, not pairs. Batches
are padded to one fixed shape with a mask, so inference compiles once whatever the number of
images or pairs.

Not for: training (nothing here imports `siamjax.train_lib`), data pipelines (nothing here imports
TensorFlow, so `siamjax-verify` starts without it), or metric definitions (`siamjax.metrics`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import scipy.special
from jax.experimental import multihost_utils

from siamjax import checkpointing, metrics, models, parallel
from siamjax import pairs as pairs_lib
from siamjax.errors import UserError
from siamjax.models import SiameseNet
from siamjax.train_state import create_train_state

# Config keys that define the network and its input: a checkpoint is only valid under the same.
MODEL_KEYS = ("model", "image_height", "image_width")
COMPUTE_ONLY_MODEL_KEYS = ("conv_impl",)
# Model keys added after runs were made: at these values they leave the fingerprint unchanged, so
# workdirs written before the key existed still restore.
LATER_MODEL_KEY_DEFAULTS = {"norm": "batch", "pool": "flatten"}


# ---- The workdir: model fingerprint, checkpoint ----------------------------------------------


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
    ink = (d.get("real") or {}).get("ink", "raw")
    if ink != "raw":
        out["ink"] = ink
    return out


def check_model_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises if `workdir` holds a run of another model than `config.model` (or of unknown one)."""
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


def restore(
    config: ml_collections.ConfigDict, workdir: str, step: int | None, mesh: jax.sharding.Mesh
) -> Restored:
    """The best checkpoint by validation EER (else the newest good one, or `step`) of `workdir`,
    read-only, replicated on `mesh`. Another model's workdir, or one without checkpoints, is a
    UserError."""
    check_model_matches(config, workdir)
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        if step is None and ckpt.latest_step() is None:
            raise UserError(f"{ckpt.directory} holds no checkpoint.")
        model = models.create_model(config.model)
        # The whole train state's shapes (optimiser state included): it is what was saved.
        abstract = checkpointing.abstract_with_sharding(
            jax.eval_shape(lambda r: create_train_state(config, model, r), jax.random.key(0)),
            parallel.replicated(mesh),
        )
        if step is None:  # A damaged best checkpoint gives way to the newest good one (warned).
            step, state, meta = ckpt.restore_latest_good(abstract, prefer=ckpt.best_step())
        else:  # An explicit step is that step or an error.
            state, meta = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return Restored(model, variables, int(step), meta)


# ---- Embedding and scoring ---------------------------------------------------------------------


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index batches over range(n), the last padded by repeating index 0, with a validity mask.

    Every batch has `batch_size` rows, so inference compiles once whatever n is.
    Yields (indices int32 [batch_size], mask bool [batch_size]).
    """
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n), dtype=np.int32)
        mask = np.ones(batch_size, bool)
        mask[len(idx) :] = False
        yield np.pad(idx, (0, batch_size - len(idx))), mask


class Scorer:
    """Jitted, sharded embedding and head functions of one model on one mesh.

    A mesh over every process's devices (training, eval.py) takes each process's share of a batch
    and gathers the results on every process; a mesh of this process's devices (siamjax-verify)
    feeds whole batches.
    """

    def __init__(self, model: SiameseNet, mesh: jax.sharding.Mesh, batch_size: int):
        parallel.check_batch_size(batch_size, mesh, "eval_batch_size")
        self._spans_processes = len({d.process_index for d in mesh.devices.flat}) > 1
        self.mesh, self.batch_size = mesh, batch_size
        self._data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
        self._embed = jax.jit(
            lambda v, x: model.apply(v, x, method=SiameseNet.embed),
            in_shardings=(rep, self._data),
            out_shardings=self._data,
        )
        self._score = jax.jit(
            lambda v, e1, e2: model.apply(v, e1, e2, method=SiameseNet.score),
            in_shardings=(rep, self._data, self._data),
            out_shardings=self._data,
        )

    def _run(
        self, fn, variables, take: Callable[[np.ndarray], dict[str, np.ndarray]], n: int
    ) -> np.ndarray:
        """`fn` over rows 0..n-1 in fixed-shape batches. `take(indices)` returns this process's
        rows of one batch: inputs are gathered a batch at a time, never all n rows at once."""
        rows = parallel.local_rows(self.batch_size) if self._spans_processes else slice(None)
        out = []
        for idx, mask in padded_batches(n, self.batch_size):
            if self._spans_processes:
                batch = parallel.to_global(take(idx[rows]), self.mesh)
            else:
                batch = jax.device_put(take(idx), self._data)
            result = fn(variables, *batch.values())
            if self._spans_processes:
                result = multihost_utils.process_allgather(result, tiled=True)
            out.append(np.asarray(result)[mask])
        return np.concatenate(out)

    def embeddings(self, variables: Any, images: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, 1] -> float32 [n, D], in evaluation mode."""
        return self._run(self._embed, variables, lambda i: {"x": images[i]}, len(images))

    def score_embeddings(self, variables: Any, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
        """The head's logits [n] of embedding pairs e1, e2 [n, D] (e1 the reference's)."""
        return self._run(self._score, variables, lambda i: {"e1": e1[i], "e2": e2[i]}, len(e1))

    def logits(self, variables: Any, images: np.ndarray, pairs: pairs_lib.Pairs) -> np.ndarray:
        """Logits [len(pairs)] of pairs of indices into `images`, embedding each image once.

        The head's inputs are gathered from the cached embeddings one batch at a time, so memory
        grows with the images, not the pairs: no [len(pairs), D] array is ever made.
        """
        used = np.unique(np.concatenate([pairs.a, pairs.b]))  # Sorted: positions by searchsorted.
        emb = self._run(self._embed, variables, lambda i: {"x": images[used[i]]}, len(used))
        pos_a = np.searchsorted(used, pairs.a).astype(np.int32)
        pos_b = np.searchsorted(used, pairs.b).astype(np.int32)
        return self._run(
            self._score,
            variables,
            lambda i: {"e1": emb[pos_a[i]], "e2": emb[pos_b[i]]},
            len(pairs),
        )


def probabilities(logits: np.ndarray) -> np.ndarray:
    """The head's logits -> probabilities that pairs are genuine, [n] float64.

    The sigmoid is taken in float32, the head's precision, by every caller alike, so that a score
    is bit for bit the one its threshold was chosen on.
    """
    return np.asarray(scipy.special.expit(np.asarray(logits, np.float32)), np.float64)


# ---- K references ------------------------------------------------------------------------------


def trial_scores(
    scorer: Scorer,
    variables: Any,
    images: np.ndarray,
    trials: pairs_lib.Trials,
    fusion: str = "mean",
) -> np.ndarray:
    """Score in (0, 1) of each trial: its K reference scores fused by `fusion`. [n] float64."""
    k = trials.references.shape[1]
    logits = scorer.logits(variables, images, trials.as_pairs())
    scores = probabilities(logits).reshape(len(trials), k)
    return metrics.fuse_scores(scores, fusion) if k > 1 else scores[:, 0]


def enrollment_means(
    scorer: Scorer, variables: Any, images: np.ndarray, trials: pairs_lib.Trials
) -> np.ndarray:
    """Per trial, the mean score of its K references scored against each other. [n] float64.

    It is what this writer's genuine signatures score among themselves, known from enrolment
    alone (no questioned signature, no label), so a per-writer threshold can be set from it.
    """
    k = trials.references.shape[1]
    if k < 2:
        raise UserError("per-writer thresholds need config.eval.references >= 2.")
    sets, inverse = np.unique(trials.references, axis=0, return_inverse=True)
    i, j = np.nonzero(~np.eye(k, dtype=bool))
    a, b = sets[:, i].reshape(-1), sets[:, j].reshape(-1)
    pairs = pairs_lib.Pairs(
        a.astype(np.int32),
        b.astype(np.int32),
        np.ones_like(a, np.int32),
        np.zeros_like(a, np.int32),
    )
    scores = probabilities(scorer.logits(variables, images, pairs)).reshape(len(sets), -1)
    return scores.mean(axis=1)[np.reshape(inverse, -1)]
