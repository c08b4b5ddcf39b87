"""On-device augmentation of training images. Jit-able, per example, inside the jitted train step.

Real scans differ from training scans in the writer's hand (slant, size, pen width), in framing and
in the scanner (focus, noise, paper, exposure, compression); these transforms make the model hold
up. Works on float images in [0, 1], [batch, H, W, 1], ink high and background 0 (as preprocess
leaves them, after the model's uint8 input has been scaled), so augmentation costs no host time.

Not for evaluation or verification (nothing here is applied outside training) and not for
decoding or normalising scans (that is preprocess). Each transform has its own key in
`config.augment`; a setting of 0 removes it from the compiled step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Cell of the paper-texture field, in pixels: coarse enough to read as fibres and shading rather
# than as noise, which `noise_std` already covers.
_TEXTURE_CELL = 16
# Block size of the JPEG-like degradation: JPEG codes 8x8 blocks.
_JPEG_BLOCK = 8
# Columns of the per-example uniform table that `augment` draws for the newer transforms.
_DRAWS = ("stroke", "thicker", "stroke_amount", "rotation", "scale", "shear", "texture",
          "contrast", "brightness", "jpeg")  # fmt: skip
_COL = {name: i for i, name in enumerate(_DRAWS)}


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_axis(images: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    """Zero-padded 1-D correlation with `taps` along `axis`, as a sum of shifted copies: XLA fuses
    it into one loop, where a 1-channel convolution is slow on a CPU (bench/README.md, "CPU
    levers")."""
    r = len(taps) // 2
    pad = [(0, 0)] * images.ndim
    pad[axis] = (r, r)
    padded = jnp.pad(images, pad)
    n = images.shape[axis]
    out = jnp.zeros_like(images)
    for t, weight in enumerate(taps):
        out = out + jnp.asarray(weight, images.dtype) * jax.lax.slice_in_dim(
            padded, t, t + n, axis=axis
        )
    return out


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur, 'SAME' size, zero outside. [B, H, W, 1] float -> same."""
    k = _gaussian_kernel(sigma)
    return _blur_axis(_blur_axis(images, k, 1), k, 2)


def _shift(images: jax.Array, d: jax.Array, max_shift: int) -> jax.Array:
    """Translate each [H, W, 1] image of [B, H, W, 1] by d[b] = (dy, dx) pixels (|d| <= max_shift),
    filling with background (0): a window of the zero-padded image, which XLA copies as a block
    (per-pixel gathers of row and column indices cost far more on a CPU)."""
    h, w = images.shape[1:3]
    m = max_shift
    padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    start = (m - d).astype(jnp.int32)
    return jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0), (h, w, 1)))(
        padded, start
    )


def affine(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """Warp one [H, W, 1] image by the 2x2 `matrix` about the image centre, bilinear, fill 0.

    `matrix` maps output (x, y) offsets from the centre to input offsets (the inverse warp), x to
    the right and y down, so each output pixel reads exactly one interpolated input value and no
    holes appear. Pixels that read from outside the image get background (0).
    """
    h, w = image.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij"
    )
    src_x = matrix[0, 0] * x + matrix[0, 1] * y + cx
    src_y = matrix[1, 0] * x + matrix[1, 1] * y + cy
    out = jax.scipy.ndimage.map_coordinates(
        image[..., 0], [src_y, src_x], order=1, mode="constant", cval=0.0
    )
    return out[..., None].astype(image.dtype)


def _affine_inverse(
    u: jax.Array, max_rotation: float, max_scale: float, max_shear: float
) -> jax.Array:
    """[B, 2, 2] inverse warps of rotation (degrees), isotropic scale and horizontal shear, from
    `u` [B, 3] uniform in [-1, 1] (one column per parameter, as a fraction of its maximum).

    The forward warp is rotate . shear . scale: shear is the writer's slant, scale the signature's
    size, rotation the sheet's tilt. Returns its inverse because `affine` maps output to input.
    """
    theta = u[:, 0] * (max_rotation * math.pi / 180)
    scale = 1.0 + u[:, 1] * max_scale
    shear = u[:, 2] * max_shear
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # Forward A = R(theta) @ [[1, shear], [0, 1]] @ (scale * I), in (x, y) with y down.
    a00 = scale * cos
    a01 = scale * (cos * shear - sin)
    a10 = scale * sin
    a11 = scale * (sin * shear + cos)
    det = a00 * a11 - a01 * a10  # = scale**2 > 0.
    inv = jnp.stack([jnp.stack([a11, -a01], -1), jnp.stack([-a10, a00], -1)], -2)
    return inv / det[:, None, None]


def _morphology(images: jax.Array, op: str) -> jax.Array:
    """Grey 3x3 dilation ('max', thicker strokes) or erosion ('min', thinner). [B, H, W, 1]."""
    if op == "max":
        init, fn = -jnp.inf, jax.lax.max
    else:
        init, fn = jnp.inf, jax.lax.min
    return jax.lax.reduce_window(
        images, jnp.asarray(init, images.dtype), fn, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"
    )


def _linear_upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] float32 weights of linear interpolation from n_in nodes spread evenly over
    n_out pixels (first and last node on the first and last pixel). Built at trace time."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    return np.stack([np.interp(pos, np.arange(n_in), np.eye(n_in)[j]) for j in range(n_in)], 1)


def _paper_texture(rng: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Smooth random field in [0, 1], [B, H, W, 1]: uniform values on a coarse grid, bilinearly
    upsampled, so it varies over tens of pixels like paper shading rather than per pixel."""
    b, h, w, _ = shape
    gh, gw = math.ceil(h / _TEXTURE_CELL) + 1, math.ceil(w / _TEXTURE_CELL) + 1
    coarse = jax.random.uniform(rng, (b, gh, gw), dtype)
    ry = jnp.asarray(_linear_upsample_matrix(h, gh), dtype)
    rx = jnp.asarray(_linear_upsample_matrix(w, gw), dtype)
    return jnp.einsum("hi,bij,wj->bhw", ry, coarse, rx)[..., None]


def block_average(images: jax.Array, block: int = _JPEG_BLOCK) -> jax.Array:
    """Mean of each block x block tile, spread over the tile. [B, H, W, 1] -> same.

    What JPEG keeps when it drops a block's high frequencies; H and W need not be multiples of
    `block` (partial tiles at the edges average only their own pixels).
    """
    b, h, w, c = images.shape
    ph, pw = -h % block, -w % block
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    x = jnp.pad(images, pad)
    n = jnp.pad(jnp.ones((1, h, w, 1), images.dtype), pad)
    hb, wb = (h + ph) // block, (w + pw) // block
    sums = x.reshape(b, hb, block, wb, block, c).sum(axis=(2, 4))
    counts = n.reshape(1, hb, block, wb, block, 1).sum(axis=(2, 4))
    means = sums / counts
    full = jnp.repeat(jnp.repeat(means, block, axis=1), block, axis=2)
    return full[:, :h, :w, :]


def enabled(cfg: ml_collections.ConfigDict) -> bool:
    """Whether any transform is on, so the train step can skip the float round trip when none is."""
    return bool(cfg.noise_std > 0 or cfg.blur_prob > 0 or cfg.max_shift > 0 or _table_needed(cfg))


def _affine_on(cfg: ml_collections.ConfigDict) -> bool:
    return cfg.max_rotation > 0 or cfg.max_scale > 0 or cfg.max_shear > 0


def _table_needed(cfg: ml_collections.ConfigDict) -> bool:
    """Whether a transform that draws from the per-example table is on."""
    return bool(
        cfg.stroke_prob > 0
        or _affine_on(cfg)
        or cfg.texture_strength > 0
        or cfg.brightness > 0
        or cfg.contrast > 0
        or (cfg.jpeg_prob > 0 and cfg.jpeg_mix > 0)
    )


def augment(images: jax.Array, rng: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Random writer, framing and scanner variation per example. [B, H, W, 1] float in [0, 1] ->
    same shape and dtype, clipped to [0, 1] (unless `cfg.clip_noise` is False: then the noise is
    added after the clip and keeps its zero mean).

    Order follows how a scan comes about: the hand (stroke width, affine), the framing (shift),
    the paper and the scanner (texture, blur, brightness/contrast, JPEG, noise). `cfg` is
    `config.augment`; a setting of 0 removes that transform from the compiled step. The shift,
    blur and noise draws come from the same keys as before the other transforms existed, so a
    config using only those gives the same images as it did.
    """
    b = images.shape[0]
    dtype = images.dtype
    k_shift, k_blur, k_noise = jax.random.split(rng, 3)
    # The newer transforms draw from a key folded off `rng`, leaving the three above untouched, and
    # take all their per-example numbers from one [B, len(_DRAWS)] uniform table (one column each):
    # every random call is a separate hash to compile, so fewer calls compile faster.
    if _table_needed(cfg):
        k_table, k_field = jax.random.split(jax.random.fold_in(rng, 1))
        u = jax.random.uniform(k_table, (b, len(_DRAWS)), dtype)
    col = lambda name: u[:, _COL[name]].reshape(b, 1, 1, 1)  # In [0, 1).
    sym = lambda name: 2.0 * col(name) - 1.0  # In [-1, 1).

    if cfg.stroke_prob > 0:
        # A full 3x3 step turns a 3-pixel stroke into a 1- or 5-pixel one; blending it with the
        # image by [0.5, 1] gives a range of widths that is always visible but never more.
        morphed = jnp.where(
            col("thicker") < 0.5, _morphology(images, "max"), _morphology(images, "min")
        )
        changed = images + (0.5 + 0.5 * col("stroke_amount")) * (morphed - images)
        images = jnp.where(col("stroke") < cfg.stroke_prob, changed, images)
    if _affine_on(cfg):
        warp = _affine_inverse(
            2.0 * u[:, _COL["rotation"] : _COL["shear"] + 1] - 1.0,
            cfg.max_rotation,
            cfg.max_scale,
            cfg.max_shear,
        )
        images = jax.vmap(affine)(images, warp)
    if cfg.max_shift > 0:
        d = jax.random.randint(k_shift, (b, 2), -cfg.max_shift, cfg.max_shift + 1)
        images = _shift(images, d, cfg.max_shift)
    if cfg.texture_strength > 0:
        field = _paper_texture(k_field, images.shape, dtype)
        # Screen blend: lifts the background (0) towards the field, leaves saturated ink alone.
        images = images + (1.0 - images) * (cfg.texture_strength * col("texture")) * field
    if cfg.blur_prob > 0:
        blurred = gaussian_blur(images, cfg.blur_sigma)
        pick = jax.random.bernoulli(k_blur, cfg.blur_prob, (b, 1, 1, 1))
        images = jnp.where(pick, blurred, images)
    if cfg.contrast > 0:
        mean = images.mean(axis=(1, 2, 3), keepdims=True)
        images = mean + (images - mean) * (1.0 + cfg.contrast * sym("contrast"))
    if cfg.brightness > 0:
        images = images + cfg.brightness * sym("brightness")
    if cfg.jpeg_prob > 0 and cfg.jpeg_mix > 0:
        blocky = images + cfg.jpeg_mix * (block_average(images) - images)
        images = jnp.where(col("jpeg") < cfg.jpeg_prob, blocky, images)
    # Zero-mean noise is added after the clip: clipping it would lift the background
    # (E[max(0, n)] = 0.4 std) and dim saturated ink, so that BatchNorm statistics learnt on
    # noisy pairs miss clean input.
    zero_mean = cfg.noise_std > 0 and not cfg.get("clip_noise", True)
    if zero_mean:
        images = jnp.clip(images, 0.0, 1.0)
    if cfg.noise_std > 0:
        images = images + cfg.noise_std * jax.random.normal(k_noise, images.shape, images.dtype)
    return (images if zero_mean else jnp.clip(images, 0.0, 1.0)).astype(dtype)
