"""On-device augmentation: each transform changes the image but keeps the ink where it was, stays in
[0, 1], jits, is deterministic per key, and is a no-op (or the old behaviour) when switched off."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs import default
from siamjax import augment as augment_lib

H, W, B = 64, 96, 8


def _key(seed: int) -> jax.Array:
    """A typed key whose random draws compile in a fraction of threefry's time on CPU: this file
    compiles many small configs, and `augment` only calls jax.random, so it is the same code for
    any key type (`test_default_keys_work` covers the train step's threefry keys)."""
    return jax.random.key(seed, impl="rbg")


def _stroke_image() -> np.ndarray:
    """[H, W] float32: a few lines ~3 pixels wide with soft edges, ink 0.85 on background 0, roughly
    centred (grey levels as in a scan, so contrast changes show)."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    dist = np.full((H, W), np.inf, np.float32)
    segments = [((20, 25), (44, 50)), ((44, 50), (22, 70)), ((30, 30), (34, 68))]
    for (y0, x0), (y1, x1) in segments:
        for t in np.linspace(0.0, 1.0, 200):
            y, x = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
            dist = np.minimum(dist, np.hypot(yy - y, xx - x))
    return 0.85 * np.clip(2.0 - dist, 0.0, 1.0)


def _batch() -> jax.Array:
    """[B, H, W, 1] float32: the same stroke image B times, so per-example draws can be compared."""
    return jnp.broadcast_to(jnp.asarray(_stroke_image())[None, :, :, None], (B, H, W, 1))


def _augment_config(**settings):
    cfg = default.get_config().augment
    for name, value in settings.items():
        setattr(cfg, name, value)
    return cfg


@functools.lru_cache
def _run(seed: int = 0, **settings) -> np.ndarray:
    """augment, jitted, on `_batch()` with only `settings` switched on. Cached: compiles are the
    slow part of this file."""
    cfg = _augment_config(**settings)
    return np.asarray(jax.jit(lambda x, k: augment_lib.augment(x, k, cfg))(_batch(), _key(seed)))


def _centroid(img: np.ndarray) -> np.ndarray:
    """Ink centroid (row, col) of a [H, W] image, ink taken as pixels above half its maximum."""
    ys, xs = np.nonzero(img > 0.5 * img.max())
    return np.array([ys.mean(), xs.mean()])


def _smooth_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two [H, W] images after a sigma-2 blur: high when ink is roughly in place,
    even if strokes moved by a few pixels; near 0 for ink somewhere else."""
    a, b = scipy.ndimage.gaussian_filter(a, 2.0), scipy.ndimage.gaussian_filter(b, 2.0)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


TRANSFORMS = {
    "affine": dict(max_rotation=8.0, max_scale=0.1, max_shear=0.2),
    "stroke": dict(stroke_prob=1.0),
    "texture": dict(texture_strength=0.3),
    "brightness": dict(brightness=0.2),
    "contrast": dict(contrast=0.3),
    "jpeg": dict(jpeg_prob=1.0, jpeg_mix=0.6),
    "shift": dict(max_shift=3),
    "blur": dict(blur_prob=1.0, blur_sigma=1.0),
    "noise": dict(noise_std=0.1),
}
# Transforms whose result does not depend on the key once picked (probability 1).
FIXED = ("jpeg", "blur")


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_each_transform_changes_the_image_but_keeps_the_ink_in_place(name):
    assert augment_lib.enabled(_augment_config(**TRANSFORMS[name]))
    x = _batch()
    y = _run(**TRANSFORMS[name])
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0
    src = np.asarray(x[0, :, :, 0])
    c0 = _centroid(src)
    for i in range(B):
        out = y[i, :, :, 0]
        assert np.abs(out - src).max() > 0, f"{name}: example {i} unchanged"
        assert np.linalg.norm(_centroid(out) - c0) < 5.0, f"{name}: example {i} ink moved"
        assert _smooth_corr(out, src) > 0.6, f"{name}: example {i} ink no longer in place"
    # A draw can be near 0 for one example, not for the batch.
    assert np.abs(y - np.asarray(x)).mean() > 5e-3, f"{name}: barely changes the images"
    # Per example: the same input gets different draws across the batch.
    assert (np.abs(y[1:] - y[:1]).max(axis=(1, 2, 3)) > 0).any() or name in FIXED


def test_stroke_width_both_thickens_and_thins():
    """With the probability at 1 every example changes; dilation adds ink, erosion removes it."""
    ink = _run(**TRANSFORMS["stroke"]).sum(axis=(1, 2, 3))
    ink0 = float(_stroke_image().sum())
    assert (ink > 1.2 * ink0).any() and (ink < 0.8 * ink0).any()
    assert ((ink > 1.2 * ink0) | (ink < 0.8 * ink0)).all()


def test_probability_picks_some_examples_only():
    """At probability 0.5 some examples keep their image exactly and some do not (stroke width;
    JPEG and blur pick examples the same way)."""
    same = (_run(seed=3, stroke_prob=0.5) == np.asarray(_batch())).all(axis=(1, 2, 3))
    assert same.any() and not same.all()


@pytest.mark.parametrize("key", ["max_rotation", "max_scale", "max_shear"])
def test_each_affine_key_draws_only_its_own_warp(key):
    """Rotation alone: orthonormal; scale alone: a multiple of I; shear alone: unit diagonal, one
    off-diagonal entry (a slant along x)."""
    kw = dict(max_rotation=0.0, max_scale=0.0, max_shear=0.0)
    kw[key] = {"max_rotation": 10.0, "max_scale": 0.2, "max_shear": 0.3}[key]
    assert augment_lib.enabled(_augment_config(**kw))
    u = np.random.default_rng(0).uniform(-1.0, 1.0, (B, 3)).astype(np.float32)
    m = np.asarray(augment_lib._affine_inverse(jnp.asarray(u), **kw))
    assert not np.allclose(m, np.eye(2), atol=1e-3)
    if key == "max_rotation":
        np.testing.assert_allclose(
            m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(2), m.shape), atol=1e-5
        )
        assert np.abs(np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))).max() <= 10.0 + 1e-3
    elif key == "max_scale":
        np.testing.assert_allclose(m[:, [0, 1], [1, 0]], 0.0, atol=1e-6)
        np.testing.assert_allclose(m[:, 0, 0], m[:, 1, 1], rtol=1e-6)
        assert (1 / m[:, 0, 0] >= 0.8 - 1e-5).all() and (1 / m[:, 0, 0] <= 1.2 + 1e-5).all()
    else:
        np.testing.assert_allclose(m[:, [0, 1], [0, 1]], 1.0, atol=1e-6)
        np.testing.assert_allclose(m[:, 1, 0], 0.0, atol=1e-6)
        assert np.abs(m[:, 0, 1]).max() <= 0.3 + 1e-6


def test_affine_identity_is_exact_and_fills_with_background():
    img = jnp.asarray(_stroke_image())[:, :, None]
    warp = jax.jit(augment_lib.affine)
    np.testing.assert_allclose(warp(img, jnp.eye(2)), img, atol=1e-6)
    # Rotating an all-ink image about the centre: the centre stays ink, the corners read from
    # outside the image and become background.
    t = np.deg2rad(20.0)
    rot = jnp.asarray([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]], jnp.float32)
    out = np.asarray(warp(jnp.ones((H, W, 1)), rot))[:, :, 0]
    assert out[H // 2, W // 2] == pytest.approx(1.0)
    assert out[0, 0] == out[0, -1] == out[-1, 0] == out[-1, -1] == 0.0


def test_block_average_keeps_means_of_partial_tiles():
    x = np.random.default_rng(0).uniform(size=(2, 13, 19, 1)).astype(np.float32)
    y = np.asarray(jax.jit(augment_lib.block_average, static_argnums=1)(x, 8))
    np.testing.assert_allclose(
        y[:, :8, :8].mean(axis=(1, 2)), x[:, :8, :8].mean(axis=(1, 2)), rtol=1e-5
    )
    np.testing.assert_allclose(
        y[:, 8:, 16:],
        np.broadcast_to(
            np.asarray(x)[:, 8:, 16:].mean(axis=(1, 2), keepdims=True), y[:, 8:, 16:].shape
        ),
        rtol=1e-5,
    )


def test_all_zero_settings_leave_images_unchanged():
    cfg = default.get_config().augment
    assert not augment_lib.enabled(cfg)
    x = np.random.default_rng(1).uniform(-0.2, 1.2, (B, H, W, 1)).astype(np.float32)
    y = augment_lib.augment(jnp.asarray(x), _key(0), cfg)
    np.testing.assert_array_equal(y, jnp.clip(x, 0.0, 1.0))


def _old_shift(image, dy, dx):
    """The first shift: per-pixel row and column gathers of one [H, W, 1] image."""
    h, w = image.shape[:2]
    rows, cols = jnp.arange(h) - dy, jnp.arange(w) - dx
    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    out = image[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
    return jnp.where(valid[..., None], out, 0.0)


def _old_blur(images, sigma):
    """The first blur: two 1-channel 'SAME' convolutions with the Gaussian taps."""
    k = jnp.asarray(augment_lib._gaussian_kernel(sigma))
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(
        images, k.reshape(-1, 1, 1, 1), (1, 1), "SAME", dimension_numbers=dn
    )
    return jax.lax.conv_general_dilated(
        x, k.reshape(1, -1, 1, 1), (1, 1), "SAME", dimension_numbers=dn
    )


def _old_augment(images, rng, cfg):
    """The shift/blur/noise augment as it was before the other transforms were added (and before
    shift and blur were rewritten for speed)."""
    b = images.shape[0]
    k_shift, k_blur, k_noise = jax.random.split(rng, 3)
    d = jax.random.randint(k_shift, (b, 2), -cfg.max_shift, cfg.max_shift + 1)
    images = jax.vmap(_old_shift)(images, d[:, 0], d[:, 1])
    blurred = _old_blur(images, cfg.blur_sigma)
    pick = jax.random.bernoulli(k_blur, cfg.blur_prob, (b, 1, 1, 1))
    images = jnp.where(pick, blurred, images)
    images = images + cfg.noise_std * jax.random.normal(k_noise, images.shape, images.dtype)
    return jnp.clip(images, 0.0, 1.0)


def test_old_settings_give_the_same_images_as_before():
    """New keys at 0: shift, blur and noise draw the same numbers as before they existed."""
    cfg = _augment_config(max_shift=3, blur_prob=0.5, noise_std=0.05)
    old = jax.jit(lambda x, k: _old_augment(x, k, cfg))(_batch(), _key(7))
    new = _run(seed=7, max_shift=3, blur_prob=0.5, noise_std=0.05)
    # Same draws; the blur's sum of shifted copies rounds differently from a convolution.
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)


def test_jits_and_is_deterministic_per_key():
    cfg = _augment_config(**{k: v for s in TRANSFORMS.values() for k, v in s.items()})
    cfg.stroke_prob = cfg.jpeg_prob = 0.5
    fn = jax.jit(lambda x, k: augment_lib.augment(x, k, cfg))
    a = np.asarray(fn(_batch(), _key(5)))
    b = np.asarray(fn(_batch(), _key(5)))
    c = np.asarray(fn(_batch(), _key(6)))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_default_keys_work():
    """The train step passes threefry keys (`jax.random.key`'s default), not `_key`'s."""
    cfg = _augment_config(max_scale=0.1, noise_std=0.05)
    fn = jax.jit(lambda x, k: augment_lib.augment(x, k, cfg))
    y = np.asarray(fn(_batch(), jax.random.key(0)))
    assert y.shape == (B, H, W, 1) and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0 and np.abs(y - np.asarray(_batch())).max() > 0
    np.testing.assert_array_equal(y, np.asarray(fn(_batch(), jax.random.key(0))))


def test_unclipped_noise_keeps_the_background_mean():
    """clip_noise=False: the same noise draws, added after the clip, so the background (0) keeps
    a mean of 0 where clipping lifts it to about 0.4 std (E[max(0, n)] = std / sqrt(2 pi))."""
    std = 0.1
    clipped = _run(seed=3, noise_std=std)
    zero_mean = _run(seed=3, noise_std=std, clip_noise=False)
    background = np.broadcast_to(_stroke_image()[None, :, :, None] == 0, clipped.shape)
    n = int(background.sum())
    # Means of n draws: 6 standard errors of the noise's spread is far below the 0.04 lift.
    assert abs(zero_mean[background].mean()) < 6 * std / np.sqrt(n)
    assert abs(clipped[background].mean() - std / np.sqrt(2 * np.pi)) < 6 * std / np.sqrt(n)
    # Where clipping did not bite, the two are the same image.
    inside = (clipped > 0) & (clipped < 1)
    np.testing.assert_allclose(clipped[inside], zero_mean[inside], rtol=0, atol=1e-6)
