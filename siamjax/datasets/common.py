"""The example format every signature builder writes, so that the pipeline reads all of them alike.

Every builder (synthetic, sigcomp2011, cedar, signature_folder) yields examples with exactly these
features. Images are already normalised at build time (see `siamjax.preprocess`): uint8
[height, width, 1], ink HIGH (255 = full ink) on a background of 0, signature centred.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow_datasets as tfds

UNKNOWN_FORGER = -1


def features(height: int, width: int) -> tfds.features.FeaturesDict:
    """The shared FeaturesDict for images of [height, width, 1] uint8."""
    return tfds.features.FeaturesDict(
        {
            # Normalised signature: ink high, background 0.
            "image": tfds.features.Image(shape=(height, width, 1), dtype=np.uint8),
            # Writer id as text ("001", "17", "w0003"): unique within one dataset.
            "writer": tfds.features.Text(),
            # True for a genuine signature of `writer`, False for a skilled forgery of it.
            "is_genuine": np.bool_,
            # Forger id for skilled forgeries where the dataset says it, else -1.
            "forger": np.int64,
            # Source path relative to the dataset root (or a synthetic name).
            "path": tfds.features.Text(),
            # sha256 hex digest of the source file's bytes: finds duplicates across splits.
            "sha256": tfds.features.Text(),
        }
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
