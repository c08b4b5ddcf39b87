"""config -> prepared dataset: two processes preparing the same dataset at once take turns (a file
lock in the TFDS data dir) and both get the same dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from siamjax.datasets import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process: waits at a barrier (both processes' files present), prepares the tiny synthetic
# dataset, prints the sha256 of its catalog's images.
PREPARE = """
import os, sys, time
sys.path.insert(0, {root!r})
from absl import logging
logging.set_verbosity(logging.INFO)
from configs import synthetic
from siamjax.datasets import registry
cfg = synthetic.get_config("tiny")
cfg.tfds_data_dir = {tfds!r}
barrier, me = {barrier!r}, sys.argv[1]
open(os.path.join(barrier, me), "w").close()
while len(os.listdir(barrier)) < 2:
    time.sleep(0.01)
cat = registry.load_catalog(cfg)
print("CATALOG", len(cat), sorted(cat.sha256)[:3])
"""


@pytest.mark.slow  # Two fresh interpreters importing TensorFlow: ~30 s on 2 busy cores.
def test_two_processes_preparing_one_dataset_both_succeed(tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    code = PREPARE.format(root=ROOT, tfds=str(tmp_path / "tfds"), barrier=str(barrier))
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    catalogs = [
        next(line for line in out.splitlines() if line.startswith("CATALOG")) for out, _ in outs
    ]
    assert catalogs[0] == catalogs[1]
    # They met at the lock: one of them waited while the other prepared.
    waited = ["waiting for another process preparing synthetic" in err for _, err in outs]
    assert sorted(waited) == [False, True], [err[-2000:] for _, err in outs]


def test_the_lock_is_exclusive_and_released(tmp_path):
    """A second holder waits until the first lets go (in threads: flock locks are per open file)."""
    import threading

    order = []

    def hold(name, seconds):
        with registry.preparing(str(tmp_path), "x"):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a", 0.3))
    first.start()
    time.sleep(0.1)
    hold("b", 0.0)
    first.join()
    assert order == ["a in", "a out", "b in", "b out"]
    assert os.path.exists(tmp_path / registry.LOCK_DIR / "x.lock")
