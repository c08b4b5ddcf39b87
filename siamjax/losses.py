"""Losses for verification: BCE on logits (the design), plus contrastive and triplet alternatives.

All return a per-example loss [batch] float32 so that the caller can mask and average. The metric
learning losses ('contrastive', 'triplet') train the encoder on Euclidean distances; the head then
scores a pair by that distance (`config.model.combine='distance'`), so that evaluation and
verification work the same whatever the loss. Not for training loops or metrics (train_lib,
metrics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from siamjax.errors import UserError

# Values of `config.loss`.
LOSSES = ("bce", "contrastive", "triplet")


def check_loss(loss: str, combine: str, members: int = 1) -> None:
    """Raises unless `config.loss` is known and the head can score what it trains.

    Contrastive and triplet losses train distances, not logits: their score must be a function of
    the distance (combine 'distance'), or the head would score something no loss has trained.
    An ensemble (`members` > 1) trains each member's pair logit, so 'bce' only.
    """
    if loss not in LOSSES:
        raise UserError(f"config.loss={loss!r}; use one of {LOSSES}.")
    if members > 1 and loss != "bce":
        raise UserError(
            f"config.model.members={members} (an ensemble) trains with config.loss='bce', "
            f"not {loss!r}."
        )
    if loss != "bce" and combine != "distance":
        raise UserError(
            f"config.loss={loss!r} needs config.model.combine='distance' (the head "
            f"that scores by embedding distance), not {combine!r}."
        )


def euclidean_distance(e1: jax.Array, e2: jax.Array) -> jax.Array:
    """[batch, D] twice -> [batch] float32; 1e-12 under the root keeps its gradient finite at 0."""
    diff = e1.astype(jnp.float32) - e2.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + 1e-12)


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Binary cross-entropy, labels 1 = genuine pair; numerically stable on logits. -> [batch]."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def contrastive(e1: jax.Array, e2: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
    """Hadsell et al. 2006: pull genuine pairs together, push others beyond `margin`. -> [batch].

    loss = y d^2 + (1 - y) max(0, margin - d)^2 with d the Euclidean distance of the embeddings.
    """
    d = euclidean_distance(e1, e2)
    y = labels.astype(d.dtype)
    return y * jnp.square(d) + (1.0 - y) * jnp.square(jnp.maximum(margin - d, 0.0))


def triplet(
    anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float = 1.0
) -> jax.Array:
    """Schroff et al. 2015: d(a, p)^2 - d(a, n)^2 + margin, hinged at 0. -> [batch]."""
    d_pos = jnp.sum(jnp.square(anchor - positive), axis=-1)
    d_neg = jnp.sum(jnp.square(anchor - negative), axis=-1)
    return jnp.maximum(d_pos - d_neg + margin, 0.0)


def writer_cross_entropy(logits: jax.Array, classes: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of writer `logits` [N, C] over the images whose class [N] int32
    is >= 0 (the training writers' genuine images; -1 marks the others). 0 when there are none."""
    valid = classes >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(valid, classes, 0)
    )
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
