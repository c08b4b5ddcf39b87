"""Metric definitions: verification metrics on pair scores, in plain numpy, so that every reported
number has one definition.

For: turning scores of (reference, questioned) pairs into FRR, FAR, EER, AUC, Cllr and friends, for
training-time validation, `eval.py`, benchmarks and notebooks alike, and writing them as JSON. Not
for: computing scores (`siamjax.inference`), fusing them or reading them as llrs
(`siamjax.scoring`, which this module imports), choosing pairs (`siamjax.pairs`, which owns
the pair kinds) or drawing curves (`siamjax.plots`). No JAX or TensorFlow here, so the module
imports in a blink and can be checked against scikit-learn.

Conventions shared by every function:
- A score s is the model's probability that a pair is genuine (sigmoid output, in (0, 1)); higher
  means "more genuine". Only `llr` needs s to be a probability; the rest use the order of scores.
- Decision rule: ACCEPT the pair as genuine iff s >= threshold. A score equal to the threshold is
  accepted, so ties are decided the same way everywhere (as in luizgh/sigver and scikit-learn).
- pos = scores of genuine pairs (questioned written by the claimed writer); neg = scores of
  forgeries: 'skilled' (questioned is a skilled forgery of the claimed writer) or 'random'
  (questioned is a genuine signature of another writer).
- FRR(t) = #{pos < t} / n_pos, FAR(t) = #{neg >= t} / n_neg.
- A metric that needs a class with no scores returns NaN instead of raising, so that an evaluation
  set without, say, random forgeries still yields every other number.
- A NaN or infinite score raises ValueError: it means a diverged model, and silently counting it as
  an acceptance or a rejection would hide that.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.special

# The kind of a pair, as int codes; `kind_codes` accepts their names too.
from siamjax.pairs import GENUINE, KIND_NAMES, RANDOM, SKILLED

# Score maths has its owner, `siamjax.scoring` (fusion, llrs); Cllr reads its llrs.
from siamjax.scoring import as_scores as _scores
from siamjax.scoring import llr

_NAN = float("nan")


# ---- ROC and error rates ----------------------------------------------------------------------


def roc_curve(pos_scores: Any, neg_scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operating point of the rule "accept iff score >= t", exactly, ties included.

    Args:
      pos_scores: [n_pos] genuine-pair scores (n_pos >= 1).
      neg_scores: [n_neg] forgery scores (n_neg >= 1).

    Returns:
      (far, frr, thresholds), each [m + 1] float64, where m is the number of distinct scores:
      thresholds = [+inf, distinct scores in decreasing order]; far[k] = #{neg >= t_k} / n_neg,
      frr[k] = #{pos < t_k} / n_pos. The first point (t = +inf) rejects everything (FAR 0, FRR 1),
      the last (t = the lowest score) accepts everything (FAR 1, FRR 0). No point is dropped, so
      far == sklearn's fpr and 1 - frr == its tpr with `drop_intermediate=False`. Tied pos and neg
      scores make one point jump in both FAR and FRR: joining consecutive points by straight lines
      gives the ROC of randomly breaking those ties, which is how `eer` and `auc` read the curve.

    Raises:
      ValueError: if either class is empty (a curve needs both).
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"roc_curve needs genuine and forgery scores, got {pos.size} and {neg.size}."
        )
    n_fa, n_fr, thresholds = _roc_counts(pos, neg)
    return n_fa / neg.size, n_fr / pos.size, thresholds


def _roc_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`roc_curve` as integer counts #{neg >= t}, #{pos < t}, for exact comparisons."""
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([pos, neg]))[::-1]])
    n_fa = neg.size - np.searchsorted(np.sort(neg), thresholds, side="left")
    n_fr = np.searchsorted(np.sort(pos), thresholds, side="left")
    return n_fa, n_fr, thresholds


def _crossing(far: np.ndarray, frr: np.ndarray) -> float:
    """Where the polyline through (far[k], frr[k]) meets FAR == FRR.

    Needs d = far - frr non-decreasing along k with d[0] < 0 <= d[-1], true of any ROC ordered by
    decreasing threshold; d is then strictly increasing on every non-empty segment, so the crossing
    point is unique.
    """
    d = far - frr
    j = int(np.argmax(d >= 0))  # First point at or past the crossing; j >= 1 as d[0] < 0.
    if d[j] == 0:
        return float(far[j])
    alpha = -d[j - 1] / (d[j] - d[j - 1])
    return float(far[j - 1] + alpha * (far[j] - far[j - 1]))


def eer(pos_scores: Any, neg_scores: Any) -> tuple[float, float]:
    """Equal error rate with one global threshold: the headline figure of the field.

    Definition: join the points of `roc_curve` (ties included) by straight lines, in order of
    decreasing threshold; EER is the (unique) FAR = FRR on that polyline. Between two adjacent
    points the line is the error rates of randomly choosing between their two thresholds, so the
    EER is an achievable operating point, not an average of two. It is neither the ROC-convex-hull
    EER of BOSARIS (see `eer_rocch`, never larger) nor sigver's `compute_EER`, which takes
    (FAR + FRR) / 2 at the threshold chosen below (the same number when FAR = FRR exactly at
    that threshold).

    The returned threshold is the distinct score t whose (FAR(t), FRR(t)) is closest to equal,
    argmin |FAR - FRR| (sigver's rule, compared exactly on counts); of two equally close ones the
    higher (stricter) threshold wins, as in sigver. It is one end of the segment holding the EER,
    so on these scores its FAR and FRR lie on either side of the EER. Use it (from validation
    scores) as the operating threshold.

    Args:
      pos_scores: [n_pos] genuine-pair scores.
      neg_scores: [n_neg] forgery scores.

    Returns:
      (eer, threshold) as floats; (NaN, NaN) if either class is empty.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    if pos.size == 0 or neg.size == 0:
        return _NAN, _NAN
    n_fa, n_fr, thresholds = _roc_counts(pos, neg)
    # |FAR - FRR| * n_pos * n_neg in integers, so that equal gaps tie exactly. Skip the +inf point:
    # a threshold must be a number a caller can apply. np.argmin returns the first minimum, i.e.
    # the highest threshold among ties.
    gap = np.abs(n_fa[1:] * pos.size - n_fr[1:] * neg.size)
    k = 1 + int(np.argmin(gap))
    return _crossing(n_fa / neg.size, n_fr / pos.size), float(thresholds[k])


def threshold_at_eer(pos_scores: Any, neg_scores: Any) -> float:
    """The global EER threshold (see `eer`): choose it on validation pairs, apply it to test pairs.

    Returns NaN if either class is empty; `frr`, `far` and `accuracy` then return NaN too.
    """
    return eer(pos_scores, neg_scores)[1]


def _pav_blocks(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators on y ordered by x, with tied x pooled first.

    Returns (sums [B], weights [B], block_of [n]): the blocks of the non-decreasing least-squares
    fit in increasing order of x, the sum of y and the number of samples in each, and the block of
    every sample. The fitted value of a sample is sums[b] / weights[b].
    """
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    group_sums = np.bincount(inverse, weights=y, minlength=uniq.size)
    sums: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []  # Number of distinct x values pooled in each block.
    for s, w in zip(group_sums.tolist(), counts.tolist(), strict=True):
        sums.append(s)
        weights.append(w)
        sizes.append(1)
        # Pool while the previous mean exceeds the last (cross-multiplied: weights are positive).
        while len(sums) > 1 and sums[-2] * weights[-1] > sums[-1] * weights[-2]:
            s_last, w_last, n_last = sums.pop(), weights.pop(), sizes.pop()
            sums[-1] += s_last
            weights[-1] += w_last
            sizes[-1] += n_last
    block_of_group = np.repeat(np.arange(len(sizes)), sizes)
    return np.asarray(sums), np.asarray(weights, dtype=np.float64), block_of_group[inverse]


def pav(x: Any, y: Any) -> np.ndarray:
    """Isotonic (non-decreasing) least-squares fit of y on x, by pool-adjacent-violators.

    With y = 1 for genuine and 0 for forgery this is the best monotonic calibration of scores x into
    posteriors (used by `min_cllr` and `eer_rocch`). Tied x values are pooled before PAV runs, so
    they always receive the same fitted value (as in sklearn's IsotonicRegression).

    Args:
      x: [n] real values (scores).
      y: [n] real targets.

    Returns:
      [n] float64 fitted values, in the order of x.
    """
    xs = _scores(x, "x")
    ys = _scores(y, "y")
    if xs.shape != ys.shape:
        raise ValueError(f"pav: x and y differ in shape: {xs.shape} vs {ys.shape}.")
    if xs.size == 0:
        return np.zeros(0)
    sums, weights, block_of = _pav_blocks(xs, ys)
    return (sums / weights)[block_of]


def _labelled(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([pos, neg]), np.concatenate([np.ones(pos.size), np.zeros(neg.size)])


def eer_rocch(pos_scores: Any, neg_scores: Any) -> float:
    """EER of the ROC convex hull (BOSARIS's `rocch2eer`, Brümmer & de Villiers 2011).

    Definition: FAR = FRR where the lower-left convex hull of the `roc_curve` points meets the
    diagonal. A hull point is reached by choosing at random, pair by pair, between two (not
    necessarily adjacent) thresholds, so this is the lowest EER the scores' ordering allows: it is
    <= `eer`, and reported for comparison with speaker-verification style results. The hull
    vertices are the block boundaries of PAV on (score, is_genuine), the equivalence BOSARIS uses.

    Returns NaN if either class is empty.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    if pos.size == 0 or neg.size == 0:
        return _NAN
    x, y = _labelled(pos, neg)
    n_pos_block, n_block, _ = _pav_blocks(x, y)
    n_neg_block = n_block - n_pos_block
    # Reject the k lowest blocks, k = B .. 0, i.e. thresholds from above everything downwards.
    frr = np.concatenate([[0.0], np.cumsum(n_pos_block)])[::-1] / pos.size
    far = np.concatenate([[0.0], np.cumsum(n_neg_block[::-1])]) / neg.size
    return _crossing(far, frr)


def auc(pos_scores: Any, neg_scores: Any) -> float:
    """Area under the ROC: P(pos > neg) + P(pos == neg) / 2 over all (pos, neg) pairs.

    This Mann-Whitney form counts a tie as half, which equals the trapezoid area under
    `roc_curve` and sklearn's `roc_auc_score`. Returns NaN if either class is empty.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    if pos.size == 0 or neg.size == 0:
        return _NAN
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    at_or_below = np.searchsorted(neg_sorted, pos, side="right")
    wins = below.sum() + 0.5 * (at_or_below - below).sum()
    return float(wins / (pos.size * neg.size))


def frr(pos_scores: Any, threshold: float) -> float:
    """False rejection rate #{pos < t} / n_pos at a threshold chosen elsewhere (on validation).

    NaN if there are no scores or the threshold is NaN.
    """
    pos = _scores(pos_scores, "pos_scores")
    if pos.size == 0 or math.isnan(threshold):
        return _NAN
    return float(np.mean(pos < threshold))


def far(neg_scores: Any, threshold: float) -> float:
    """False acceptance rate #{neg >= t} / n_neg; pass skilled or random forgeries for FAR_skilled
    or FAR_random. NaN if there are no scores or the threshold is NaN."""
    neg = _scores(neg_scores, "neg_scores")
    if neg.size == 0 or math.isnan(threshold):
        return _NAN
    return float(np.mean(neg >= threshold))


def accuracy(pos_scores: Any, neg_scores: Any, threshold: float) -> float:
    """(#{pos >= t} + #{neg < t}) / (n_pos + n_neg): the share of all given pairs decided right.

    Unbalanced on purpose (every pair counts once), unlike `oracle_accuracy`; so it depends on the
    mix of kinds in the evaluation set. NaN if there are no pairs or the threshold is NaN.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    n = pos.size + neg.size
    if n == 0 or math.isnan(threshold):
        return _NAN
    return float((np.sum(pos >= threshold) + np.sum(neg < threshold)) / n)


def oracle_accuracy(pos_scores: Any, neg_scores: Any) -> float:
    """ORACLE figure: max over all thresholds t of the balanced accuracy 1 - (FAR(t) + FRR(t)) / 2.

    This is the "accuracy" SigNet-style papers report (max of (TPR + TNR) / 2 over thresholds). The
    threshold is chosen on the very pairs it is scored on, so it overstates what a deployed system
    gets; report it only for comparison with those papers. Thresholds range over every distinct
    score plus +inf (reject all, 0.5). NaN if either class is empty.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    if pos.size == 0 or neg.size == 0:
        return _NAN
    far_, frr_, _ = roc_curve(pos, neg)
    return float(np.max(1.0 - 0.5 * (far_ + frr_)))


def eer_user(pos_scores: Any, neg_scores: Any, pos_writers: Any, neg_writers: Any) -> float:
    """EER with writer-specific thresholds, as sigver's `calculate_EER_user_thresholds`.

    Definition: for each writer u with at least one genuine and one forgery pair, t_u is the `eer`
    threshold of u's own scores (argmin |FAR_u - FRR_u| over u's distinct scores, the higher one on
    ties). Errors are then pooled over those writers:
      FRR = sum_u #{pos_u < t_u} / sum_u n_pos_u,  FAR = sum_u #{neg_u >= t_u} / sum_u n_neg_u,
      eer_user = (FRR + FAR) / 2.
    It measures how well scores separate within each writer, i.e. what per-writer threshold
    tuning could give; like any EER the thresholds are chosen on the test scores.

    Differences from sigver: sigver takes candidate thresholds from sklearn's `roc_curve` with its
    default `drop_intermediate=True`, which can skip the best candidate on straight runs of the
    ROC, and may pick +inf; we consider every distinct score. Writers lacking genuine or forgery
    pairs are left out of both sums (sigver assumes every writer has both). NaN if no writer has
    both.

    Args:
      pos_scores: [n_pos] genuine-pair scores; pos_writers: [n_pos] their claimed writers.
      neg_scores: [n_neg] forgery scores (sigver: skilled); neg_writers: [n_neg] claimed writers.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    pos_w = np.asarray(pos_writers).reshape(-1)
    neg_w = np.asarray(neg_writers).reshape(-1)
    if pos_w.size != pos.size or neg_w.size != neg.size:
        raise ValueError(
            f"eer_user: {pos.size} genuine scores but {pos_w.size} writers, {neg.size} forgery "
            f"scores but {neg_w.size} writers; give one writer per score."
        )
    pos_errors = neg_errors = n_pos = n_neg = 0
    for writer in np.intersect1d(pos_w, neg_w):
        p, n = pos[pos_w == writer], neg[neg_w == writer]
        t = threshold_at_eer(p, n)
        pos_errors += int(np.sum(p < t))
        neg_errors += int(np.sum(n >= t))
        n_pos += p.size
        n_neg += n.size
    if n_pos == 0:
        return _NAN
    return 0.5 * (pos_errors / n_pos + neg_errors / n_neg)


# ---- Calibration: log-likelihood ratios and Cllr -----------------------------------------------


def cllr(pos_llr: Any, neg_llr: Any) -> float:
    """Brümmer's log-likelihood-ratio cost, in bits: how much the llrs cost a Bayes decision-maker.

    Cllr = 0.5 * (mean over pos of log2(1 + exp(-llr)) + mean over neg of log2(1 + exp(llr))).
    0 is perfect, 1 is a system that always says llr = 0, above 1 the llrs mislead. Infinite llrs
    are allowed: on the right side they cost 0, on the wrong side +inf. NaN if a class is empty.
    """
    lp = _scores(pos_llr, "pos_llr", allow_inf=True)
    ln = _scores(neg_llr, "neg_llr", allow_inf=True)
    if lp.size == 0 or ln.size == 0:
        return _NAN
    # logaddexp(0, x) = ln(1 + e^x) without overflow.
    c_pos = np.mean(np.logaddexp(0.0, -lp))
    c_neg = np.mean(np.logaddexp(0.0, ln))
    return float(0.5 * (c_pos + c_neg) / np.log(2.0))


def min_cllr(pos_scores: Any, neg_scores: Any) -> float:
    """Cllr after the best monotonic calibration of the scores: discrimination, without calibration.

    BOSARIS definition: PAV of is_genuine on the scores (tied scores pooled) gives the optimal
    monotonic posteriors p; they are turned into llr with the empirical prior of these pairs,
    llr = logit(p) - logit(n_pos / (n_pos + n_neg)), and Cllr is taken on them. Since the constant
    calibration p = prior is monotonic, min_cllr <= 1; cllr(llr(scores)) - min_cllr is the
    calibration loss. PAV posteriors of exactly 1 (0) occur only in blocks of genuine (forgery)
    pairs alone, so their infinite llrs fall on the correct side and contribute 0.
    NaN if either class is empty.
    """
    pos = _scores(pos_scores, "pos_scores")
    neg = _scores(neg_scores, "neg_scores")
    if pos.size == 0 or neg.size == 0:
        return _NAN
    x, y = _labelled(pos, neg)
    posterior = pav(x, y)
    with np.errstate(divide="ignore"):
        logit = scipy.special.logit
        calibrated = logit(posterior) - float(logit(pos.size / x.size))
    return cllr(calibrated[: pos.size], calibrated[pos.size :])


# ---- Putting it together -----------------------------------------------------------------------


def kind_codes(kinds: Any) -> np.ndarray:
    """[n] kinds as int codes (0, 1, 2) or names ('genuine', 'skilled', 'random', str or bytes)
    -> [n] int64 codes GENUINE, SKILLED, RANDOM."""
    k = np.asarray(kinds).reshape(-1)
    if k.dtype.kind in "iu":
        codes = k.astype(np.int64)
        bad = sorted(set(np.unique(codes).tolist()) - {GENUINE, SKILLED, RANDOM})
    else:
        lookup = {name: code for code, name in enumerate(KIND_NAMES)}
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in k.tolist()]
        codes = np.asarray([lookup.get(v, -1) for v in names], dtype=np.int64)
        bad = sorted({v for v in names if v not in lookup})
    if bad:
        raise ValueError(
            f"Unknown pair kind(s) {bad[:5]}; use {list(KIND_NAMES)} or their codes 0, 1, 2."
        )
    return codes


def operating_threshold(scores: Any, kinds: Any) -> float:
    """The threshold to operate at, chosen on validation scores: the `eer` threshold of genuine vs
    skilled pairs, or vs every negative when the split has no skilled forgeries."""
    s = _scores(scores, "scores")
    codes = kind_codes(kinds)
    neg = s[codes == SKILLED]
    if len(neg) == 0:
        neg = s[codes != GENUINE]
    return float(threshold_at_eer(s[codes == GENUINE], neg))


def compute_metrics(
    scores: Any,
    kinds: Any,
    writers: Any,
    threshold: float,
    prior_positive: float,
) -> dict[str, float]:
    """Every metric we report for one evaluation set, as a flat dict of floats for metric writers.

    Args:
      scores: [n] pair scores in (0, 1).
      kinds: [n] 'genuine' / 'skilled' / 'random' (or codes 0 / 1 / 2), see `kind_codes`.
      writers: [n] claimed writer of each pair (the reference's writer), any comparable ids; None
        leaves eer_user NaN.
      threshold: operating threshold, chosen on validation pairs with `threshold_at_eer`.
      prior_positive: share of genuine pairs in training, for `llr`.

    Returns (NaN where a needed kind is absent; nothing raises for that):
      frr, far_skilled, far_random: error rates at `threshold`.
      accuracy: share of all n pairs decided right at `threshold` (genuine, skilled, random alike).
      eer, eer_threshold: global-threshold EER of genuine vs skilled, and the threshold `eer` picks
        on these pairs (on validation pairs, the one to pass as `threshold` later).
      eer_random: the same, genuine vs random. eer_rocch: convex-hull EER, genuine vs skilled.
      eer_user: writer-threshold EER, genuine vs skilled (sigver's EER_userthresholds).
      auc, auc_random: area under the ROC, genuine vs skilled and genuine vs random.
      cllr, min_cllr: on genuine vs skilled only, the hard and deciding case: cllr of
        llr(scores, prior_positive), min_cllr of the scores. Random forgeries would dilute both.
      oracle_accuracy: best-threshold balanced accuracy, genuine vs skilled (SigNet's "accuracy";
        the threshold is chosen on these pairs).
      threshold, n_genuine, n_skilled, n_random: the inputs' threshold and counts.
    """
    s = _scores(scores, "scores")
    codes = kind_codes(kinds)
    if codes.size != s.size:
        raise ValueError(f"{s.size} scores but {codes.size} kinds; give one kind per score.")
    gen, sk, rnd = (s[codes == c] for c in (GENUINE, SKILLED, RANDOM))
    threshold = float(threshold)

    if writers is None:
        user = _NAN
    else:
        w = np.asarray(writers).reshape(-1)
        if w.size != s.size:
            raise ValueError(f"{s.size} scores but {w.size} writers; give one writer per score.")
        user = eer_user(gen, sk, w[codes == GENUINE], w[codes == SKILLED])

    eer_sk, eer_sk_threshold = eer(gen, sk)
    return {
        "threshold": threshold,
        "frr": frr(gen, threshold),
        "far_skilled": far(sk, threshold),
        "far_random": far(rnd, threshold),
        "accuracy": accuracy(gen, np.concatenate([sk, rnd]), threshold),
        "eer": eer_sk,
        "eer_threshold": eer_sk_threshold,
        "eer_random": eer(gen, rnd)[0],
        "eer_rocch": eer_rocch(gen, sk),
        "eer_user": float(user),
        "auc": auc(gen, sk),
        "auc_random": auc(gen, rnd),
        "cllr": cllr(llr(gen, prior_positive), llr(sk, prior_positive)),
        "min_cllr": min_cllr(gen, sk),
        "oracle_accuracy": oracle_accuracy(gen, sk),
        "n_genuine": float(gen.size),
        "n_skilled": float(sk.size),
        "n_random": float(rnd.size),
    }


def jsonable(d: Any) -> Any:
    """Metrics (nested in dicts and lists) as plain JSON types: floats, with NaN -> None (JSON has
    no NaN), and ints; for metrics.json, summary.json and checkpoint metadata (orbax JsonSave)."""
    if isinstance(d, dict):
        return {k: jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [jsonable(v) for v in d]
    if isinstance(d, (float, np.floating)):
        return None if not np.isfinite(d) else float(d)
    if isinstance(d, np.integer):
        return int(d)
    return d
