"""Score maths shared by every scorer: the head's logits as probabilities, the fusion of K
references' scores into one, and scores read as log-likelihood ratios at the training prior.

Validation, `eval.py`, `siamjax-verify`, the export and the service all turn logits into decisions
through here, so a score and its llr mean the same everywhere. Plain numpy and scipy (no JAX, no
TensorFlow), so the verifier's decisions and the metrics (`siamjax.metrics`, which imports this
module) share one definition. Not for: running a model (`siamjax.inference`) or metrics over a set
of scores (`siamjax.metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.special

# How the scores of one questioned signature against K references become one (`fuse_scores`).
FUSE_METHODS: tuple[str, ...] = ("mean", "max", "min")

# Scores are clipped to [LLR_EPS, 1 - LLR_EPS] before the logit: |logit| <= ~16.1 nats. float32
# sigmoids saturate to exactly 1.0 beyond a logit of ~17, so little information is lost.
LLR_EPS = 1e-7


def as_scores(x: Any, name: str, allow_inf: bool = False) -> np.ndarray:
    """-> float64 [n]; raises on a wrong rank or non-finite values (see `siamjax.metrics`)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {a.shape}.")
    bad = np.isnan(a) if allow_inf else ~np.isfinite(a)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} {'NaN' if allow_inf else 'non-finite'} value(s), the "
            f"first at index {first} ({a[first]}); a diverged model? Metrics need real scores."
        )
    return a


def probabilities(logits: Any) -> np.ndarray:
    """The head's logits -> probabilities that pairs are genuine, [n] float64.

    The sigmoid is taken in float32, the head's precision, by every caller alike, so that a score
    is bit for bit the one its threshold was chosen on.
    """
    return np.asarray(scipy.special.expit(np.asarray(logits, np.float32)), np.float64)


def fuse_scores(scores_matrix: Any, method: str = "mean") -> np.ndarray:
    """One score per questioned signature from its scores against K references of the claimed
    writer.

    'mean' averages the K probabilities (smooths one odd reference), 'max' accepts if any reference
    matches well (lenient: raises FAR), 'min' needs all to match (strict: raises FRR). NaN entries
    mean "no such reference" (pad rows of writers with fewer references) and are ignored.

    Args:
      scores_matrix: [n, K] scores, each row with at least one non-NaN entry.
      method: one of FUSE_METHODS.

    Returns:
      [n] float64 fused scores.
    """
    m = np.asarray(scores_matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(
            f"fuse_scores needs a [n_questioned, n_references] matrix, got shape {m.shape}."
        )
    if method not in FUSE_METHODS:
        raise ValueError(f"fuse_scores method={method!r} is unknown; use one of {FUSE_METHODS}.")
    present = ~np.isnan(m)
    if m.shape[1] == 0 or not present.any(axis=1).all():
        empty = np.flatnonzero(~present.any(axis=1)) if m.shape[1] else np.arange(m.shape[0])
        raise ValueError(
            f"fuse_scores: row(s) {empty[:5].tolist()} have no reference score (all NaN or K=0)."
        )
    if method == "mean":
        return np.nanmean(m, axis=1)
    if method == "max":
        return np.nanmax(m, axis=1)
    return np.nanmin(m, axis=1)


def llr(scores: Any, prior_positive: float, eps: float = LLR_EPS) -> np.ndarray:
    """Natural-log likelihood ratio of each score, read as a posterior at the training prior.

    A sigmoid trained with BCE on pairs that are genuine with probability `prior_positive` outputs
    P(genuine | pair) at that prior, so by Bayes' rule
      llr = ln p(pair | genuine) / p(pair | forgery) = logit(s) - logit(prior_positive).
    Scores are clipped to [eps, 1 - eps] first so that saturated sigmoids give finite values.

    Args:
      scores: [n] probabilities in [0, 1].
      prior_positive: share of genuine pairs the model was trained on (config.pairs.positive).
      eps: clipping of the scores, see LLR_EPS.

    Returns:
      [n] float64 llr in nats.
    """
    s = as_scores(scores, "scores")
    if not 0.0 < prior_positive < 1.0:
        raise ValueError(f"prior_positive={prior_positive} must lie strictly between 0 and 1.")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"llr needs probabilities in [0, 1], got scores in [{s.min()}, {s.max()}]."
        )
    logit = scipy.special.logit
    return logit(np.clip(s, eps, 1.0 - eps)) - float(logit(prior_positive))


def shifted(scores: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """`scores` moved by `delta` and kept probabilities (clipped to [1e-6, 1 - 1e-6]): moving a
    writer's scores by (m - m_w) under one threshold is moving that writer's threshold by
    (m_w - m), and every metric still applies to the moved scores."""
    return np.clip(scores + delta, 1e-6, 1.0 - 1e-6)
