"""How well single hand-made features separate the generator's forgeries from genuine signatures.

    python scripts/synthetic_cues.py [--writers 40] [--style skilled] [--ink normalized]

Prints one JSON line per feature: its AUC over all images ('alone': the questioned image only) and
relative to each writer's own genuine images ('vs writer': |z-score| against the writer's genuine
mean and spread). A generator whose forgeries a single feature separates (AUC near 1) teaches a
pretrained model that cue rather than comparison; CEDAR's forgeries have no such cue once the ink
is normalised. Not a test: a diagnostic for tuning `synthetic.forgery_style`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import scipy.ndimage as ndi
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from siamjax.datasets.synthetic import generator  # noqa: E402

FEATURES = ("ink_fraction", "laplacian_per_ink", "ink_height", "ink_width")


def features(image: np.ndarray) -> list[float]:
    """FEATURES of one uint8 [H, W] model-input image (ink high on 0)."""
    im = image.astype(np.float32) / 255.0
    ink = im > 0
    ys, xs = np.nonzero(ink)
    lap = float(np.abs(ndi.laplace(im)).sum() / max(int(ink.sum()), 1))
    return [float(ink.mean()), lap, float(np.ptp(ys)), float(np.ptp(xs))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, default=40)
    p.add_argument("--style", default="skilled", choices=generator.FORGERY_STYLES)
    p.add_argument("--ink", default="normalized")
    p.add_argument("--seed", type=int, default=99)
    a = p.parse_args()
    s = generator.Settings(
        num_writers=a.writers, genuine_per_writer=12, forgeries_per_writer=12,
        forgers_per_writer=3, height=150, width=220, seed=a.seed, forgery_style=a.style, ink=a.ink,
    )  # fmt: skip
    rows, genuine, writer = [], [], []
    for w in range(s.num_writers):
        for e in generator.render_writer(w, s):
            rows.append(features(e["image"][..., 0]))
            genuine.append(e["is_genuine"])
            writer.append(w)
    f, y, wr = np.array(rows), np.array(genuine), np.array(writer)
    rel = np.empty_like(f)
    for w in range(s.num_writers):
        own = (wr == w) & y
        rel[wr == w] = np.abs(f[wr == w] - f[own].mean(0)) / (f[own].std(0) + 1e-6)
    for i, name in enumerate(FEATURES):
        alone = roc_auc_score(y, f[:, i])
        vs_writer = roc_auc_score(y, -rel[:, i])  # Genuine: close to the writer's own.
        print(json.dumps({
            "feature": name, "style": a.style, "ink": a.ink, "writers": a.writers,
            "auc_alone": round(max(alone, 1 - alone), 3), "auc_vs_writer": round(vs_writer, 3),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
