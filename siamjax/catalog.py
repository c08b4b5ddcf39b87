"""A prepared TFDS dataset held in memory: every image decoded once, plus its labels.

Signature sets are small (SigComp2011 ~1.6k images, CEDAR 2.6k: under 100 MB at 150x220), so the
pipeline gathers pairs from one in-memory array instead of decoding PNGs at every step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from absl import logging

from siamjax.errors import UserError

if TYPE_CHECKING:
    import tensorflow_datasets as tfds


@dataclasses.dataclass
class Catalog:
    """All images of a dataset split (or of several), in a fixed order (sorted by path)."""

    images: np.ndarray  # uint8 [n, H, W, 1], ink high
    writer: np.ndarray  # str [n]
    is_genuine: np.ndarray  # bool [n]
    forger: np.ndarray  # int64 [n], -1 unknown
    path: np.ndarray  # str [n]
    sha256: np.ndarray  # str [n]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def summary(self) -> str:
        return (
            f"{len(self)} images, {len(set(self.writer))} writers, "
            f"{int(self.is_genuine.sum())} genuine, {int((~self.is_genuine).sum())} forged"
        )


def _text(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])


def from_builder(
    builder: tfds.core.DatasetBuilder, split: str = "train", dedupe: bool = True
) -> Catalog:
    """Reads a prepared split into memory, sorted by path; with `dedupe`, keeps one copy of each
    image content (sha256), since a duplicated image would otherwise appear as its own partner."""
    import tensorflow_datasets as tfds  # Here: holding a catalog needs no TensorFlow.

    if split not in builder.info.splits:
        raise UserError(
            f"dataset {builder.name} has no split {split!r}; it has {sorted(builder.info.splits)}."
        )
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    cat = Catalog(
        images=np.asarray(data["image"], np.uint8),
        writer=_text(data["writer"]),
        is_genuine=np.asarray(data["is_genuine"], bool),
        forger=np.asarray(data["forger"], np.int64),
        path=_text(data["path"]),
        sha256=_text(data["sha256"]),
    )
    order = np.argsort(cat.path, kind="stable")
    cat = take(cat, order)
    if dedupe:
        _, first = np.unique(cat.sha256, return_index=True)
        if len(first) < len(cat):
            logging.warning(
                "%s/%s: dropped %d images whose content repeats another image",
                builder.name,
                split,
                len(cat) - len(first),
            )
            cat = take(cat, np.sort(first))
    if len(cat) == 0:
        raise UserError(f"dataset {builder.name}/{split} is empty.")
    return cat


def take(cat: Catalog, idx: np.ndarray) -> Catalog:
    return Catalog(**{f.name: getattr(cat, f.name)[idx] for f in dataclasses.fields(cat)})


def concatenate(parts: list[Catalog]) -> Catalog:
    """One catalog of several (e.g. two splits), in the given order."""
    return Catalog(
        **{
            f.name: np.concatenate([getattr(c, f.name) for c in parts])
            for f in dataclasses.fields(Catalog)
        }
    )
