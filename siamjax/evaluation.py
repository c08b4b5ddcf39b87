"""The one evaluation of siamjax: trials -> scores -> a threshold chosen on validation -> metrics.

Training's validation (`siamjax.train_lib`) and `eval.py` (`siamjax.eval_lib`) both call `evaluate`,
so a number means the same in summary.json, in a checkpoint's metadata and in metrics.json. The
steps stay separable, so that each can be swapped without touching the others:

1. make trials: `siamjax.data.Data.trials` (fixed pairs, or K-reference trials), or any `Trials`;
2. score them: a `TrialSet`'s `score` is any function of trials -> probabilities over the images the
   trials index (the model's, `siamjax.inference.TrialScores`; a non-neural baseline's alike), and
   its optional `enrol` gives each trial an offset known from its references alone (per-writer
   thresholds);
3. choose the threshold on validation (`choose_threshold`), unless one is given (the one saved with
   the checkpoint);
4. metrics (`siamjax.metrics.compute_metrics`).

Plain numpy: no JAX, no TensorFlow, no files. Not for: scoring with a model (`siamjax.inference`),
loading data (`siamjax.data`) or reporting (`siamjax.report`: tables, plots, files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from siamjax import metrics, scoring
from siamjax.pairs import Trials

# trials -> [n] float64 scores in (0, 1), over the images the trials index.
ScoreFn = Callable[[Trials], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrialSet:
    """Trials over one set of images, with what scores them."""

    trials: Trials
    writer: np.ndarray  # [n_images] writer of each image: a trial claims its references' writer.
    score: ScoreFn
    # trials -> [n] an offset per trial from its references alone (no questioned image, no label):
    # what the claimed writer's genuine signatures score among themselves. Needed for per_writer.
    enrol: ScoreFn | None = None


@dataclasses.dataclass(frozen=True)
class Scored:
    """A TrialSet's scores (moved per writer when evaluated so)."""

    trials: Trials
    scores: np.ndarray  # [n] float64 in (0, 1)
    claimed: np.ndarray  # [n] claimed writer of each trial
    offsets: np.ndarray | None = None  # [n] enrolment offsets, when per-writer


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The metrics of one evaluated set, and the scores and threshold behind them."""

    metrics: dict[str, float]
    scored: Scored
    threshold: float


def score(trial_set: TrialSet, per_writer: bool = False) -> Scored:
    """Step 2: the set's scores (and, `per_writer`, its enrolment offsets)."""
    trials = trial_set.trials
    offsets = None
    if per_writer:
        if trial_set.enrol is None:
            raise ValueError("per-writer thresholds need a TrialSet with an `enrol` function.")
        offsets = np.asarray(trial_set.enrol(trials), np.float64)
    claimed = trial_set.writer[trials.references[:, 0]]
    return Scored(trials, np.asarray(trial_set.score(trials), np.float64), claimed, offsets)


def moved_per_writer(scored: Scored, center: float) -> Scored:
    """Each writer's scores moved by (center - its enrolment offset): one threshold over the moved
    scores is a threshold per writer over the raw ones (`siamjax.scoring.shifted`)."""
    moved = scoring.shifted(scored.scores, center - scored.offsets)
    return dataclasses.replace(scored, scores=moved)


def choose_threshold(scored: Scored) -> float:
    """Step 3: the operating threshold on (validation) scores, `metrics.operating_threshold`."""
    return metrics.operating_threshold(scored.scores, scored.trials.kind)


def evaluate(
    target: TrialSet,
    prior_positive: float,
    *,
    threshold: float | None = None,
    validation: TrialSet | None = None,
    per_writer: bool = False,
) -> Evaluation:
    """Metrics of `target` at `threshold`, or at the threshold chosen on `validation`'s scores.

    Without `threshold`, the threshold is chosen on `validation`, or, when that is None, on the
    target itself (training's validation split, which is where the saved threshold comes from).
    With `per_writer`, scores are moved per writer by their enrolment offsets around the mean
    offset of the set the threshold is chosen on, and the threshold is always chosen anew on the
    moved scores. `prior_positive` is the training prior the scores' llrs are read at (Cllr).
    """
    choose = threshold is None or per_writer
    val = score(validation, per_writer) if choose and validation is not None else None
    scored = score(target, per_writer)
    if per_writer:
        center = float(np.mean((val if val is not None else scored).offsets))
        scored = moved_per_writer(scored, center)
        val = moved_per_writer(val, center) if val is not None else None
    if choose:
        threshold = choose_threshold(val if val is not None else scored)
    results = metrics.compute_metrics(
        scored.scores, scored.trials.kind, scored.claimed, float(threshold), prior_positive
    )
    return Evaluation(results, scored, float(threshold))
