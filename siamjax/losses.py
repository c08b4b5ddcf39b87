"""Losses for verification: BCE on logits (the design), plus contrastive and triplet alternatives.

All return a per-example loss [batch] float32 so that the caller can mask and average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Binary cross-entropy, labels 1 = genuine pair; numerically stable on logits. -> [batch]."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def contrastive(e1: jax.Array, e2: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
    """Hadsell et al. 2006: pull genuine pairs together, push others beyond `margin`. -> [batch].

    loss = y d^2 + (1 - y) max(0, margin - d)^2 with d the Euclidean distance of the embeddings.
    """
    d = jnp.sqrt(jnp.sum(jnp.square(e1 - e2), axis=-1) + 1e-12)
    y = labels.astype(d.dtype)
    return y * jnp.square(d) + (1.0 - y) * jnp.square(jnp.maximum(margin - d, 0.0))


def triplet(anchor: jax.Array, positive: jax.Array, negative: jax.Array,
            margin: float = 1.0) -> jax.Array:
    """Schroff et al. 2015: d(a, p)^2 - d(a, n)^2 + margin, hinged at 0. -> [batch]."""
    d_pos = jnp.sum(jnp.square(anchor - positive), axis=-1)
    d_neg = jnp.sum(jnp.square(anchor - negative), axis=-1)
    return jnp.maximum(d_pos - d_neg + margin, 0.0)
