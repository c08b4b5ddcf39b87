"""siamjax.train_state: each optimiser optimises; the learning-rate schedules have their shape."""

import jax
import pytest

from configs import synthetic
from siamjax import train_state
from siamjax.errors import UserError


@pytest.mark.parametrize("name", train_state.OPTIMIZERS)
def test_each_optimizer_moves_a_quadratic_towards_its_minimum(name):
    cfg = synthetic.get_config("tiny")
    cfg.optimizer = name
    cfg.learning_rate = 0.2
    tx = train_state.make_optimizer(cfg, num_steps=100)
    params = {"w": jax.numpy.array([3.0, -2.0])}
    state = tx.init(params)
    for _ in range(50):
        grads = jax.grad(lambda p: jax.numpy.sum(p["w"] ** 2))(params)
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    assert float(jax.numpy.sum(params["w"] ** 2)) < 0.5 * 13.0


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = synthetic.get_config("tiny")
    cfg.lr_schedule, cfg.learning_rate, cfg.warmup_steps = "cosine", 1e-2, 10
    lr = train_state.learning_rate_schedule(cfg, 100)
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(1e-2)
    assert float(lr(55)) == pytest.approx(0.5e-2, rel=1e-3)  # Half-way down the cosine.
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-9)
    cfg.lr_schedule = "linear"
    with pytest.raises(UserError, match="lr_schedule"):
        train_state.learning_rate_schedule(cfg, 100)
    cfg.lr_schedule, cfg.optimizer = "constant", "lamb"
    with pytest.raises(UserError, match="optimizer"):
        train_state.make_optimizer(cfg)
