"""The train state: what a checkpoint holds, and the optimiser whose state is part of it.

The trainer's (`siamjax.train_lib`): it creates, updates, saves and resumes it. Inference never
builds one: it restores the parameters and BatchNorm statistics alone (`siamjax.workdir`), into
the shapes of `siamjax.models.init_variables`, which this state is made from too. Not for: the
train step or the loop.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from flax.training import train_state

from siamjax import models
from siamjax.errors import UserError


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics and the RNG key (raw uint32 key data)."""

    batch_stats: Any = None
    rng: jax.Array | None = None


OPTIMIZERS = ("adagrad", "adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Constant (the design) or linear warm-up then cosine decay to 0 over `num_steps`."""
    if config.lr_schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            config.learning_rate,
            max(int(config.warmup_steps), 1),
            max(num_steps, int(config.warmup_steps) + 1),
        )
    raise UserError(f"config.lr_schedule={config.lr_schedule!r}; use one of {LR_SCHEDULES}.")


def make_optimizer(
    config: ml_collections.ConfigDict, num_steps: int = 1
) -> optax.GradientTransformation:
    """The optimiser `config.optimizer` names; Adagrad starts its accumulator as PyTorch does."""
    lr = learning_rate_schedule(config, num_steps)
    if config.optimizer == "adagrad":
        opt = optax.adagrad(
            lr, initial_accumulator_value=config.adagrad_initial_accumulator, eps=config.adagrad_eps
        )
    elif config.optimizer == "adam":
        opt = optax.adam(lr)
    elif config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=0.9, nesterov=True)
    else:
        raise UserError(f"config.optimizer={config.optimizer!r}; use one of {OPTIMIZERS}.")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array, num_steps: int = 1
) -> TrainState:
    """Fresh state for `model` on images of config.image_height x config.image_width; `num_steps`
    is the length of the learning-rate schedule (the state's structure does not depend on it)."""
    init_rng, seed_rng = jax.random.split(rng)
    # The training RNG is threefry whatever `rng` is: its bits do not depend on sharding.
    state_rng = jax.random.key(jax.random.randint(seed_rng, (), 0, 2**31 - 1))
    variables = models.init_variables(model, init_rng, models.input_shape(config))
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=make_optimizer(config, num_steps),
        rng=jax.random.key_data(state_rng),
    )
