"""A dataset in memory with its protocol: the catalog, its writer-disjoint splits (or SigComp2011's
Kaggle lists), the fixed evaluation pairs and the trials of a split, for training and evaluation.

What training, validation and `eval.py` agree on before any batch is made. Not for: the protocol's
rules (`siamjax.pairs`), batches (`siamjax.input_pipeline`, the only tf.data module) or reading a
dataset's files (`siamjax.datasets`). Importing it loads no TensorFlow; loading a dataset does,
through TFDS, and only the builder that the config names is imported.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from siamjax import pairs as pairs_lib
from siamjax.catalog import Catalog
from siamjax.datasets import registry
from siamjax.errors import UserError


class Data:
    """The catalog, its writer-disjoint splits and the fixed evaluation pairs of a config.

    With `config.split.method == 'kaggle_csv'` (SigComp2011 only) the splits and pairs are
    Kaggle's own lists instead (`siamjax.datasets.sigcomp2011.kaggle`). Building it only computes;
    `save` writes the evaluation pairs and splits into a workdir; `trials` gives a split's trials.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        # Fixed training pairs (kaggle_csv); None: pairs are drawn from the train split per epoch.
        self.train_pairs: pairs_lib.Pairs | None = None
        if config.split.method == "kaggle_csv":
            protocol = _kaggle_protocol(config)
            self.catalog, self.train_pairs = protocol.catalog, protocol.train_pairs
            self.eval_pairs, self.indices = protocol.eval_pairs, protocol.indices
            self.splits = protocol.splits
        else:
            self._init_writer_disjoint(config)
        cat = self.catalog
        total = config.pairs.positive + config.pairs.skilled + config.pairs.random
        # Share of positives among training pairs: the prior behind the model's scores.
        self.prior_positive = (
            float(config.pairs.positive / total)
            if self.train_pairs is None
            else float(np.mean(self.train_pairs.label))
        )
        if config.loss == "triplet":  # Calibrated on one genuine and one forged pair per triplet.
            self.prior_positive = 0.5
        logging.info("dataset: %s", cat.summary())
        for name in pairs_lib.SPLITS:
            idx = self.indices[name]
            logging.info(
                "split %-10s %3d writers, %4d genuine, %4d forged%s",
                name,
                len(self.splits[name]),
                int(cat.is_genuine[idx].sum()),
                int((~cat.is_genuine[idx]).sum()),
                f", eval pairs {self.eval_pairs[name].counts()}" if name in self.eval_pairs else "",
            )

    def _init_writer_disjoint(self, config: ml_collections.ConfigDict) -> None:
        self.catalog: Catalog = registry.load_catalog(config)
        cat = self.catalog
        # Several datasets: each is split by config.split on its own writers, and its evaluation
        # pairs are drawn among its own images, exactly as when it is trained on alone, so that
        # `--config.eval.dataset=<one of them>` evaluates the same writers and pairs.
        names = registry.dataset_names(config)
        owner = registry.dataset_of(cat.writer) if len(names) > 1 else np.full(len(cat), "")
        per_part = [
            pairs_lib.split_writers(cat.writer[owner == part], config.split, config.seed)
            for part in np.unique(owner)
        ]
        self.splits = per_part[0]
        for more in per_part[1:]:
            self.splits = {k: sorted(v + more[k]) for k, v in self.splits.items()}
        self.indices = pairs_lib.split_indices(cat.writer, self.splits)
        pairs_lib.check_disjoint(cat.writer, cat.sha256, self.indices)
        self.eval_pairs = {}
        for split in ("validation", "test"):
            parts = [
                pairs_lib.eval_pairs(
                    cat.writer,
                    cat.is_genuine,
                    self.indices[split][owner[self.indices[split]] == part],
                    config.pairs,
                    config.seed,
                )
                for part in np.unique(owner)
                if np.any(owner[self.indices[split]] == part)
            ]
            if parts:
                self.eval_pairs[split] = pairs_lib.concatenate(parts)

    def save(self, workdir: str) -> None:
        """Writes `workdir/pairs/<split>.json` (the fixed evaluation pairs, with source paths) and
        `workdir/pairs/splits.json` (the writers of each split), so that every reported number
        can be recomputed; only process 0 writes."""
        if jax.process_index() != 0:
            return
        cat, folder = self.catalog, os.path.join(workdir, "pairs")
        os.makedirs(folder, exist_ok=True)
        for name, p in self.eval_pairs.items():
            pairs_lib.save_pairs(os.path.join(folder, f"{name}.json"), p, cat.path, cat.writer)
        with open(os.path.join(folder, "splits.json"), "w") as f:
            json.dump(self.splits, f, indent=1)

    def trials(
        self, split: str, references: int = 1, seed: int = 0, allow_fewer_writers: bool = False
    ) -> pairs_lib.Trials:
        """The split's fixed pairs (references == 1) or, each writer's K references drawn by
        `seed`, its K-reference trials (`pairs.reference_trials`: writers with fewer than K + 1
        genuine signatures are an error unless `allow_fewer_writers`)."""
        if references == 1:
            return pairs_lib.pairs_as_trials(self.eval_pairs[split])
        cat = self.catalog
        return pairs_lib.reference_trials(
            cat.writer, cat.is_genuine, self.indices[split], references, seed, allow_fewer_writers
        )


def _kaggle_protocol(config: ml_collections.ConfigDict):
    """SigComp2011 with Kaggle's pair lists (the builder's module is imported only when named)."""
    if config.dataset != "sigcomp2011":
        raise UserError("config.split.method='kaggle_csv' needs config.dataset='sigcomp2011'.")
    from siamjax.datasets.sigcomp2011 import kaggle

    return kaggle.load(registry.prepare(config), registry.raw_data_dir(config))
