"""A verifier with nothing learnt about signatures: it looks only at how dark the ink is.

It is the benchmark's control. Where scans of forgeries and genuine signatures differ in ink
darkness (SigComp2011's forgeries were scanned darker), this scorer alone verifies well, and a
trained model that does not beat it may have learnt the scanner, not the hand. Where there is no
such cue (CEDAR) it sits near chance, as it should.

Two scorers (`config.eval.scorer`), both scored through eval.py's protocol (same trials, threshold
chosen on validation):
- 'ink': the questioned signature's darkness alone. Which way is "forged" (darker or lighter) is
  the sign that separates the training split's genuine from forged images; it and a scale (the
  training images' median and spread of darkness) are the only numbers taken from data.
- 'ink_pair': how far the questioned signature's darkness is from its references' (mean over K):
  forgeries written with another pen, or scanned another day, differ from the writer's own.

Darkness is read off the prepared images ('raw' ink keeps grey levels; see `siamjax.preprocess`):
the 90th percentile of the ink pixels' values, i.e. the darkest strokes, fixed before any run.
Under 'normalized' or 'binary' ink it carries nothing by construction.

Not for: verification (it knows no shapes); only numpy, no JAX.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.special

from siamjax import pairs as pairs_lib
from siamjax.errors import UserError

SCORERS = ("ink", "ink_pair")
PERCENTILE = 90.0  # Of the ink pixels' darkness: the darkest strokes, robust to a few pixels.


def darkness(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 1] uint8 prepared images (ink high, background 0) -> [N] float64 darkness."""
    flat = np.asarray(images).reshape(len(images), -1)
    out = np.zeros(len(flat), np.float64)
    for i, row in enumerate(flat):
        ink = row[row > 0]
        out[i] = np.percentile(ink, PERCENTILE) if ink.size else 0.0
    return out


@dataclasses.dataclass(frozen=True)
class InkScorer:
    """Darkness of every image of a catalog, and the few numbers taken from the training split."""

    scorer: str
    dark: np.ndarray  # [N] float64, darkness of every catalog image.
    center: float  # Median darkness of the training images.
    scale: float  # Their interquartile range (> 0).
    forged_sign: float  # +1: forgeries are darker in training; -1: lighter.

    @classmethod
    def fit(
        cls, scorer: str, images: np.ndarray, is_genuine: np.ndarray, train: np.ndarray
    ) -> InkScorer:
        """`images` [N, H, W, 1] uint8, `is_genuine` [N] bool, `train` indices of the training
        split (the only images whose labels are looked at)."""
        if scorer not in SCORERS:
            raise UserError(f"config.eval.scorer={scorer!r}; use 'model' or one of {SCORERS}.")
        dark = darkness(images)
        d, g = dark[train], np.asarray(is_genuine)[train].astype(bool)
        q25, center, q75 = np.percentile(d, [25, 50, 75])
        forged_darker = (~g).any() and g.any() and d[~g].mean() >= d[g].mean()
        return cls(
            scorer, dark, float(center), float(max(q75 - q25, 1.0)), 1.0 if forged_darker else -1.0
        )

    def trial_scores(self, trials: pairs_lib.Trials) -> np.ndarray:
        """Scores in (0, 1), high = genuine, of each trial. [n] float64."""
        q = self.dark[trials.questioned]
        if self.scorer == "ink":
            return scipy.special.expit(-self.forged_sign * (q - self.center) / self.scale)
        refs = self.dark[trials.references].mean(axis=1)
        return scipy.special.expit(1.0 - np.abs(q - refs) / self.scale)
