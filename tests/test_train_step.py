"""The jitted train step: it learns, it is the same on 1 and 8 devices, it compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import parallel, train_lib
from siamjax.models import create_model


def _batch(n, h=32, w=48, seed=0):
    """n fixed pairs of random images with random labels: only memorisation can fit them."""
    rng = np.random.default_rng(seed)
    return {
        "image_a": rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8),
        "image_b": rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8),
        "label": np.tile(np.array([0, 1], np.int32), n // 2),
    }


def _setup(cfg, devices):
    mesh = parallel.make_mesh(devices)
    model = create_model(cfg.model)
    state, sharding = train_lib.init_state_on_mesh(cfg, model, mesh)
    return mesh, state, train_lib.compile_train_step(cfg, mesh, sharding)


def test_the_model_overfits_16_fixed_pairs(tiny_config):
    """A model that cannot memorise 16 pairs is broken (init, optimiser or loss)."""
    # Fixed pairs: augmentation would make memorising impossible.
    cfg = tiny_config(learning_rate=1e-2, augment={"max_shift": 0})
    mesh, state, step = _setup(cfg, jax.devices()[:1])
    batch = parallel.to_global(_batch(16), mesh)
    first = None
    for _ in range(300):
        state, m = step(state, batch)
        loss = float(m["train"].compute()["loss"])
        first = loss if first is None else first
        if loss < 0.05:
            break
    assert first > 0.3
    assert loss < 0.05, f"loss {loss:.3f} after {int(state.step)} steps"


def _losses_at_design_lr(cfg, steps=60):
    mesh, state, step = _setup(cfg, jax.devices()[:1])
    batch = parallel.to_global(_batch(16), mesh)
    losses = []
    for _ in range(steps):
        state, m = step(state, batch)
        losses.append(float(m["train"].compute()["loss"]))
    return np.mean(losses[:5]), np.mean(losses[-5:])


def test_the_step_learns_with_the_design_learning_rate(tiny_config):
    """Adagrad at 1e-3 (the design) must move the loss clearly, and far more than with optax's
    default initial accumulator of 0.1, which damps the first updates (the probe's slow start)."""
    design = {"learning_rate": 1e-3, "augment": {"max_shift": 0}, "model": {"combine": "diff"}}
    first, last = _losses_at_design_lr(tiny_config(**design, adagrad_initial_accumulator=0.0))
    assert last < 0.7 * first
    damped = tiny_config(**design, adagrad_initial_accumulator=0.1)
    damped_first, damped_last = _losses_at_design_lr(damped)
    assert (first - last) > 2 * (damped_first - damped_last)


def test_eight_devices_compute_what_one_device_computes(tiny_config):
    assert jax.device_count() >= 8, "conftest.py should simulate 8 CPU devices"
    cfg = tiny_config(augment={"noise_std": 0.05})  # The RNG path must agree too.
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        mesh, state, step = _setup(cfg, devices)
        for i in range(3):
            state, m = step(state, parallel.to_global(_batch(16, seed=i), mesh))
        assert state.params["head"]["logit"]["kernel"].sharding.mesh.devices.size == len(devices)
        results.append(jax.device_get((state.params, state.batch_stats, state.opt_state, m)))
    for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_the_step_compiles_once(tiny_config):
    cfg = tiny_config()
    mesh, state, step = _setup(cfg, jax.devices())
    for i in range(6):
        state, _ = step(state, parallel.to_global(_batch(8, seed=i), mesh))
    assert step._cache_size() == 1


def test_batch_size_must_divide_over_devices():
    from siamjax.errors import UserError

    with pytest.raises(UserError, match="multiple of the 8 devices"):
        parallel.check_batch_size(12, parallel.make_mesh(jax.devices()[:8]))


def test_merge_steps_is_the_mean_over_the_steps_unskipped_pairs():
    """The loop's log: each step's metrics merged on the host; a skipped (masked) step counts in
    neither mean."""
    steps = [
        train_lib.TrainMetrics.single_from_model_output(
            loss=jnp.full((4,), loss, jnp.float32),
            correct=jnp.asarray(correct, jnp.float32),
            mask=jnp.full((4,), finite),
        )
        for loss, correct, finite in [
            (1.0, [1, 1, 0, 0], True),
            (jnp.nan, [0, 0, 0, 0], False),
            (0.5, [1, 1, 1, 0], True),
        ]
    ]
    means = train_lib.merge_steps(steps).compute()
    assert float(means["loss"]) == pytest.approx(0.75)
    assert float(means["accuracy"]) == pytest.approx(5 / 8)
