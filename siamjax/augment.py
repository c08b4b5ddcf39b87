"""On-device augmentation of training images: noise, blur, translation. Jit-able, per example.

Real scans differ from training scans in noise, focus and framing; these make the model hold up.
Works on float images in [0, 1], [batch, H, W, 1], after the model's uint8 input has been scaled, so
augmentation happens inside the jitted train step and costs no host time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def _gaussian_kernel(sigma: float) -> jax.Array:
    radius = max(1, int(round(3 * sigma)))
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur, 'SAME' size. [B, H, W, 1] float -> same."""
    k = _gaussian_kernel(sigma)
    kh = k.reshape(-1, 1, 1, 1)
    kw = k.reshape(1, -1, 1, 1)
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(images, kh, (1, 1), "SAME", dimension_numbers=dn)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "SAME", dimension_numbers=dn)


def _shift(image: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """Translate one [H, W, 1] image by (dy, dx) pixels, filling with background (0)."""
    h, w = image.shape[:2]
    rows = jnp.arange(h) - dy
    cols = jnp.arange(w) - dx
    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    out = image[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
    return jnp.where(valid[..., None], out, 0.0)


def augment(images: jax.Array, rng: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Random shift, blur and noise per example. [B, H, W, 1] float in [0, 1] -> same, clipped.

    `cfg` is `config.augment`; a setting of 0 removes that transform from the compiled step.
    """
    b = images.shape[0]
    k_shift, k_blur, k_noise = jax.random.split(rng, 3)
    if cfg.max_shift > 0:
        d = jax.random.randint(k_shift, (b, 2), -cfg.max_shift, cfg.max_shift + 1)
        images = jax.vmap(_shift)(images, d[:, 0], d[:, 1])
    if cfg.blur_prob > 0:
        blurred = gaussian_blur(images, cfg.blur_sigma)
        pick = jax.random.bernoulli(k_blur, cfg.blur_prob, (b, 1, 1, 1))
        images = jnp.where(pick, blurred, images)
    if cfg.noise_std > 0:
        images = images + cfg.noise_std * jax.random.normal(k_noise, images.shape, images.dtype)
    return jnp.clip(images, 0.0, 1.0)
