"""Shared fixtures for tests: where the real signature data is, if this machine has it.

Real scans never live in the repository; tests that need them read the folder named by
$SIAMJAX_DATA_DIR (the one holding sigcomp2011/, cedar/, originals/) and are skipped, with the
reason, where it is unset or missing. Mark such tests `@pytest.mark.realdata`.
"""

from __future__ import annotations

import os
import pathlib

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
