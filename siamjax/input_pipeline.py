"""The tf.data pipeline of training: a dataset in memory (`siamjax.data.Data`) + its training pairs
-> fixed-shape pair batches, this process's rows. tf.data only: what the splits, pairs and trials
are is `siamjax.pairs` and `siamjax.data`, and evaluation never comes through here.

Training batches are a pure function of (seed, step): epoch e uses the pairs drawn from (seed, e),
in the order drawn, cut into `batch_size` batches (the remainder is dropped so every batch has the
same shape and the train step compiles once). Resuming at step s therefore only skips index
batches, never images. Each process feeds its own contiguous rows of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from siamjax import pairs as pairs_lib
from siamjax import parallel
from siamjax.data import Data
from siamjax.errors import UserError

INDEX_KEYS = {"image_a": "index_a", "image_b": "index_b", "image_c": "index_c"}
# With config.writer_loss_weight > 0, pair batches also hold each image's writer class.
CLASS_KEYS = {"image_a": "class_a", "image_b": "class_b"}


def writer_classes(
    writer: np.ndarray, is_genuine: np.ndarray, limit: int, train: np.ndarray | None = None
) -> np.ndarray:
    """int32 [N]: each catalog image's writer class for the writer loss, or -1 for none.

    Forgeries get -1: they belong to no writer's hand. When every writer of the catalog fits in
    `limit` (config.model.writer_classes), the writers in sorted order get 0..W-1. Otherwise only
    the training writers (`train`: their catalog indices) get classes, since no other writer's
    image enters a training batch; and when even they outnumber `limit`, the first `limit` of them
    (sorted) get classes and the others -1: their genuine images still train the pair loss, and a
    warning says how many were left out. Why not an error: a config with a fixed head (the best
    recipe's 64 classes) then still trains on a dataset with more writers, named by config alone.
    A UserError when `limit` < 1: the writer loss needs a writer head.
    """
    if limit < 1:
        raise UserError(
            f"config.model.writer_classes={limit}: the writer loss needs a writer head; set it "
            "to the number of training writers (one class each)."
        )
    writer = np.asarray(writer)
    genuine = np.asarray(is_genuine, bool)
    writers = np.unique(writer)
    if len(writers) > limit:
        known = writers if train is None else np.unique(writer[np.asarray(train)])
        if len(known) > limit:
            logging.warning(
                "config.model.writer_classes=%d is fewer than the %d training writers: the "
                "writer loss leaves out the last %d (sorted); raise it to use them all.",
                limit,
                len(known),
                len(known) - limit,
            )
        writers = known[:limit]
    pos = np.searchsorted(writers, writer).clip(0, len(writers) - 1)
    has_class = genuine & (writers[pos] == writer)
    return np.where(has_class, pos, -1).astype(np.int32)


class TrainData:
    """Training pair batches: drawn per epoch from the training writers, or (kaggle_csv) a fixed
    list of pairs shuffled per epoch; with config.loss == 'triplet', triplet batches drawn per
    epoch from the training writers.

    When the images fit `config.device_images_max_mb`, batches hold catalog indices
    (`index_a`, ...) instead of images, and the train step gathers them from `device_images`:
    an accelerator then receives a few hundred bytes per step instead of 2 x batch images, and
    the host copies no image (on a CPU, where there is no transfer, the gain is small).
    """

    def __init__(self, data: Data, config: ml_collections.ConfigDict):
        self.data = data
        self.config = config
        self.batch_size = config.batch_size
        self.triplets = config.loss == "triplet"
        self.classes = None  # Writer classes per catalog image, for the writer loss.
        if config.writer_loss_weight > 0:
            if config.loss != "bce":
                raise UserError(
                    f"config.writer_loss_weight applies to config.loss='bce', not {config.loss!r}."
                )
            cat = data.catalog
            self.classes = writer_classes(
                cat.writer,
                cat.is_genuine,
                int(config.model.get("writer_classes", 0)),
                data.indices["train"],
            )
        if self.triplets and data.train_pairs is not None:
            raise UserError(
                "config.loss='triplet' draws triplets from the training writers, but "
                "config.split.method='kaggle_csv' fixes pairs: use 'bce' or "
                "'contrastive' with it."
            )
        n_pairs = len(self._pairs(0))
        self.steps_per_epoch = n_pairs // self.batch_size
        if self.steps_per_epoch == 0:
            what = "triplets" if self.triplets else "pairs"
            raise UserError(
                f"{n_pairs} training {what} per epoch are fewer than "
                f"config.batch_size={self.batch_size}."
            )
        images = data.catalog.images
        self.on_device = images.nbytes <= config.device_images_max_mb * 2**20
        # Host gathering: one device-independent copy of all images, gathered per batch.
        self._images = None if self.on_device else tf.constant(images)

    def device_images(self, mesh: jax.sharding.Mesh) -> jax.Array | None:
        """All catalog images, uint8 [N, H, W, 1], replicated on every device of `mesh` (each
        process supplies its own devices' copies: every process holds the whole catalog); None
        when tf.data gathers them on the host (not `on_device`)."""
        if not self.on_device:
            return None
        images = self.data.catalog.images
        return jax.make_array_from_callback(
            images.shape, parallel.replicated(mesh), lambda index: images[index]
        )

    def _pairs(self, epoch: int) -> pairs_lib.Pairs | pairs_lib.Triplets:
        if self.data.train_pairs is not None and not self.triplets:  # Fixed lists (kaggle_csv).
            order = np.random.default_rng([self.config.seed, epoch, 7]).permutation(
                len(self.data.train_pairs)
            )
            return self.data.train_pairs.take(order)
        sample = pairs_lib.sample_train_triplets if self.triplets else pairs_lib.sample_train_pairs
        cat = self.data.catalog
        return sample(
            cat.writer,
            cat.is_genuine,
            self.data.indices["train"],
            self.config.pairs,
            self.config.seed,
            epoch,
        )

    def _columns(self, epoch: int) -> dict[str, np.ndarray]:
        """Epoch `epoch`'s catalog indices, int32, in training order: image_a, image_b (and
        image_c for triplets) and label."""
        p = self._pairs(epoch)
        if isinstance(p, pairs_lib.Triplets):
            # label is that of (image_a, image_b); (image_a, image_c) is always a forged pair.
            columns = {"image_a": p.anchor, "image_b": p.positive, "image_c": p.negative}
            label = np.ones(len(p), np.int32)
        else:
            columns, label = {"image_a": p.a, "image_b": p.b}, p.label
        if self.classes is not None:
            columns.update({CLASS_KEYS[k]: self.classes[columns[k]] for k in CLASS_KEYS})
        return {k: np.asarray(v, np.int32) for k, v in {**columns, "label": label}.items()}

    def dataset(self, start_step: int = 0) -> tf.data.Dataset:
        """The endless batches of `batches` as one tf.data pipeline over all epochs.

        One pipeline, not one per epoch: with a pipeline per epoch, the first batch of a new
        epoch blocked the loop for seconds at some epoch boundaries (inside the exhausted
        iterator's teardown; bench/README.md, "Host side"). The epochs' pairs are drawn
        by numpy, one call per epoch.
        """
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        names = ["image_a", "image_b", *(["image_c"] if self.triplets else [])]
        names += [*(CLASS_KEYS.values() if self.classes is not None else []), "label"]

        def epoch_batches(e):
            columns = tf.numpy_function(
                lambda e: list(self._columns(int(e)).values()),
                [e],
                [tf.int32] * len(names),
                stateful=False,
            )
            columns = {k: tf.ensure_shape(c, [None]) for k, c in zip(names, columns, strict=True)}
            ds = tf.data.Dataset.from_tensor_slices(columns)
            return ds.batch(self.batch_size, drop_remainder=True)

        ds = tf.data.Dataset.range(epoch, np.iinfo(np.int64).max).flat_map(epoch_batches)
        ds = ds.skip(offset)
        images, rows = self._images, parallel.local_rows(self.batch_size)

        def gather(batch):
            pairs = [k for k in names if k in INDEX_KEYS]
            if images is None:  # The train step gathers (device_images).
                out = {INDEX_KEYS[k]: batch[k][rows] for k in pairs}
            else:
                out = {k: tf.gather(images, batch[k][rows]) for k in pairs}
            out.update({k: batch[k][rows] for k in names if k not in INDEX_KEYS})
            return out

        return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(self.config.prefetch)

    def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Endless local batches {image_a, image_b: uint8 [b, H, W, 1], label: int32 [b]} from
        `start_step` on (b = batch_size / process_count). Triplet batches add image_c (the
        negative) to image_a (anchor) and image_b (positive), with label 1. With `on_device`,
        int32 [b] catalog indices index_a, index_b (index_c) stand for the images. With the
        writer loss, class_a and class_b: int32 [b] writer classes (`writer_classes`)."""
        yield from self.dataset(start_step).as_numpy_iterator()
