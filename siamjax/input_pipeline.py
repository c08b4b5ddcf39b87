"""Data for training and evaluation: the dataset in memory, its protocol splits, and the tf.data
pipeline: in-memory catalog + pairs -> fixed-shape uint8 pair batches, this process's rows.

Training batches are a pure function of (seed, step): epoch e uses the pairs drawn from (seed, e),
in the order drawn, cut into `batch_size` batches (the remainder is dropped so every batch has the
same shape and the train step compiles once). Resuming at step s therefore only skips index
batches, never images. Each process feeds its own contiguous rows of every global batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from siamjax import pairs as pairs_lib
from siamjax import parallel
from siamjax.catalog import Catalog
from siamjax.datasets import registry
from siamjax.errors import UserError


class Data:
    """The catalog, its writer-disjoint splits and the fixed evaluation pairs of a config."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None):
        self.catalog: Catalog = registry.load_catalog(config)
        cat = self.catalog
        self.splits = pairs_lib.split_writers(cat.writer, config.split, config.seed)
        self.indices = pairs_lib.split_indices(cat.writer, self.splits)
        pairs_lib.check_disjoint(cat.writer, cat.sha256, self.indices)
        self.eval_pairs = {
            name: pairs_lib.eval_pairs(cat.writer, cat.is_genuine, self.indices[name],
                                       config.pairs, config.seed)
            for name in ("validation", "test") if len(self.indices[name])}
        total = config.pairs.positive + config.pairs.skilled + config.pairs.random
        # Share of positives among training pairs: the prior behind the model's scores.
        self.prior_positive = float(config.pairs.positive / total)
        logging.info("dataset: %s", cat.summary())
        for name in pairs_lib.SPLITS:
            idx = self.indices[name]
            logging.info("split %-10s %3d writers, %4d genuine, %4d forged%s", name,
                         len(self.splits[name]), int(cat.is_genuine[idx].sum()),
                         int((~cat.is_genuine[idx]).sum()),
                         f", eval pairs {self.eval_pairs[name].counts()}"
                         if name in self.eval_pairs else "")
        if workdir and jax.process_index() == 0:
            for name, p in self.eval_pairs.items():
                pairs_lib.save_pairs(os.path.join(workdir, "pairs", f"{name}.json"), p, cat.path,
                                     cat.writer)
            with open(os.path.join(workdir, "pairs", "splits.json"), "w") as f:
                json.dump(self.splits, f, indent=1)



class TrainData:
    """Training pair batches over the training writers of a catalog."""

    def __init__(self, catalog: Catalog, train_indices: np.ndarray,
                 config: ml_collections.ConfigDict):
        self.catalog = catalog
        self.indices = train_indices
        self.config = config
        self.batch_size = config.batch_size
        n_pairs = len(self._pairs(0))
        self.steps_per_epoch = n_pairs // self.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"{n_pairs} training pairs per epoch are fewer than "
                            f"config.batch_size={self.batch_size}.")
        # One device-independent copy of all images; gathered per batch, never decoded again.
        self._images = tf.constant(catalog.images)

    def _pairs(self, epoch: int) -> pairs_lib.Pairs:
        return pairs_lib.sample_train_pairs(self.catalog.writer, self.catalog.is_genuine,
                                            self.indices, self.config.pairs, self.config.seed,
                                            epoch)

    def _epoch_dataset(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        p = self._pairs(epoch)
        rows = parallel.local_rows(self.batch_size)
        ds = tf.data.Dataset.from_tensor_slices({"a": p.a, "b": p.b, "label": p.label})
        ds = ds.batch(self.batch_size, drop_remainder=True).skip(skip_batches)
        images = self._images

        def gather(batch):
            return {
                "image_a": tf.gather(images, batch["a"][rows]),
                "image_b": tf.gather(images, batch["b"][rows]),
                "label": batch["label"][rows],
            }

        return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(self.config.prefetch)

    def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Endless local batches {image_a, image_b: uint8 [b, H, W, 1], label: int32 [b]} from
        `start_step` on (b = batch_size / process_count)."""
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        while True:
            yield from self._epoch_dataset(epoch, offset).as_numpy_iterator()
            epoch, offset = epoch + 1, 0


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index batches over range(n), the last padded by repeating index 0, with a validity mask.

    Every batch has `batch_size` rows, so evaluation compiles once whatever n is.
    Yields (indices int32 [batch_size], mask bool [batch_size]).
    """
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n), dtype=np.int32)
        mask = np.ones(batch_size, bool)
        mask[len(idx):] = False
        yield np.pad(idx, (0, batch_size - len(idx))), mask
