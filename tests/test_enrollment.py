"""Enrolment methods on made-up embeddings, with a distance head whose scores are known."""

import numpy as np
import pytest
import scipy.special

from siamjax import enrollment
from siamjax.errors import UserError

D = 8


def distance_logits(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """A head: logit = 3 - ||e1 - e2||, so that near pairs score high."""
    return 3.0 - np.linalg.norm(e1 - e2, axis=-1)


def writer(seed: int, spread: float, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(a writer's centre [D], its K references [K, D]) scattered by `spread`."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(0.0, 3.0, D)
    return centre, centre + rng.normal(0.0, spread, (k, D))


def test_none_is_the_fused_pair_scores():
    _, refs = writer(0, 0.3)
    q = refs[:2] + 0.1
    e = enrollment.enroll("none", refs, distance_logits, fusion="max")
    got = enrollment.score(e, q, distance_logits)
    pair = scipy.special.expit(
        np.stack([distance_logits(refs, np.repeat(qi[None], len(refs), 0)) for qi in q])
    )
    np.testing.assert_allclose(got, pair.max(axis=1), rtol=1e-6)


def test_znorm_standardises_by_the_references_own_spread():
    # The same questioned distance is typical for a loose writer and far out for a tight one.
    centre, tight = writer(1, 0.1)
    _, loose = writer(1, 1.0)
    loose = loose - loose.mean(0) + centre
    q = (centre + np.full(D, 0.9 / np.sqrt(D)))[None]  # At distance 0.9 from the centre.
    s_tight = enrollment.score(
        enrollment.enroll("znorm", tight, distance_logits), q, distance_logits
    )
    s_loose = enrollment.score(
        enrollment.enroll("znorm", loose, distance_logits), q, distance_logits
    )
    assert s_tight[0] < 0.5 < s_loose[0]
    # A head that adds a constant to every logit changes nothing once standardised.
    shifted = lambda a, b: distance_logits(a, b) + 2.0  # noqa: E731
    e = enrollment.enroll("znorm", loose, shifted)
    np.testing.assert_allclose(enrollment.score(e, q, shifted), s_loose, rtol=1e-5)


def test_svm_accepts_the_writer_and_rejects_others():
    centre, refs = writer(2, 0.3, k=10)
    rng = np.random.default_rng(3)
    negatives = rng.normal(0.0, 3.0, (200, D))
    e = enrollment.enroll("svm", refs, distance_logits, negatives=negatives)
    own = centre + rng.normal(0.0, 0.3, (20, D))
    others = rng.normal(0.0, 3.0, (20, D))
    s_own = enrollment.score(e, own, distance_logits)
    s_others = enrollment.score(e, others, distance_logits)
    assert np.all((0 < s_own) & (s_own < 1))
    assert s_own.min() > s_others.max()


def test_svm_scaled_ignores_each_dimensions_offset_and_scale():
    """'svm_scaled' standardises each embedding dimension first: embeddings that share a large
    per-dimension offset and scale (as GroupNorm + GAP gives) score as the plain ones do, and
    the writer is still told from others."""
    centre, refs = writer(5, 0.3, k=10)
    rng = np.random.default_rng(6)
    negatives = rng.normal(0.0, 3.0, (200, D))
    own = centre + rng.normal(0.0, 0.3, (20, D))
    others = rng.normal(0.0, 3.0, (20, D))
    offset, scale = rng.normal(0.0, 50.0, D), rng.uniform(0.05, 20.0, D)
    moved = lambda x: offset + scale * x  # noqa: E731
    e = enrollment.enroll("svm_scaled", refs, distance_logits, negatives=negatives)
    e_moved = enrollment.enroll(
        "svm_scaled", moved(refs), distance_logits, negatives=moved(negatives)
    )
    for q in (own, others):
        # float32 embeddings: standardising moved values loses ~|offset| / (scale * std) * eps32
        # relative precision, ~1e-4 here; decision values are O(1).
        np.testing.assert_allclose(
            enrollment.score(e_moved, moved(q), distance_logits),
            enrollment.score(e, q, distance_logits),
            rtol=0,
            atol=1e-3,
        )
    assert (
        enrollment.score(e, own, distance_logits).min()
        > enrollment.score(e, others, distance_logits).max()
    )


def test_bad_choices_are_user_errors():
    _, refs = writer(4, 0.3, k=1)
    with pytest.raises(UserError, match="references >= 2"):
        enrollment.enroll("znorm", refs, distance_logits)
    with pytest.raises(UserError, match="config.eval.enrollment"):
        enrollment.enroll("gmm", refs, distance_logits)
    with pytest.raises(UserError, match="negatives"):
        enrollment.enroll("svm", refs, distance_logits)


def test_svm_pair_combines_the_svm_and_the_pair_head():
    """'svm_pair''s components are svm_scaled's decision value and the pair logits fused in
    logits; its score is the sigmoid of their weighted sum, so each weight alone gives back the
    component it weighs."""
    centre, refs = writer(7, 0.3, k=4)
    rng = np.random.default_rng(8)
    negatives = rng.normal(0.0, 3.0, (200, D))
    q = np.concatenate([centre + rng.normal(0.0, 0.3, (5, D)), rng.normal(0.0, 3.0, (5, D))])
    svm = enrollment.enroll("svm_scaled", refs, distance_logits, negatives=negatives)
    pair = enrollment.enroll("svm_pair", refs, distance_logits, negatives=negatives)
    parts = enrollment.components(pair, q, distance_logits)
    assert parts.shape == (10, 2) and parts.dtype == np.float64
    np.testing.assert_allclose(
        scipy.special.expit(parts[:, 0]), enrollment.score(svm, q, distance_logits), atol=1e-12
    )
    mean_logit = np.mean([distance_logits(r[None], q) for r in refs], axis=0)
    np.testing.assert_allclose(parts[:, 1], mean_logit, rtol=1e-5)  # float32 head logits.
    with pytest.raises(UserError, match="fitted on validation"):
        enrollment.score(pair, q, distance_logits)
    for combine, expected in [
        ((1.0, 0.0, 0.0), parts[:, 0]),
        ((0.0, 2.0, -1.0), 2 * parts[:, 1] - 1),
    ]:
        e = enrollment.enroll(
            "svm_pair", refs, distance_logits, negatives=negatives, combine=combine
        )
        np.testing.assert_allclose(
            enrollment.score(e, q, distance_logits), scipy.special.expit(expected), rtol=1e-9
        )


def test_fit_combination_beats_either_score_alone():
    """Two independent, equally informative scores: the fitted logistic regression weighs both
    up and separates genuine from forged trials better than either does alone."""
    from siamjax import metrics

    rng = np.random.default_rng(9)
    n = 2000
    labels = np.repeat([1, 0], n)
    parts = rng.normal(0.0, 1.0, (2 * n, 2)) + np.where(labels[:, None] == 1, 1.0, -1.0)
    w_svm, w_pair, bias = enrollment.fit_combination(parts, labels)
    assert w_svm > 0 and w_pair > 0 and 0.5 < w_svm / w_pair < 2.0
    fused = parts @ np.array([w_svm, w_pair]) + bias
    # EER of N(1, 1) against N(-1, 1) is Phi(-1) = 15.9%; the sum's is Phi(-sqrt 2) = 7.9%.
    # 2000 trials per class: a standard error under 1 point.
    eer_fused = metrics.eer(fused[labels == 1], fused[labels == 0])[0]
    for j in (0, 1):
        assert eer_fused < metrics.eer(parts[labels == 1, j], parts[labels == 0, j])[0] - 0.04
    with pytest.raises(UserError, match="genuine and forged"):
        enrollment.fit_combination(parts[:n], labels[:n])
