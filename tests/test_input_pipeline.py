"""Training batches: one pipeline over all epochs that resumes at any step, and pairs gathered on
the device giving exactly what gathering them on the host gives."""

import jax
import numpy as np
import pytest

from siamjax import models, parallel, train_lib
from siamjax.data import Data
from siamjax.input_pipeline import INDEX_KEYS, TrainData


@pytest.fixture(scope="module")
def data(tiny_config):
    return Data(tiny_config())


def _take(batches, n):
    return [next(batches) for _ in range(n)]


def test_batches_run_through_epochs_in_the_order_drawn_and_resume_at_any_step(data, tiny_config):
    cfg = tiny_config()
    train = TrainData(data, cfg)
    assert train.on_device
    per_epoch, b = train.steps_per_epoch, cfg.batch_size
    assert per_epoch >= 2
    run = _take(train.batches(), 2 * per_epoch + 2)
    assert set(run[0]) == {"index_a", "index_b", "label"}
    for epoch in range(2):
        columns = train._columns(epoch)
        for i in range(per_epoch):
            batch = run[epoch * per_epoch + i]
            for key, index_key in (("image_a", "index_a"), ("image_b", "index_b")):
                np.testing.assert_array_equal(batch[index_key], columns[key][i * b : (i + 1) * b])
            np.testing.assert_array_equal(batch["label"], columns["label"][i * b : (i + 1) * b])
    assert not np.array_equal(train._columns(0)["image_a"], train._columns(1)["image_a"])
    for start in (1, per_epoch - 1, per_epoch, per_epoch + 1):
        resumed = _take(train.batches(start), len(run) - start)
        for x, y in zip(run[start:], resumed, strict=True):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])


def test_device_gathering_trains_exactly_as_host_gathering_on_8_devices(data, tiny_config):
    cfg = tiny_config()
    cfg.augment.noise_std = 0.05  # The step's RNG sees the same batch either way.
    host_cfg = tiny_config(device_images_max_mb=0)
    host, device = TrainData(data, host_cfg), TrainData(data, cfg)
    assert not host.on_device and device.on_device and host.device_images(None) is None
    mesh = parallel.make_mesh(jax.devices()[:8])
    images = device.device_images(mesh)
    assert images.sharding.is_fully_replicated and images.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(images), data.catalog.images)

    results = []
    for train in (host, device):
        state, sharding = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh)
        step = train_lib.compile_train_step(cfg, mesh, sharding, train.device_images(mesh))
        batches = train.batches()
        for _ in range(2):
            local = next(batches)
            if train.on_device:
                assert all(local[k].dtype == np.int32 for k in ("index_a", "index_b", "label"))
            state, m = step(state, parallel.to_global(local, mesh))
        results.append(jax.device_get((state.params, state.batch_stats, m)))
    for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_host_batches_hold_the_images_the_device_indices_point_to(data, tiny_config):
    host = next(TrainData(data, tiny_config(device_images_max_mb=0)).batches())
    device = next(TrainData(data, tiny_config()).batches())
    for key, index_key in INDEX_KEYS.items():
        if key in host:
            np.testing.assert_array_equal(host[key], data.catalog.images[device[index_key]])
    np.testing.assert_array_equal(host["label"], device["label"])
