"""The inference core: embed images once, score pairs over the cached embeddings, fuse the scores of
K references. Training's validation, `eval.py` (through `siamjax.evaluation`) and `siamjax-verify`
all score through here, so a score means the same everywhere.

Each image's embedding is computed once and pairs are scored by the head over the cached
embeddings, gathered a batch at a time, so time and memory grow with images, not pairs. Batches
are padded to one fixed shape with a mask, so inference compiles once whatever the number of
images or pairs.

Not for: restoring a workdir's model (`siamjax.workdir`), training (nothing here imports
`siamjax.train_lib` or builds an optimiser), data pipelines (nothing here imports TensorFlow, so
`siamjax-verify` starts without it), score maths (`siamjax.scoring`) or metric definitions
(`siamjax.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from siamjax import pairs as pairs_lib
from siamjax import parallel, scoring
from siamjax.errors import UserError
from siamjax.models import SiameseNet

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
    scores = scoring.probabilities(logits).reshape(len(trials), k)
    return scoring.fuse_scores(scores, fusion) if k > 1 else scores[:, 0]


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
    scores = scoring.probabilities(scorer.logits(variables, images, pairs)).reshape(len(sets), -1)
    return scores.mean(axis=1)[np.reshape(inverse, -1)]


class TrialScores:
    """A model's scores of trials over one set of images: the `score` (and `enrol`) of a
    `siamjax.evaluation.TrialSet`."""

    def __init__(self, scorer: Scorer, variables: Any, images: np.ndarray, fusion: str = "mean"):
        self.scorer, self.variables, self.images, self.fusion = scorer, variables, images, fusion

    def __call__(self, trials: pairs_lib.Trials) -> np.ndarray:
        """[n] float64: `trial_scores`."""
        return trial_scores(self.scorer, self.variables, self.images, trials, self.fusion)

    def enrol(self, trials: pairs_lib.Trials) -> np.ndarray:
        """[n] float64: `enrollment_means`."""
        return enrollment_means(self.scorer, self.variables, self.images, trials)


class EnrolledScores:
    """A model's scores of K-reference trials through a writer enrolment (`siamjax.enrollment`):
    each distinct reference set (one per writer) is enrolled once on its embeddings, then scores
    its questioned signatures. The `score` of a `siamjax.evaluation.TrialSet`.

    `negatives` [N] indices into `images` of other writers' genuine signatures (the training
    split's), for `enrollment.WITH_NEGATIVES`; `combine`, the weights of `enrollment.COMBINED`
    methods (eval.py fits them on `components` of validation trials). With method 'none' the
    scores equal `TrialScores`'.
    """

    def __init__(
        self,
        scorer: Scorer,
        variables: Any,
        images: np.ndarray,
        method: str,
        fusion: str = "mean",
        negatives: np.ndarray | None = None,
        negative_images: np.ndarray | None = None,
        combine: tuple[float, float, float] | None = None,
    ):
        self.scorer, self.variables, self.images = scorer, variables, images
        self.method, self.fusion, self.combine = method, fusion, combine
        # The last trials' `components` and those trials: eval.py fits COMBINED weights on
        # validation's components, then scores the same trials from them.
        self._parts: tuple[pairs_lib.Trials, np.ndarray] | None = None
        self.negatives = None
        if negatives is not None and len(negatives):
            source = images if negative_images is None else negative_images
            self.negatives = self.scorer.embeddings(variables, source[np.asarray(negatives)])

    def pair_logits(self, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
        """The head's logits [n] of reference embeddings e1 against questioned e2, [n, D]."""
        return self.scorer.score_embeddings(self.variables, e1, e2)

    def __call__(self, trials: pairs_lib.Trials) -> np.ndarray:
        """[n] float64 scores in (0, 1), each trial scored by its writer's enrolment."""
        from siamjax import enrollment

        if self.method in enrollment.COMBINED:
            return enrollment.combined(self.method, self.components(trials), self.combine)
        return self._per_writer(trials, enrollment.score, ())

    def components(self, trials: pairs_lib.Trials) -> np.ndarray:
        """[n, 2] float64 `enrollment.components` of each trial (COMBINED methods); the last
        trials' are kept, so that fitting and scoring them embeds and enrols them once."""
        from siamjax import enrollment

        last = self._parts
        if last is None or not _same_trials(last[0], trials):
            self._parts = (trials, self._per_writer(trials, enrollment.components, (2,)))
        return self._parts[1]

    def _per_writer(self, trials: pairs_lib.Trials, fn, shape: tuple[int, ...]) -> np.ndarray:
        """fn(enrolment, questioned embeddings, pair_logits) over each distinct reference set,
        enrolled once, -> float64 [n, *shape] in trial order."""
        from siamjax import enrollment

        enrollment.check_method(self.method, trials.references.shape[1])
        used = np.unique(np.concatenate([trials.references.reshape(-1), trials.questioned]))
        emb = self.scorer.embeddings(self.variables, self.images[used])
        at = lambda idx: emb[np.searchsorted(used, idx)]  # noqa: E731
        sets, inverse = np.unique(trials.references, axis=0, return_inverse=True)
        inverse = np.reshape(inverse, -1)
        out = np.empty((len(trials), *shape), np.float64)
        for s, refs in enumerate(sets):
            rows = np.flatnonzero(inverse == s)
            enrolled = enrollment.enroll(
                self.method,
                at(refs),
                self.pair_logits,
                fusion=self.fusion,
                negatives=self.negatives,
                combine=self.combine,
            )
            out[rows] = fn(enrolled, at(trials.questioned[rows]), self.pair_logits)
        return out


def _same_trials(a: pairs_lib.Trials, b: pairs_lib.Trials) -> bool:
    """Whether two trial lists pair the same references with the same questioned images."""
    return np.array_equal(a.references, b.references) and np.array_equal(a.questioned, b.questioned)
