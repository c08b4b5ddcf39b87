"""Shared fixtures for tests: where the real signature data is, if this machine has it.

Real scans never live in the repository; tests that need them read the folder named by
$SIAMJAX_DATA_DIR (the one holding sigcomp2011/, cedar/, originals/) and are skipped, with the
reason, where it is unset or missing. Mark such tests `@pytest.mark.realdata`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import ml_collections
import pytest

DATA_DIR_ENV = "SIAMJAX_DATA_DIR"


def real_data_path(*parts: str) -> pathlib.Path:
    """$SIAMJAX_DATA_DIR/<parts...>, or `pytest.skip` saying what is missing."""
    root = os.environ.get(DATA_DIR_ENV, "")
    if not root:
        pytest.skip(f"real data: set {DATA_DIR_ENV} to the folder holding sigcomp2011/ and cedar/")
    path = pathlib.Path(root).expanduser().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data: {path} does not exist ({DATA_DIR_ENV}={root})")
    return path


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The folder holding sigcomp2011/, cedar/ and originals/; skips the test when absent."""
    return real_data_path()


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
    """One TFDS data dir for the whole session: each synthetic dataset is rendered once."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_config(tfds_dir) -> Callable[..., ml_collections.ConfigDict]:
    """Makes `configs/synthetic.py:tiny` configs on the session's TFDS dir, the one config of
    every test that trains: `tiny_config(num_train_steps=8, loss="triplet")` sets top-level keys,
    `tiny_config(model={"combine": "distance"})` updates a group's keys (the rest keep theirs)."""
    from configs import synthetic

    def make(**overrides) -> ml_collections.ConfigDict:
        cfg = synthetic.get_config("tiny")
        cfg.tfds_data_dir = tfds_dir
        for key, value in overrides.items():
            # A misspelt key would silently test the default: refuse it.
            unknown = {key} - set(cfg) or (
                set(value) - set(cfg[key]) if isinstance(value, dict) else set()
            )
            if unknown:
                raise KeyError(f"tiny_config: no key(s) {sorted(unknown)} in {key!r} of the config")
            if isinstance(value, dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory) -> tuple[ml_collections.ConfigDict, str]:
    """(config, workdir) of `configs/synthetic.py:tiny` trained once for the whole session.

    Test modules that only read a trained workdir (evaluate it, verify with it, compare against
    it) share this one instead of each training their own. Do not train on in it; take
    `config.copy_and_resolve_references()` before changing the config.
    """
    from siamjax import entry, train_lib

    entry.hide_gpus_from_tensorflow()
    cfg = tiny_config()
    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    train_lib.train_and_evaluate(cfg, workdir)
    return cfg, workdir
