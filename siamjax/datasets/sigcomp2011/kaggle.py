"""SigComp2011's `kaggle_csv` protocol: Kaggle's own pair lists instead of writer-disjoint splits.

`train_data.csv` trains (its last 10% of rows validate) and `test_data.csv` tests. The lists share
writers and images between train and test, so their numbers are comparable only with published
Kaggle results, never a measure of verification on unseen writers. Selected by
`config.split.method='kaggle_csv'`; `siamjax.data.Data` takes the result as it is.
Not for the dataset itself (`sigcomp2011_dataset_builder.py`) nor for pair sampling
(`siamjax.pairs`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging
from etils import epath

from siamjax import catalog as catalog_lib
from siamjax import pairs as pairs_lib
from siamjax.datasets.sigcomp2011 import sigcomp2011_dataset_builder as builder_lib
from siamjax.errors import UserError

VALIDATION_SHARE = 10  # One row in this many of train_data.csv (the last ones) validates.


@dataclasses.dataclass(frozen=True)
class KagglePair:
    """One row of Kaggle's train_data.csv / test_data.csv, in our terms."""

    path1: str  # Relative to the sign_data root, like the examples' `path`: "train/068/09_068.png".
    path2: str
    label: int  # 1 = same writer, both genuine; 0 = genuine vs forged (Kaggle's target inverted).


def read_kaggle_pairs(root: epath.PathLike, split: str) -> list[KagglePair]:
    """Kaggle's pairs of `split` ('train' or 'test'), for comparison with published numbers only.

    Kaggle's target is 1 for (genuine, forged) and 0 for (genuine, genuine): the opposite of the
    verifier's output, so `label = 1 - target`. These pairs LEAK: test writers are train writers
    and every test image is a train image, so scores on them overstate real performance.
    `train_data.csv` has a header, `test_data.csv` not; a header is recognised by its target.
    """
    if split not in builder_lib.SPLITS:
        raise UserError(f"split {split!r}: Kaggle's pair lists exist for {builder_lib.SPLITS}")
    path = epath.Path(root) / f"{split}_data.csv"
    if not path.exists():
        raise UserError(
            f"{path}: no such file (Kaggle's sign_data has train_data.csv and "
            "test_data.csv beside train/ and test/)"
        )
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (number == 1 and fields[-1] == "target"):
            continue
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise UserError(
                f"{path}:{number}: expected img1,img2,target with target 0 or 1, got {line!r}"
            )
        pairs.append(KagglePair(f"{split}/{fields[0]}", f"{split}/{fields[1]}", 1 - int(fields[2])))
    return pairs


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The data of the kaggle_csv protocol: what `Data` otherwise derives from writer splits."""

    catalog: catalog_lib.Catalog  # Both Kaggle folders (train/ and test/), duplicates kept.
    train_pairs: pairs_lib.Pairs  # Fixed training pairs, shuffled per epoch by the pipeline.
    eval_pairs: dict[str, pairs_lib.Pairs]  # 'validation' and 'test'.
    indices: dict[str, np.ndarray]  # Catalog rows of each split: int [n].
    splits: dict[str, list[str]]  # Writers of each split (they overlap: the lists leak).


def load(builder: builder_lib.Builder, raw_data_dir: str) -> Protocol:
    """The prepared SigComp2011 dataset (`builder`, prepared from the sign_data folder found under
    `raw_data_dir`) with Kaggle's pair lists as train / validation / test."""
    logging.warning(
        "split 'kaggle_csv': Kaggle's pair lists share writers and images between "
        "train and test; the numbers overstate verification of unseen writers."
    )
    parts = [catalog_lib.from_builder(builder, s, dedupe=False) for s in ("train", "test")]
    cat = catalog_lib.concatenate(parts)
    where = {p: i for i, p in enumerate(cat.path)}
    root = builder_lib.find_root(raw_data_dir)

    def as_pairs(rows: list[KagglePair]) -> pairs_lib.Pairs:
        missing = [r.path2 for r in rows if r.path1 not in where or r.path2 not in where]
        if missing:
            raise UserError(
                f"Kaggle pair list names {missing[0]}, which the prepared dataset does not hold."
            )
        a = [where[r.path1] for r in rows]
        b = [where[r.path2] for r in rows]
        kind = [pairs_lib.GENUINE if r.label else pairs_lib.SKILLED for r in rows]
        return pairs_lib.make_pairs(a, b, kind)

    train_rows = read_kaggle_pairs(root, "train")
    n_val = len(train_rows) // VALIDATION_SHARE
    is_test = np.char.startswith(cat.path.astype(str), "test/")
    indices = {
        "train": np.flatnonzero(~is_test),
        "validation": np.flatnonzero(~is_test),
        "test": np.flatnonzero(is_test),
    }
    return Protocol(
        catalog=cat,
        train_pairs=as_pairs(train_rows[:-n_val]),
        eval_pairs={
            "validation": as_pairs(train_rows[-n_val:]),
            "test": as_pairs(read_kaggle_pairs(root, "test")),
        },
        indices=indices,
        splits={k: sorted(set(cat.writer[v])) for k, v in indices.items()},
    )
