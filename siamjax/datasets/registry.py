"""config -> the TFDS builder it names, prepared offline into an explicit data dir, in memory.

The only place that maps `config.dataset` to a builder, so that adding a dataset is one entry here
plus its folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from absl import logging

from siamjax import catalog as catalog_lib
from siamjax.datasets.synthetic import generator as synthetic
from siamjax.errors import UserError

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

# TFDS (and TensorFlow) are imported when a dataset is built, with the one builder the config
# names: importing this module loads neither.

DATASETS = ("synthetic", "sigcomp2011", "cedar", "signature_folder")
# `config.dataset` may name several datasets joined by this, e.g. "cedar+sigcomp2011": they are
# trained on together, each keeping its own writers and split (see `dataset_names`).
JOIN = "+"


def dataset_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The datasets `config.dataset` names, in order; each known, none twice."""
    names = tuple(n.strip() for n in str(config.dataset).split(JOIN))
    for name in names:
        if name not in DATASETS:
            raise UserError(
                f"config.dataset={config.dataset!r}: {name!r} is not a dataset; use one of "
                f"{DATASETS}, or several joined by {JOIN!r} (e.g. 'cedar+sigcomp2011')."
            )
    if len(set(names)) != len(names):
        raise UserError(f"config.dataset={config.dataset!r} names a dataset twice.")
    return names


def single(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """A copy of `config` naming only dataset `name` (same size, ink, split, seed)."""
    out = config.copy_and_resolve_references()
    out.dataset = name
    return out


def qualified(name: str, writer_or_path: np.ndarray) -> np.ndarray:
    """Writer ids or paths of dataset `name` as the joined catalog holds them: "name:id"."""
    return np.array([f"{name}:{v}" for v in writer_or_path])


def dataset_of(writer: np.ndarray) -> np.ndarray:
    """The dataset of each qualified writer id of a joined catalog ("" where unqualified)."""
    return np.array([w.split(":", 1)[0] if ":" in w else "" for w in writer])


def tfds_data_dir(config: ml_collections.ConfigDict) -> str:
    """Where prepared datasets live: config, else $SIAMJAX_TFDS_DIR, else ~/tensorflow_datasets."""
    path = config.tfds_data_dir or os.environ.get("SIAMJAX_TFDS_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(path))


def raw_data_dir(config: ml_collections.ConfigDict) -> str:
    """The folder holding the raw sets (sigcomp2011/, cedar/): config, else $SIAMJAX_DATA_DIR."""
    path = config.data_dir or os.environ.get("SIAMJAX_DATA_DIR", "")
    if not path:
        raise UserError(
            f"config.dataset={config.dataset!r} needs its raw files: set "
            "--config.data_dir or SIAMJAX_DATA_DIR to the folder that holds "
            "sigcomp2011/ and cedar/ (see README, 'Using real data')."
        )
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise UserError(f"data dir {path} does not exist.")
    return path


def synthetic_settings(config: ml_collections.ConfigDict) -> synthetic.Settings:
    """The generator settings of `config.synthetic`, at the config's image size."""
    s = config.synthetic
    return synthetic.Settings(
        num_writers=s.num_writers,
        genuine_per_writer=s.genuine_per_writer,
        forgeries_per_writer=s.forgeries_per_writer,
        forgers_per_writer=s.forgers_per_writer,
        height=config.image_height,
        width=config.image_width,
        seed=s.seed,
        forgery_style=s.get("forgery_style", "tremor"),
        ink=str(config.real.ink),
    )


def make_builder(config: ml_collections.ConfigDict) -> tuple[tfds.core.DatasetBuilder, str | None]:
    """(builder, manual_dir) for `config.dataset`; manual_dir is None where the builder needs
    none (generated data, or a signature_folder whose root is absolute)."""
    h, w, out = config.image_height, config.image_width, tfds_data_dir(config)
    # Builders are imported when named: each pulls in its own dependencies.
    if config.dataset == "synthetic":
        from siamjax.datasets.synthetic import synthetic_dataset_builder as synth

        return synth.make_builder(synthetic_settings(config), data_dir=out), None
    skip, ink = bool(config.real.skip_bad_files), str(config.real.ink)
    if config.dataset == "sigcomp2011":
        from siamjax.datasets.sigcomp2011 import sigcomp2011_dataset_builder as sigcomp2011

        builder = sigcomp2011.Builder.for_size(h, w, data_dir=out, skip_bad_files=skip, ink=ink)
        return builder, raw_data_dir(config)
    if config.dataset == "cedar":
        from siamjax.datasets import cedar

        builder = cedar.Builder.for_size(h, w, data_dir=out, skip_bad_files=skip, ink=ink)
        return builder, raw_data_dir(config)
    if config.dataset == "signature_folder":
        from siamjax.datasets import signature_folder

        r = config.real
        if not r.folder_root or not r.pattern:
            raise UserError(
                "config.dataset='signature_folder' needs config.real.folder_root and "
                "config.real.pattern (see configs/bhsig260.py)."
            )
        manual = raw_data_dir(config) if not os.path.isabs(r.folder_root) else None
        return signature_folder.make_builder(
            root=r.folder_root,
            pattern=r.pattern,
            height=h,
            width=w,
            data_dir=out,
            genuine_values=r.genuine_values,
            forged_values=r.forged_values,
            folder_name=r.folder_name,
            skip_bad_files=skip,
            ink=ink,
        ), manual
    raise UserError(f"config.dataset={config.dataset!r}; use one of {DATASETS}.")


def prepare(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """Builds the dataset once (offline, explicit data dir); later calls find it prepared. With
    several datasets named, prepares each and returns the last's builder."""
    import tensorflow_datasets as tfds

    names = dataset_names(config)
    if len(names) > 1:
        return [prepare(single(config, n)) for n in names][-1]
    # Built under the lock: a builder made while another process writes the dataset would not
    # see the splits that process is about to publish.
    with preparing(tfds_data_dir(config), config.dataset):
        builder, manual_dir = make_builder(config)
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        logging.info(
            "dataset %s/%s in %s", builder.name, builder.builder_config.name, builder.data_dir
        )
        builder.download_and_prepare(download_config=download_config)
    return builder


LOCK_DIR = ".siamjax_locks"  # Under the TFDS data dir.


@contextlib.contextmanager
def preparing(data_dir: str, name: str) -> Iterator[None]:
    """Holds an exclusive lock on preparing dataset `name` in `data_dir`: two processes (two
    trainings, or the processes of one multi-process run) that prepare it at once take turns,
    and the second finds it prepared. `fcntl.flock` on <data_dir>/.siamjax_locks/<name>.lock:
    processes of one host, or hosts whose shared file system supports flock (local disks, NFSv4,
    most cluster file systems); where it does not, prepare the dataset first (README)."""
    folder = os.path.join(data_dir, LOCK_DIR)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the TFDS data dir {data_dir}: {e.strerror or e}.") from e
    with open(os.path.join(folder, f"{name}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("waiting for another process preparing %s in %s", name, data_dir)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_catalog(config: ml_collections.ConfigDict, split: str = "train") -> catalog_lib.Catalog:
    """The prepared `split` of the configured dataset, in memory. Several datasets give one
    catalog, each part's writers and paths qualified by its name ("cedar:12"), so that writer
    ids of different datasets never meet."""
    names = dataset_names(config)
    if len(names) == 1:
        return catalog_lib.from_builder(prepare(config), split)
    parts = []
    for name in names:
        cat = catalog_lib.from_builder(prepare(single(config, name)), split)
        cat.writer, cat.path = qualified(name, cat.writer), qualified(name, cat.path)
        parts.append(cat)
    return catalog_lib.concatenate(parts)
