"""Each metric of siamjax.metrics against an independent computation: scikit-learn, brute
force over thresholds, or numbers worked out by hand (derivations in the comments)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from siamjax import metrics as em
from siamjax import scoring

# The hand-worked case used throughout, with ties between a genuine and a forgery score (0.4) and
# between two genuine scores (0.4, 0.4).
POS = [0.9, 0.6, 0.4, 0.4]
NEG = [0.7, 0.4, 0.2]


def _tied_scores(rng: np.random.Generator, n: int, shift: int = 0) -> np.ndarray:
    """Scores on a grid of 1/20 (shifted up by `shift` steps) so that ties within and across
    classes are frequent and exact."""
    return np.clip(rng.integers(1, 20, size=n) + shift, 1, 19) / 20.0


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = _tied_scores(rng, int(rng.integers(1, 40)), shift=3)
    neg = _tied_scores(rng, int(rng.integers(1, 40)))
    return pos, neg


# ---- ROC, AUC ----------------------------------------------------------------------------------


def test_roc_curve_hand_worked():
    # Thresholds inf, 0.9, 0.7, 0.6, 0.4, 0.2 ("accept iff s >= t"):
    # FAR = #{neg >= t}/3: 0, 0, 1/3, 1/3, 2/3, 1; FRR = #{pos < t}/4: 1, 3/4, 3/4, 1/2, 0, 0.
    far, frr, thr = em.roc_curve(POS, NEG)
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.7, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(frr, [1, 3 / 4, 3 / 4, 1 / 2, 0, 0])


@pytest.mark.parametrize("seed", range(8))
def test_roc_curve_and_auc_match_sklearn_with_ties(seed):
    pos, neg = _random_case(seed)
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s = np.r_[pos, neg]
    fpr, tpr, thr = sk_roc_curve(y, s, drop_intermediate=False)
    far, frr, thresholds = em.roc_curve(pos, neg)
    np.testing.assert_array_equal(thresholds, thr)
    np.testing.assert_allclose(far, fpr)
    np.testing.assert_allclose(1 - frr, tpr)
    assert em.auc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_worked():
    # Over the 12 (pos, neg) pairs: 0.9 beats 3; 0.6 beats 0.4 and 0.2 (2); each 0.4 beats 0.2 and
    # ties 0.4 (1.5, twice). (3 + 2 + 3) / 12 = 2/3.
    assert em.auc(POS, NEG) == pytest.approx(2 / 3)


# ---- EER ----------------------------------------------------------------------------------------


def test_eer_hand_worked_with_ties():
    # From the ROC above, FAR - FRR changes sign between t=0.6 (FAR 1/3, FRR 1/2) and t=0.4
    # (FAR 2/3, FRR 0). On the segment FAR = 1/3 + a/3, FRR = 1/2 - a/2: equal at a = 1/5, where
    # FAR = FRR = 2/5. |FAR - FRR| is 1/6 at 0.6 and 2/3 at 0.4, so the threshold is 0.6.
    value, threshold = em.eer(POS, NEG)
    assert value == pytest.approx(0.4)
    assert threshold == 0.6
    assert em.threshold_at_eer(POS, NEG) == 0.6


def test_eer_small_cases():
    # A single tie between the classes: the polyline goes straight from (0, 1) to (1, 0): EER 1/2,
    # and 0.5 is the only real threshold.
    assert em.eer([0.5], [0.5]) == (0.5, 0.5)
    # Perfect separation: at t=0.8 FAR = FRR = 0.
    assert em.eer([0.9, 0.8], [0.1]) == (0.0, 0.8)
    # Points (0, 1/2) at t=0.9 and (1, 1/2) at t=0.7: crossing at FAR = FRR = 1/2. |FAR - FRR| ties
    # at 1/2: the higher threshold (0.9) wins, as in sigver.
    assert em.eer([0.9, 0.5], [0.7]) == (0.5, 0.9)
    # Everything inverted: the only crossing is at the point t=0.9 (FAR 1, FRR 1).
    assert em.eer([0.2], [0.9]) == (1.0, 0.9)


def test_eer_equals_sigver_rule_at_an_exact_crossing():
    # sigver: EER = (FAR + FRR) / 2 at the threshold closest to FAR = FRR; if that point has
    # FAR = FRR exactly, both definitions agree. pos 0.8 0.6 0.4 0.2, neg 0.7 0.5 0.3 0.1:
    # at t=0.5 FAR = 2/4 (0.7, 0.5), FRR = 2/4 (0.4, 0.2).
    assert em.eer([0.8, 0.6, 0.4, 0.2], [0.7, 0.5, 0.3, 0.1]) == (0.5, 0.5)


@pytest.mark.parametrize("seed", range(8))
def test_eer_lies_between_the_errors_at_its_threshold(seed):
    pos, neg = _random_case(seed)
    value, t = em.eer(pos, neg)
    far_t, frr_t = np.mean(neg >= t), np.mean(pos < t)
    assert min(far_t, frr_t) - 1e-12 <= value <= max(far_t, frr_t) + 1e-12
    # And the threshold is a brute-force argmin of |FAR - FRR| over the distinct scores.
    gaps = {u: abs(np.mean(neg >= u) - np.mean(pos < u)) for u in np.unique(np.r_[pos, neg])}
    assert gaps[t] == pytest.approx(min(gaps.values()))


def _rocch_eer_brute_force(pos: np.ndarray, neg: np.ndarray) -> float:
    """Lowest point of the convex hull of the ROC points on the diagonal: the hull edge that meets
    the diagonal joins two ROC points, so the lowest crossing over all pairs of points that straddle
    FAR = FRR is it (every such segment lies inside the hull)."""
    far, frr, _ = em.roc_curve(pos, neg)
    best = math.inf
    for (f1, r1), (f2, r2) in itertools.product(zip(far, frr, strict=True), repeat=2):
        d1, d2 = f1 - r1, f2 - r2
        if d1 <= 0 <= d2:
            a = 0.0 if d2 == d1 else -d1 / (d2 - d1)
            best = min(best, f1 + a * (f2 - f1))
    return best


def test_eer_rocch_hand_worked():
    # PAV on the scores sorted up, is_genuine = 0.2:0 | 0.4:{1,1,0} | 0.6:1 | 0.7:0 | 0.9:1 pools
    # 0.6 and 0.7 (1 > 0), then that block with 0.4 (2/3 > 1/2): blocks {0.2}, {0.4..0.7}
    # (3 genuine, 2 forgeries), {0.9}. Hull points (FAR, FRR): (1, 0), (2/3, 0), (0, 3/4), (0, 1).
    # The edge from (2/3, 0) to (0, 3/4) is FAR/(2/3) + FRR/(3/4) = 1, on the diagonal at
    # 1 / (3/2 + 4/3) = 6/17 (BOSARIS's rocch2eer formula).
    assert em.eer_rocch(POS, NEG) == pytest.approx(6 / 17)


@pytest.mark.parametrize("seed", range(8))
def test_eer_rocch_matches_brute_force_hull(seed):
    pos, neg = _random_case(seed)
    assert em.eer_rocch(pos, neg) == pytest.approx(_rocch_eer_brute_force(pos, neg), abs=1e-12)
    assert em.eer_rocch(pos, neg) <= em.eer(pos, neg)[0] + 1e-12


# ---- Per-writer EER -----------------------------------------------------------------------------


def test_eer_user_hand_worked():
    # Writer A: genuine 0.8 0.6, skilled 0.7 0.3. Per threshold (FAR, FRR): 0.8 (0, 1/2),
    # 0.7 (1/2, 1/2), 0.6 (1/2, 0), 0.3 (1, 0) -> t_A = 0.7: errors genuine 1 (0.6),
    # skilled 1 (0.7).
    # Writer B: genuine 0.9 0.5 0.5, skilled 0.5 0.2: 0.9 (0, 2/3), 0.5 (1/2, 0), 0.2 (1, 0)
    # -> t_B = 0.5: errors genuine 0, skilled 1 (0.5).
    # Writer C has no skilled pairs, writer D no genuine: both left out.
    # Pooled: FRR = 1/5, FAR = 2/4; eer_user = (1/5 + 1/2) / 2 = 0.35.
    pos = [0.8, 0.6, 0.9, 0.5, 0.5, 0.4]
    pos_w = ["A", "A", "B", "B", "B", "C"]
    neg = [0.7, 0.3, 0.5, 0.2, 0.95]
    neg_w = ["A", "A", "B", "B", "D"]
    assert em.eer_user(pos, neg, pos_w, neg_w) == pytest.approx(0.35)


def _sigver_eer_user(pos, neg, pos_w, neg_w) -> float:
    """luizgh/sigver's calculate_EER_user_thresholds, with every threshold kept (sklearn's
    drop_intermediate=False)."""
    gen_err = sk_err = n_gen = n_sk = 0
    for w in np.unique(pos_w):
        p, n = pos[pos_w == w], neg[neg_w == w]
        y = np.r_[np.ones(p.size), -np.ones(n.size)]
        fpr, tpr, thr = sk_roc_curve(y, np.r_[p, n], drop_intermediate=False)
        # Rounded so that gaps equal in exact arithmetic tie (sigver leaves that to float luck).
        gaps = np.round(abs(fpr - (1 - tpr)), 12)
        t = thr[sorted(enumerate(gaps), key=lambda x: x[1])[0][0]]
        gen_err += np.sum(p < t)
        sk_err += np.sum(n >= t)
        n_gen += p.size
        n_sk += n.size
    return (gen_err / n_gen + sk_err / n_sk) / 2


@pytest.mark.parametrize("seed", range(6))
def test_eer_user_matches_sigver(seed):
    rng = np.random.default_rng(seed)
    pos_w = rng.integers(0, 6, size=60)
    neg_w = rng.integers(0, 6, size=50)
    pos = _tied_scores(rng, 60, shift=2)
    neg = _tied_scores(rng, 50)
    assert set(pos_w) == set(neg_w)  # sigver needs both kinds for every writer.
    assert em.eer_user(pos, neg, pos_w, neg_w) == pytest.approx(
        _sigver_eer_user(pos, neg, pos_w, neg_w)
    )


def test_eer_user_beats_global_threshold_when_writers_differ_in_scale():
    # Each writer is perfectly separable on its own, but writer 1's forgeries outscore writer 0's
    # genuine pairs: one global threshold cannot get both right, per-writer thresholds can.
    pos = [0.3, 0.35, 0.9, 0.95]
    neg = [0.1, 0.15, 0.7, 0.75]
    pos_w, neg_w = [0, 0, 1, 1], [0, 0, 1, 1]
    assert em.eer_user(pos, neg, pos_w, neg_w) == 0.0
    assert em.eer(pos, neg)[0] > 0.0


# ---- Errors at a threshold, oracle accuracy ---------------------------------------------------


def test_rates_at_threshold_count_ties_as_accepted():
    # t = 0.4: genuine 0.4, 0.4 accepted -> FRR 0; forgery 0.4 accepted -> FAR 2/3 (0.7, 0.4).
    # Accuracy: 4 genuine right + 1 forgery right (0.2) of 7.
    assert em.frr(POS, 0.4) == 0.0
    assert em.far(NEG, 0.4) == pytest.approx(2 / 3)
    assert em.accuracy(POS, NEG, 0.4) == pytest.approx(5 / 7)
    assert em.frr(POS, 0.65) == 0.75
    assert math.isnan(em.frr(POS, float("nan")))
    assert math.isnan(em.far([], 0.5))


@pytest.mark.parametrize("seed", range(8))
def test_oracle_accuracy_matches_brute_force(seed):
    pos, neg = _random_case(seed)
    candidates = np.r_[np.unique(np.r_[pos, neg]), np.inf, -np.inf, 0.5]
    best = max(0.5 * (np.mean(pos >= t) + np.mean(neg < t)) for t in candidates)
    assert em.oracle_accuracy(pos, neg) == pytest.approx(best)


# ---- Calibration ------------------------------------------------------------------------------


def test_llr_is_logit_minus_prior_logit_and_finite():
    # s = 0.75 has odds 3; at prior 0.25 (odds 1/3) the likelihood ratio is 9.
    np.testing.assert_allclose(scoring.llr([0.75], 0.25), [math.log(9)])
    np.testing.assert_allclose(scoring.llr([0.5], 0.5), [0.0])
    out = scoring.llr([0.0, 1.0], 0.5)
    assert np.all(np.isfinite(out)) and out[1] > 15
    assert out[0] == pytest.approx(-out[1])
    with pytest.raises(ValueError, match="prior_positive"):
        scoring.llr([0.5], 1.0)
    with pytest.raises(ValueError, match="probabilities"):
        scoring.llr([1.5], 0.5)


def test_cllr_hand_worked():
    # llr 0 costs log2(2) = 1 bit; llr ln 3 on a genuine pair costs log2(1 + 1/3) = log2(4/3), and
    # so does -ln 3 on a forgery; +inf on a genuine and -inf on a forgery cost 0.
    # pos: (1 + log2(4/3) + 0) / 3; neg: (log2(4/3) + 0) / 2; Cllr = half their sum.
    l3 = math.log(3)
    expected = 0.5 * ((1 + math.log2(4 / 3)) / 3 + math.log2(4 / 3) / 2)
    assert em.cllr([0.0, l3, np.inf], [-l3, -np.inf]) == pytest.approx(expected)
    # A system that always says llr = 0 costs exactly 1 bit; a wrong infinite llr costs infinity.
    assert em.cllr([0.0, 0.0], [0.0]) == 1.0
    assert em.cllr([-np.inf], [0.0]) == np.inf


def test_min_cllr_hand_worked_with_ties():
    # PAV blocks as in test_eer_rocch_hand_worked: {0.2}: posterior 0, {0.4, 0.4, 0.4, 0.6, 0.7}:
    # 3/5, {0.9}: 1. Empirical prior 4/7 (odds 4/3), so the middle block's likelihood ratio is
    # (3/2) / (4/3) = 9/8. Its 3 genuine pairs cost log2(1 + 8/9) each, its 2 forgeries (0.4, 0.7)
    # log2(1 + 9/8) each; the outer blocks have infinite llrs on the right side and cost 0.
    # min Cllr = 0.5 * (3 log2(17/9) / 4 + 2 log2(17/8) / 3) ~= 0.70656.
    expected = 0.5 * (3 * math.log2(17 / 9) / 4 + 2 * math.log2(17 / 8) / 3)
    assert em.min_cllr(POS, NEG) == pytest.approx(expected)


def test_min_cllr_limits():
    # Separable: every block is pure, every llr infinite on the right side.
    assert em.min_cllr([0.9, 0.8], [0.1, 0.3]) == 0.0
    # All tied: one block at the prior, llr 0 everywhere, 1 bit.
    assert em.min_cllr([0.5, 0.5], [0.5]) == pytest.approx(1.0)
    # Perfectly inverted: PAV pools everything, as with ties.
    assert em.min_cllr([0.1, 0.2], [0.8, 0.9]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(8))
def test_pav_matches_sklearn_isotonic(seed):
    rng = np.random.default_rng(seed)
    x = _tied_scores(rng, 80)
    for y in (rng.integers(0, 2, size=80).astype(float), rng.normal(size=80)):
        expected = IsotonicRegression(increasing=True).fit_transform(x, y)
        np.testing.assert_allclose(em.pav(x, y), expected, atol=1e-12)
        fitted = em.pav(x, y)
        for v in np.unique(x):  # Tied scores share one value.
            assert np.ptp(fitted[x == v]) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_min_cllr_is_cllr_of_isotonic_posteriors_and_a_lower_bound(seed):
    pos, neg = _random_case(seed)
    x = np.r_[pos, neg]
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    p = IsotonicRegression(increasing=True).fit_transform(x, y)
    prior = pos.size / x.size
    with np.errstate(divide="ignore"):
        calibrated = np.log(p / (1 - p)) - math.log(prior / (1 - prior))
    m = em.min_cllr(pos, neg)
    assert m == pytest.approx(em.cllr(calibrated[: pos.size], calibrated[pos.size :]))
    # No monotonic calibration does better: raw llrs at any prior, or affine maps of them.
    assert m <= 1.0 + 1e-12
    for prior_positive in (0.2, 0.5, 0.8):
        raw = scoring.llr(x, prior_positive)
        assert m <= em.cllr(raw[: pos.size], raw[pos.size :]) + 1e-12
        for a, b in ((0.5, 0.0), (2.0, -1.0), (5.0, 1.0)):
            assert m <= em.cllr(a * raw[: pos.size] + b, a * raw[pos.size :] + b) + 1e-12


# ---- compute_metrics, kinds, absent kinds, bad input -------------------------------------------


def test_compute_metrics_keys_and_values():
    scores = np.r_[POS, NEG, [0.05, 0.5]]
    kinds = ["genuine"] * 4 + ["skilled"] * 3 + ["random"] * 2
    writers = ["A"] * 9
    out = em.compute_metrics(scores, kinds, writers, threshold=0.6, prior_positive=0.5)
    assert set(out) == {
        "threshold", "frr", "far_skilled", "far_random", "accuracy", "eer", "eer_threshold",
        "eer_random", "eer_rocch", "eer_user", "auc", "auc_random", "cllr", "min_cllr",
        "oracle_accuracy", "n_genuine", "n_skilled", "n_random",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in out.values())
    # At t = 0.6: FRR 2/4 (0.4, 0.4), FAR skilled 1/3 (0.7), FAR random 0/2; accuracy: genuine
    # 0.9, 0.6; skilled 0.4, 0.2; random 0.05, 0.5 -> 6 of 9.
    assert out["frr"] == 0.5
    assert out["far_skilled"] == pytest.approx(1 / 3)
    assert out["far_random"] == 0.0
    assert out["accuracy"] == pytest.approx(6 / 9)
    assert out["eer"] == pytest.approx(0.4) and out["eer_threshold"] == 0.6
    assert out["eer_user"] == em.eer_user(POS, NEG, ["A"] * 4, ["A"] * 3)
    assert out["auc"] == pytest.approx(2 / 3)
    assert out["auc_random"] == pytest.approx(roc_auc_score([1] * 4 + [0] * 2, POS + [0.05, 0.5]))
    assert out["min_cllr"] == pytest.approx(em.min_cllr(POS, NEG))
    assert out["cllr"] == pytest.approx(em.cllr(scoring.llr(POS, 0.5), scoring.llr(NEG, 0.5)))
    assert (out["n_genuine"], out["n_skilled"], out["n_random"]) == (4.0, 3.0, 2.0)
    # Integer codes and bytes give the same result as names.
    codes = [em.GENUINE] * 4 + [em.SKILLED] * 3 + [em.RANDOM] * 2
    assert em.compute_metrics(scores, np.array(codes), writers, 0.6, 0.5) == pytest.approx(out)
    as_bytes = np.array([k.encode() for k in kinds])
    assert em.compute_metrics(scores, as_bytes, writers, 0.6, 0.5) == pytest.approx(out)


def test_compute_metrics_absent_kinds_give_nan():
    no_random = em.compute_metrics(POS + NEG, [0] * 4 + [1] * 3, None, 0.5, 0.5)
    for key in ("far_random", "eer_random", "auc_random", "eer_user"):
        assert math.isnan(no_random[key]), key
    assert no_random["n_random"] == 0.0 and not math.isnan(no_random["eer"])

    only_genuine = em.compute_metrics([0.9, 0.8], ["genuine", "genuine"], [1, 2], 0.5, 0.5)
    needs_forgeries = (
        "far_skilled", "far_random", "eer", "eer_threshold", "eer_random", "eer_rocch",
        "eer_user", "auc", "auc_random", "cllr", "min_cllr", "oracle_accuracy",
    )  # fmt: skip
    for key in needs_forgeries:
        assert math.isnan(only_genuine[key]), key
    assert only_genuine["frr"] == 0.0 and only_genuine["accuracy"] == 1.0

    empty = em.compute_metrics([], [], [], float("nan"), 0.5)
    assert all(math.isnan(v) for k, v in empty.items() if not k.startswith("n_"))


def test_bad_inputs_raise_with_the_culprit_named():
    with pytest.raises(ValueError, match="index 1"):
        em.eer([0.5, float("nan")], [0.1])
    with pytest.raises(ValueError, match="forged"):
        em.compute_metrics([0.5], ["forged"], None, 0.5, 0.5)
    with pytest.raises(ValueError, match="7"):
        em.kind_codes([0, 7])
    with pytest.raises(ValueError, match="2 scores but 1 kinds"):
        em.compute_metrics([0.5, 0.6], ["genuine"], None, 0.5, 0.5)
    with pytest.raises(ValueError, match="genuine and forgery"):
        em.roc_curve([0.5], [])


# ---- Fusion -------------------------------------------------------------------------------------


def test_fuse_scores():
    m = np.array([[0.2, 0.8, 0.5], [0.9, np.nan, 0.7]])
    np.testing.assert_allclose(scoring.fuse_scores(m, "mean"), [0.5, 0.8])
    np.testing.assert_allclose(scoring.fuse_scores(m, "max"), [0.8, 0.9])
    np.testing.assert_allclose(scoring.fuse_scores(m, "min"), [0.2, 0.7])
    np.testing.assert_allclose(scoring.fuse_scores(m[:, :1]), [0.2, 0.9])  # K = 1: unchanged.
    with pytest.raises(ValueError, match="median"):
        scoring.fuse_scores(m, "median")
    with pytest.raises(ValueError, match="matrix"):
        scoring.fuse_scores([0.1, 0.2])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        scoring.fuse_scores([[0.1], [np.nan]])
