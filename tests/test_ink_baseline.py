"""The ink-darkness control scorer: it finds a darkness cue where one is planted, and only then."""

import numpy as np
import pytest

from siamjax import ink_baseline, metrics
from siamjax import pairs as pairs_lib
from siamjax.errors import UserError


def catalog(forged_extra_dark: float, n_writers: int = 12, per: int = 6, seed: int = 0):
    """Images whose ink darkness is random, forgeries darker by `forged_extra_dark` levels."""
    rng = np.random.default_rng(seed)
    writer, genuine, images = [], [], []
    for w in range(n_writers):
        for is_genuine in (True, False):
            for _ in range(per):
                level = rng.uniform(90, 180) + (0 if is_genuine else forged_extra_dark)
                im = np.zeros((16, 24, 1), np.uint8)
                im[4:12, 3:20] = np.clip(rng.normal(level, 10, (8, 17, 1)), 1, 255)
                writer.append(str(w))
                genuine.append(is_genuine)
                images.append(im)
    return np.stack(images), np.asarray(writer), np.asarray(genuine)


def skilled_eer(scorer: str, forged_extra_dark: float) -> float:
    images, writer, genuine = catalog(forged_extra_dark)
    train = np.flatnonzero(np.isin(writer, [str(w) for w in range(6)]))
    test = np.flatnonzero(~np.isin(writer, [str(w) for w in range(6)]))
    fitted = ink_baseline.InkScorer.fit(scorer, images, genuine, train)
    trials = pairs_lib.reference_trials(writer, genuine, test, 1, seed=0)
    scores = fitted.trial_scores(trials)
    assert np.all((scores > 0) & (scores < 1))
    return metrics.eer(
        scores[trials.kind == pairs_lib.GENUINE], scores[trials.kind == pairs_lib.SKILLED]
    )[0]


@pytest.mark.parametrize("scorer", ["ink", "ink_pair"])
def test_finds_a_planted_darkness_cue_and_nothing_else(scorer):
    assert skilled_eer(scorer, 80.0) < 0.2
    assert skilled_eer(scorer, 0.0) > 0.3  # No cue: near chance.


def test_darkness_direction_comes_from_training():
    # Forgeries lighter instead of darker: the questioned scorer flips its sign.
    assert skilled_eer("ink", -80.0) < 0.2


def test_unknown_scorer():
    images, writer, genuine = catalog(0.0, n_writers=2, per=2)
    with pytest.raises(UserError, match="config.eval.scorer"):
        ink_baseline.InkScorer.fit("pixels", images, genuine, np.arange(len(images)))
