"""Scale out: 2 processes x 4 CPU devices over jax.distributed train exactly as 1 process x 8.

The two processes are real (separate interpreters, a coordinator on a loopback port, gradients
all-reduced across processes by gloo), each feeding its half of every batch, writing one shared
orbax checkpoint and validating together; see tests/distributed_worker.py.
"""

import os
import sys

import jax
import numpy as np
import pytest

from siamjax import parallel
from siamjax.errors import UserError

STEPS = 4
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


@pytest.mark.slow  # ~2.5 min on 2 busy CPU cores: three trainings, two of them fresh processes.
def test_two_processes_of_four_devices_train_as_one_process_of_eight(tmp_path):
    assert jax.device_count() >= 8, "conftest.py should simulate 8 CPU devices"
    from tests import distributed_worker

    tfds_dir = str(tmp_path / "tfds")
    # The reference, in this process: 1 x 8 devices. It also prepares the dataset for the others.
    want = distributed_worker.run(str(tmp_path / "one"), tfds_dir, STEPS)

    out = str(tmp_path / "out{pid}.npz")  # The worker fills in its process index.
    parallel.run_cpu_processes(
        [sys.executable, WORKER, str(tmp_path / "two"), tfds_dir, str(STEPS), out], 2, 4
    )
    for pid in range(2):
        got = np.load(tmp_path / f"out{pid}.npz")
        assert sorted(got.files) == sorted(want), pid
        assert len(want["loss"]) == STEPS and np.ptp(want["loss"]) > 0
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} @{pid}")
    # One checkpoint, written by both processes together.
    assert os.listdir(tmp_path / "two" / "checkpoints") == [str(STEPS)]


@pytest.mark.slow  # ~1.5 min on 2 busy CPU cores: a training here, then two fresh processes.
def test_two_processes_fall_back_together_from_a_damaged_newest_checkpoint(tmp_path):
    """Both processes of a resumed run skip the damaged step 4, restore step 2, continue exactly
    as the run that wrote it did, and the damaged step is set aside once."""
    from tests import distributed_worker
    from tests.test_checkpointing import _truncate

    tfds_dir, wd = str(tmp_path / "tfds"), str(tmp_path / "run")
    first = distributed_worker.run(wd, tfds_dir, 4, checkpoint_every=2)  # Steps 2 and 4.
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
    _truncate(os.path.join(wd, "checkpoints", "4"))

    out = str(tmp_path / "out{pid}.npz")
    logs = parallel.run_cpu_processes([sys.executable, WORKER, wd, tfds_dir, "6", out, "2"], 2, 4)
    assert any("step 4" in log and "restored step 2" in log for log in logs), logs[0][-3000:]
    results = [np.load(tmp_path / f"out{pid}.npz") for pid in range(2)]
    for got in results:
        assert list(got["steps"]) == [3, 4, 5, 6]  # Resumed from step 2.
        # Steps 3 and 4 again, from step 2's state: the losses the first run logged for them.
        np.testing.assert_allclose(got["loss"][:2], first["loss"][2:4], rtol=1e-5, atol=1e-6)
    for k in results[0].files:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)
    assert os.listdir(os.path.join(wd, "damaged_checkpoints")) == ["4.0"]
    assert {"4", "6"} <= set(os.listdir(os.path.join(wd, "checkpoints")))


@pytest.mark.parametrize(
    "env, match",
    [
        (
            {parallel.NUM_PROCESSES_ENV: "2"},
            "SIAMJAX_COORDINATOR_ADDRESS, SIAMJAX_PROCESS_ID unset",
        ),
        (
            {
                parallel.COORDINATOR_ENV: "h:1",
                parallel.NUM_PROCESSES_ENV: "2",
                parallel.PROCESS_ID_ENV: "2",
            },
            "must be in 0..",
        ),
        (
            {
                parallel.COORDINATOR_ENV: "h",
                parallel.NUM_PROCESSES_ENV: "2",
                parallel.PROCESS_ID_ENV: "0",
            },
            "must be host:port",
        ),
    ],
)
def test_an_incomplete_launch_is_a_user_error(monkeypatch, env, match):
    for k in (parallel.COORDINATOR_ENV, parallel.NUM_PROCESSES_ENV, parallel.PROCESS_ID_ENV):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=match):
        parallel.maybe_initialize_distributed()
