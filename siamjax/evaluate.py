"""Scores and metrics, shared by training (validation) and eval.py (any split).

Each image's embedding is computed once and pairs are scored by the head over the cached
embeddings, gathered a batch at a time, so time and memory grow with images, not pairs. Batches
are padded to one fixed shape with a mask, so evaluation compiles once. Metric definitions live in
`siamjax.evaluate_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from siamjax import evaluate_metrics, parallel
from siamjax import pairs as pairs_lib
from siamjax.errors import UserError
from siamjax.input_pipeline import padded_batches
from siamjax.models import SiameseNet


class Scorer:
    """Jitted, sharded embedding and head functions of one model on one mesh."""

    def __init__(self, model: SiameseNet, mesh: jax.sharding.Mesh, batch_size: int):
        parallel.check_batch_size(batch_size, mesh, "eval_batch_size")
        self.mesh, self.batch_size = mesh, batch_size
        data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
        self._embed = jax.jit(lambda v, x: model.apply(v, x, method=SiameseNet.embed),
                              in_shardings=(rep, data), out_shardings=data)
        self._score = jax.jit(lambda v, e1, e2: model.apply(v, e1, e2, method=SiameseNet.score),
                              in_shardings=(rep, data, data), out_shardings=data)

    def _run(self, fn, variables, take: Callable[[np.ndarray], dict[str, np.ndarray]],
             n: int) -> np.ndarray:
        """`fn` over rows 0..n-1 in fixed-shape batches. `take(indices)` returns this process's
        rows of one batch: inputs are gathered a batch at a time, never all n rows at once."""
        rows = parallel.local_rows(self.batch_size)
        out = []
        for idx, mask in padded_batches(n, self.batch_size):
            batch = parallel.to_global(take(idx[rows]), self.mesh)
            result = fn(variables, *batch.values())
            if jax.process_count() > 1:
                result = multihost_utils.process_allgather(result, tiled=True)
            out.append(np.asarray(result)[mask])
        return np.concatenate(out)

    def embeddings(self, variables: Any, images: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, 1] -> float32 [n, D], in evaluation mode."""
        return self._run(self._embed, variables, lambda i: {"x": images[i]}, len(images))

    def logits(self, variables: Any, images: np.ndarray, pairs: pairs_lib.Pairs) -> np.ndarray:
        """Logits [len(pairs)] of pairs of indices into `images`, embedding each image once.

        The head's inputs are gathered from the cached embeddings one batch at a time, so memory
        grows with the images, not the pairs: no [len(pairs), D] array is ever made.
        """
        used = np.unique(np.concatenate([pairs.a, pairs.b]))  # Sorted: positions by searchsorted.
        emb = self._run(self._embed, variables, lambda i: {"x": images[used[i]]}, len(used))
        pos_a = np.searchsorted(used, pairs.a).astype(np.int32)
        pos_b = np.searchsorted(used, pairs.b).astype(np.int32)
        return self._run(self._score, variables,
                         lambda i: {"e1": emb[pos_a[i]], "e2": emb[pos_b[i]]}, len(pairs))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)), np.float64)


def metrics_for(scores: np.ndarray, kind: np.ndarray, claimed_writer: np.ndarray,
                threshold: float | None, prior_positive: float) -> dict[str, float]:
    """All metrics of `siamjax.evaluate_metrics` for scored pairs or trials (kind codes of
    `siamjax.pairs`). With `threshold=None` the threshold is the EER threshold of these very
    scores (only right for validation)."""
    if threshold is None:
        threshold = threshold_from(scores, kind)
    return evaluate_metrics.compute_metrics(scores, np.asarray(pairs_lib.KIND_NAMES)[kind],
                                            claimed_writer, threshold=threshold,
                                            prior_positive=prior_positive)


def threshold_from(scores: np.ndarray, kind: np.ndarray) -> float:
    """The EER threshold (genuine vs skilled, else vs all negatives) of validation scores."""
    pos = scores[kind == pairs_lib.GENUINE]
    neg = scores[kind == pairs_lib.SKILLED]
    if len(neg) == 0:
        neg = scores[kind != pairs_lib.GENUINE]
    return float(evaluate_metrics.threshold_at_eer(pos, neg))


def trial_scores(scorer: Scorer, variables: Any, images: np.ndarray, trials: pairs_lib.Trials,
                 fusion: str = "mean") -> np.ndarray:
    """Score in (0, 1) of each trial: its K reference scores fused by `fusion`. [n] float64."""
    k = trials.references.shape[1]
    scores = sigmoid(scorer.logits(variables, images, trials.as_pairs())).reshape(len(trials), k)
    return evaluate_metrics.fuse_scores(scores, fusion) if k > 1 else scores[:, 0]


def enrollment_means(scorer: Scorer, variables: Any, images: np.ndarray,
                     trials: pairs_lib.Trials) -> np.ndarray:
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
    pairs = pairs_lib.Pairs(a.astype(np.int32), b.astype(np.int32), np.ones_like(a, np.int32),
                            np.zeros_like(a, np.int32))
    scores = sigmoid(scorer.logits(variables, images, pairs)).reshape(len(sets), -1)
    return scores.mean(axis=1)[np.reshape(inverse, -1)]
